"""The recipe beyond the law (issue 10): LR protocol, card LR/batch/data, epoch-aware planning, recipe check.

All runs here are SYNTHETIC (embrecipe.sweep.synthetic): they test the machinery against a known right answer.
"""

import dataclasses
import json
import math

import pytest

from embrecipe.cli import main
from embrecipe.errors import InputError
from embrecipe.laws import LawSet, fit_laws
from embrecipe.pipeline.check import recipe_check
from embrecipe.planning.planner import load_laws, plan
from embrecipe.recipe import effective_tokens, epochs, select_lrs
from embrecipe.runs.store import RunStore
from embrecipe.sweep.cells import expand
from embrecipe.sweep.grid import grid_from_dict
from embrecipe.sweep.orchestration import run_sweep
from embrecipe.sweep.synthetic import optimal_lr, synthetic_train

MODELS = ["toy-h64-l2", "toy-h128-l4", "toy-h256-l6"]
GRID = {
    "name": "lr", "models": MODELS, "methods": {"full": {}, "lora": {"rank": 8}},
    "budgets": [1e12, 4e12, 1.6e13, 6.4e13], "train": {"batch_size": 32, "seed": 0, "lr": 1e-3},
    "trainer": "synthetic", "lr_search": {"lrs": [1e-4, 1e-3, 1e-2]},
}


# ------------------------------------------------------------------------------------------ pure functions
def test_effective_tokens_muennighoff():
    assert effective_tokens(5e5, 1e6) == 5e5  # within one epoch: nothing discounted
    assert effective_tokens(1e6, 1e6) == 1e6
    assert effective_tokens(3e6, None) == 3e6  # unknown data size: no discount
    # D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1, R* = 15.4: 4 epochs -> 3 repetitions
    assert effective_tokens(4e6, 1e6) == pytest.approx(1e6 + 1e6 * 15.4 * (1 - math.exp(-3 / 15.4)))
    assert effective_tokens(1e12, 1e6) == pytest.approx(1e6 * 16.4, rel=1e-6)  # saturates at U (1 + R*)
    assert effective_tokens(2e6, 1e6, r_star=1.0) == pytest.approx(1e6 * (2 - math.exp(-1)))
    assert epochs(3e6, 1e6) == 3 and epochs(1, None) is None


def test_select_lrs_averages_seeds_over_searched_budgets_and_drops_failed_lrs():
    runs = [("m", "full", 1e12, 1e-3, 1.0), ("m", "full", 1e12, 1e-3, 0.8),  # mean log ~ log(0.894)
            ("m", "full", 1e12, 3e-3, 0.85), ("m", "full", 1e12, 1e-2, 0.5),
            ("m", "full", 1e12, 1e-2, None),  # a diverged seed: 1e-2 is out
            ("m", "full", 4e12, 3e-3, 0.1)]  # an upper rung (one LR): not part of the score
    assert select_lrs(runs) == {("m", "full"): 3e-3}
    assert select_lrs([("m", "v", 1.0, 1e-3, 1.0), ("m", "v", 1.0, 1e-4, 1.0)]) == {("m", "v"): 1e-4}  # tie
    assert select_lrs([("m", "v", 1.0, 2e-3, 1.0)]) == {("m", "v"): 2e-3}


# ------------------------------------------------------------------------------------------ LR protocol
def test_lr_grid_syntax_errors():
    for bad, msg in (({"lrs": [1e-3, 1e-2]}, "at least 3"), ({"factors": [1, 1, 2]}, "at least 3"),
                     ({"lrs": [1e-3, -1, 1]}, "positive"), ({"step": 3}, "unknown key"),
                     ({"rungs": 0}, "rungs"), ("yes", "mapping")):
        with pytest.raises(InputError, match=msg):
            grid_from_dict({**GRID, "lr_search": bad})


def test_lr_search_cells_default_rule_and_deferred_upper_rungs():
    grid = grid_from_dict({**GRID, "lr_search": {"factors": [0.1, 1, 10], "rungs": 2},
                           "train": {"batch_size": 32, "seed": 0}})
    cells, skipped = expand(grid)
    assert {c.budget for c in cells} == {1e12, 4e12}
    lrs = {c.config["lr"] for c in cells}
    assert lrs == {1e-5, 1e-4, 1e-3}  # x the default rule (1e-4 for an unknown model)
    assert len(cells) == 3 * 2 * 2 * 3 and len({c.key for c in cells}) == len(cells)
    assert sum("waits for the LR search" in s.reason for s in skipped) == 3 * 2 * 2


def test_lr_protocol_end_to_end_on_synthetic_trainer(tmp_path):
    grid = grid_from_dict(GRID, base_dir=tmp_path)
    logs = []
    res = run_sweep(grid, store=tmp_path / "s.sqlite", progress=False, log=logs.append)
    assert res.total == 3 * 2 * 3 + 3 * 2 * 3 and not res.failed
    with RunStore(tmp_path / "s.sqlite") as st:
        recs = st.records()
    for model in MODELS:
        for variant, meth in (("full", {"name": "full"}), ("lora-r8", {"name": "lora", "rank": 8})):
            mine = [r for r in recs if r.model == model and r.method["name"] == meth["name"]]
            upper = {r.lr for r in mine if r.budget > 1e12}
            n = mine[0].n_params
            # the grid LR closest (in log) to the synthetic optimum wins the search and runs the upper rungs
            best = min((1e-4, 1e-3, 1e-2), key=lambda x, n=n, meth=meth: abs(math.log(x / optimal_lr(meth, n))))
            assert upper == {best}, (model, variant)
    # resumable: a rerun trains nothing
    again = run_sweep(grid, store=tmp_path / "s.sqlite", progress=False, log=lambda s: None)
    assert again.ran == [] and again.already_done == res.total

    laws = fit_laws(recs, bootstrap=10)
    assert "lowest rung" in laws.lr_protocol
    assert sum(len(v) for v in laws.points.values()) == 3 * 2 * 4  # only the chosen LR's runs are fitted
    entry = laws.recipe["lora-r8"]["toy-h128-l4"]
    assert entry["lr"] == 1e-2 and entry["batch_size"] == 32 and entry["lr_candidates"] == [1e-4, 1e-3, 1e-2]
    assert laws.batch_sizes == [32]
    card = tmp_path / "card.json"
    laws.save(card)
    p = plan(2.56e14, LawSet.load(card))
    assert p.best.lr == laws.recipe[p.best.variant][p.best.path]["lr"]
    assert f"lr {p.best.lr:.3g}" in p.format() and "batch size 32" in p.format()


def test_lr_search_runs_inside_the_adaptive_design(tmp_path):
    # (until issue 20 the two refused to combine) the design searches the LR at the cheapest rung(s) itself
    grid = grid_from_dict({**GRID, "adaptive": {"draws": 16}}, base_dir=tmp_path)
    result = run_sweep(grid, store=tmp_path / "s.sqlite", progress=False, log=lambda s: None)
    assert result.adaptive is not None and result.adaptive.complete and not result.failed
    assert result.adaptive.lr_cost > 0


# ------------------------------------------------------------------------------------------ planning
def _card(tmp_path, batch_sizes=(32,), unique_pairs=None):
    recs = []
    for bs in batch_sizes:
        recs += [synthetic_train({"model": m, "method": {"name": "full"}, "budget": b, "batch_size": bs, "seed": 0,
                                  "lr": 1e-3, **({"dataset_pairs": unique_pairs} if unique_pairs else {})})
                 for m in MODELS for b in (1e12, 4e12, 1.6e13, 6.4e13)]
    laws = fit_laws(recs, bootstrap=10)
    path = tmp_path / "card.json"
    laws.save(path)
    return laws, path


def test_batch_size_other_than_the_cards_is_an_error_unless_fitted_across(tmp_path):
    laws, _ = _card(tmp_path)
    with pytest.raises(InputError, match="batch size 1024 differs from the 32"):
        plan(1e14, laws, batch_size=1024)
    assert plan(1e14, laws, batch_size=32).batch_size == 32
    multi, _ = _card(tmp_path, batch_sizes=(32, 64))
    assert multi.batch_sizes == [32, 64]
    assert plan(1e14, multi, batch_size=64).batch_size == 64


def test_epoch_warning_and_effective_data(tmp_path):
    laws, path = _card(tmp_path, unique_pairs=2000)
    assert laws.unique_pairs == 2000 and laws.unique_tokens == pytest.approx(2000 * 60)
    p = plan(1e15, laws)
    b = p.best
    assert b.epochs == pytest.approx(b.tokens / (2000 * 60)) and b.epochs > 1
    assert b.effective_tokens == pytest.approx(effective_tokens(b.tokens, 2000 * 60))
    assert b.loss == pytest.approx(float(laws["full"].predict(b.n_params, b.effective_tokens)))
    assert any("epochs of the 2,000 unique training pairs" in w for w in p.warnings)
    big = plan(1e15, laws, unique_pairs=10**9)  # the user's own, larger data set: no repetition
    assert big.best.effective_tokens is None and not any("epochs" in w for w in big.warnings)
    with pytest.raises(InputError, match="unique pairs"):
        plan(1e15, laws, unique_pairs=0)
    assert main(["plan", "--laws", str(path), "--budget", "1e15", "--unique-pairs", "1000000000"]) == 0
    assert main(["plan", "--laws", str(path), "--budget", "1e15", "--batch-size", "64"]) == 2


def test_old_card_without_lr_loads_and_says_unknown(tmp_path):
    _, path = _card(tmp_path)
    d = json.loads(path.read_text())
    for k in ("recipe", "lr_protocol", "batch_sizes", "unique_pairs", "unique_tokens"):
        d.pop(k)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    p = plan(1e14, load_laws(old))
    assert p.best.lr is None and "lr unknown" in p.format()
    with pytest.raises(InputError):
        plan(1e14, load_laws(old), batch_size=16)  # the single batch_size field still binds


def test_run_dry_run_trains_at_the_cards_lr_and_batch(tmp_path, capsys):
    _, path = _card(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "a", "pos": "b"}\n')
    assert main(["run", "--budget", "1e14", "--laws", str(path), "--data", str(data), "--out",
                 str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    config = json.loads(out.split("training config: ")[1].splitlines()[0])
    assert config["lr"] == 1e-3 and config["batch_size"] == 32
    assert "training at the card's lr 0.001" in out
    assert main(["run", "--budget", "1e14", "--laws", str(path), "--data", str(data), "--out",
                 str(tmp_path / "o"), "--dry-run", "--lr", "5e-4"]) == 0
    assert "WARNING: training at --lr 0.0005" in capsys.readouterr().out


def test_default_card_records_the_studys_lr_and_batch(tmp_path, capsys):
    laws = load_laws(None)
    assert laws.batch_sizes == [32] and laws.unique_pairs == 28712
    assert {e["lr"] for v in laws.recipe.values() for e in v.values()} == {1e-3}
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "a", "pos": "b"}\n')
    assert main(["run", "--budget", "1.51e13", "--data", str(data), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    config = json.loads(out.split("training config: ")[1].splitlines()[0])
    assert config["lr"] == 1e-3 and config["batch_size"] == 32


# ------------------------------------------------------------------------------------------ recipe check
def _swept(tmp_path):
    grid = grid_from_dict({**GRID, "budgets": [1e12, 4e12, 1.6e13, 6.4e13]}, base_dir=tmp_path)
    run_sweep(grid, store=tmp_path / "s.sqlite", progress=False, log=lambda s: None)
    with RunStore(tmp_path / "s.sqlite") as st:
        return st.records()


def test_check_trains_every_methods_best_and_the_naive_rule_and_resumes(tmp_path):
    recs = _swept(tmp_path)
    calls = []

    def counting(config):
        calls.append(config)
        return synthetic_train(config)

    rep = recipe_check(recs, 2.56e14, train_fn=counting, bootstrap=20, check_store=tmp_path / "c.sqlite",
                       out_dir=tmp_path / "check", log=lambda s: None)
    variants = [c.variant for c in rep.configs]
    assert set(variants) == {"full", "lora-r8"}  # every method's champion, not the plan's own ranks 2-3
    assert rep.configs[0].roles[0] == "plan" and any("naive" in c.roles for c in rep.configs)
    assert [len(c.seeds) for c in rep.configs[:2]] == [2, 2]
    assert all(c.lr == c.lr and c.lr in (1e-4, 1e-3, 1e-2) for c in rep.configs)
    assert {cfg["lr"] for cfg in calls} <= {1e-4, 1e-3, 1e-2} and {cfg["budget"] for cfg in calls} == {2.56e14}
    assert rep.plan_regret is not None and rep.plan_regret >= 0 and rep.naive_regret is not None
    assert json.loads((tmp_path / "check" / "check.json").read_text())["coverage"]["runs"] == len(calls)
    n = len(calls)
    again = recipe_check(recs, 2.56e14, train_fn=counting, bootstrap=20, check_store=tmp_path / "c.sqlite",
                         log=lambda s: None)
    assert len(calls) == n and again.plan_regret == rep.plan_regret  # resumed from the check store


def test_check_can_fail_when_the_laws_pick_the_wrong_method(tmp_path):
    recs = _swept(tmp_path)
    planned = recipe_check(recs, 2.56e14, bootstrap=20, dry_run=True, log=lambda s: None).configs[0]
    wrong = planned.variant.split("-")[0]

    def planned_method_collapses(config):  # the truth at the check budget is not what the laws extrapolate
        rec = synthetic_train(config)
        if config["method"]["name"] == wrong:
            rec = dataclasses.replace(rec, final_val_loss=rec.final_val_loss * 1.5)
        return rec

    rep = recipe_check(recs, 2.56e14, train_fn=planned_method_collapses, bootstrap=20, log=lambda s: None)
    assert rep.configs[0].variant == planned.variant
    assert rep.plan_regret > 0.2
    assert rep.best_measured.variant != planned.variant
    inside, total = rep.coverage
    assert inside < total
    assert "regret of the plan: +" in rep.format()


def test_check_cli(tmp_path, capsys):
    _swept(tmp_path)
    assert main(["check", str(tmp_path / "s.sqlite"), "--budget", "2.56e14", "--bootstrap", "10",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "regret of the plan" in out and "regret of the naive rule" in out and "interval coverage" in out
    assert (tmp_path / "s-check.sqlite").exists()
    assert main(["check", str(tmp_path / "s.sqlite"), "--budget", "-1"]) == 2
    assert main(["check", str(tmp_path / "nope.sqlite"), "--budget", "1e14"]) == 2
    assert main(["check", str(tmp_path / "s.sqlite"), "--budget", "1e14", "--workers", "0"]) == 2
    with RunStore(tmp_path / "s-check.sqlite") as st:
        assert st.counts().get("completed") == len(st.rows())  # every check run recorded


def test_check_interrupted_leaves_its_unstarted_runs_pending_and_a_rerun_finishes_them(tmp_path):
    recs = _swept(tmp_path)
    calls = []

    def interrupted_at_the_second_run(config):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return synthetic_train(config)

    with pytest.raises(KeyboardInterrupt):
        recipe_check(recs, 2.56e14, train_fn=interrupted_at_the_second_run, bootstrap=20,
                     check_store=tmp_path / "c.sqlite", log=lambda s: None)
    with RunStore(tmp_path / "c.sqlite") as st:
        assert {s: n for s, n in st.counts().items() if n} == {"completed": 1, "pending": 3}  # no claim left behind for a later run to wait on
    rep = recipe_check(recs, 2.56e14, train_fn=synthetic_train, bootstrap=20, check_store=tmp_path / "c.sqlite",
                       log=lambda s: None)
    assert not any(c.failed for c in rep.configs) and rep.plan_regret is not None
    with RunStore(tmp_path / "c.sqlite") as st:
        assert {s: n for s, n in st.counts().items() if n} == {"completed": 4}


def test_check_matches_a_stores_testbed_paths_to_the_cards_portable_names():
    """A store trained on absolute testbed paths, fitted into a card that names the models portably: the check
    still finds the naive configuration among the plan's options and copies that model's own run config (keeping
    the store's model string, so the check's run keys are the ones an earlier check stored)."""
    from types import SimpleNamespace as NS

    from embrecipe.pipeline.check import _naive_candidate, _template

    path = "/root/.cache/embrecipe/testbed/smollm2-L4"
    points = [NS(model=path, variant="full", budget=1e13, loss=3.0, key="a"),
              NS(model="/root/.cache/embrecipe/testbed/smollm2-L2", variant="full", budget=1e13, loss=3.1, key="b")]
    plan_ = NS(candidates=[NS(variant="full", path="smollm2-L2", model="smollm2-L2"),
                           NS(variant="full", path="smollm2-L4", model="smollm2-L4")])
    naive, budget = _naive_candidate(plan_, points)
    assert naive.path == "smollm2-L4" and budget == 1e13
    records = [NS(key=k, config=NS(to_dict=lambda m=m: {"model": m, "lr": 1e-3})) for k, m in
               (("a", path), ("b", "/root/.cache/embrecipe/testbed/smollm2-L2"))]
    assert _template(records, points, "smollm2-L4", "full")["model"] == path
