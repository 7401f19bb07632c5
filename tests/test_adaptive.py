"""Adaptive sweeps with the SYNTHETIC fake trainer (checks the policy and the machinery, not real training):
fewer FLOPs than the grid, same recommendation, the best configuration survives, resume after a failure and
an interruption, the offline replay matches the live run, and the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from embrecipe.adaptive import AdaptiveSpec, config_id, recommend, record_flops, replay_adaptive
from embrecipe.cli import main
from embrecipe.errors import InputError
from embrecipe.grid import grid_from_dict
from embrecipe.store import RunStore
from embrecipe.sweep import run_sweep
from embrecipe.synthetic import synthetic_train

# Three sizes × four variants × five budgets ×4 apart. Bias-only and freezing are clearly worse under the
# synthetic laws; full fine-tuning wins the small budgets and LoRA the large ones (a crossover).
GRID = {
    "name": "adaptive-toy",
    "trainer": "synthetic",
    "models": ["toy-h64-l2", "toy-h128-l4", "toy-h256-l6"],
    "methods": {"full": {}, "lora": {"rank": 8}, "freeze": {"trainable_blocks": 0.5}, "bias": {}},
    "budgets": [1e12 * 4**i for i in range(5)],
    "tokens_per_pair": 60,
    "min_steps": 10,
    "train": {"batch_size": 32, "seed": 0},
}
TARGET = 2.56e14  # the largest budget: the recommendation the sweep is for
SPEC = AdaptiveSpec(bootstrap=20)  # few refits keep the tests fast; the rule is the same
QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The full grid and a live adaptive sweep of the same grid, each in its own store (run once)."""
    root = tmp_path_factory.mktemp("adaptive")
    full = run_sweep(grid_from_dict(GRID), store=root / "full.sqlite", **QUIET)
    assert len(full.ran) == 60 and not full.failed
    live = run_sweep(grid_from_dict(GRID), store=root / "live.sqlite", adaptive=SPEC, **QUIET)
    return {"root": root, "full": RunStore(root / "full.sqlite").records(), "live_result": live,
            "live": RunStore(root / "live.sqlite").records()}


@pytest.fixture(scope="module")
def replay(runs):
    """The adaptive policy replayed offline on the full grid's runs."""
    return replay_adaptive(runs["full"], target=TARGET, spec=SPEC)


def _top_rung_best(records):
    top = max(r.budget for r in records)
    return config_id(min((r for r in records if r.budget == top), key=lambda r: r.final_val_loss))


def test_spec_from_grid_key():
    assert grid_from_dict(GRID).adaptive is None
    assert grid_from_dict({**GRID, "adaptive": True}).adaptive == AdaptiveSpec()
    spec = grid_from_dict({**GRID, "adaptive": {"target": 1e15, "keep_min": 2, "margin": 0.05}}).adaptive
    assert spec.targets == (1e15,) and spec.keep_min == 2 and spec.margin == 0.05
    assert grid_from_dict({**GRID, "adaptive": {"target": [1e14, 1e15]}}).adaptive.targets == (1e14, 1e15)
    with pytest.raises(InputError, match="unknown adaptive key"):
        grid_from_dict({**GRID, "adaptive": {"keepmin": 2}})
    with pytest.raises(InputError, match="keep_min"):
        grid_from_dict({**GRID, "adaptive": {"keep_min": 0}})
    with pytest.raises(InputError, match="min_rungs"):
        AdaptiveSpec(min_rungs=1)


def test_adaptive_spends_fewer_flops_and_reaches_the_same_recommendation(runs):
    report = runs["live_result"].adaptive
    assert report.complete and not runs["live_result"].failed
    # (a) strictly fewer FLOPs: the planned budgets, and the model FLOPs the runs actually spent.
    spent = sum(record_flops(r) for r in runs["live"])
    grid = sum(record_flops(r) for r in runs["full"])
    assert report.flops_selected < report.flops_grid and spent < grid
    assert 0.15 < report.fraction < 0.45  # measured 0.296: 42 of 60 cells, the dropped ones above rung 3
    assert report.cells_selected == len(runs["live"]) < 60
    assert len(report.dropped) >= 6
    # Dropped configurations leave no pending rows: the store holds exactly the cells the policy ran.
    assert len(RunStore(runs["root"] / "live.sqlite")) == report.cells_selected
    # Bias-only and freezing (clearly worse) are dropped at every size.
    assert {("toy-h64-l2", "bias"), ("toy-h128-l4", "bias"), ("toy-h256-l6", "bias"),
            ("toy-h256-l6", "freeze-f0.5")} <= set(report.dropped)
    # (b) the planner's optimum at the target, fitted on the adaptive runs, is the full grid's — and it is
    # the configuration that measured best at the target budget in the full grid.
    from_grid = recommend(runs["full"], TARGET)
    from_adaptive = recommend(runs["live"], TARGET)
    assert from_adaptive.config == from_grid.config == _top_rung_best(runs["full"]) == ("toy-h128-l4", "lora-r8")
    assert from_adaptive.loss == pytest.approx(from_grid.loss, rel=0.02)


def test_adaptive_never_drops_the_best_configuration(runs):
    report = runs["live_result"].adaptive
    best = _top_rung_best(runs["full"])
    assert best not in report.dropped
    assert any(r.budget == TARGET and config_id(r) == best for r in runs["live"])  # trained to the top
    for d in report.decisions:
        assert d.measured_best is not None and d.measured_best not in d.dropped
        if d.frontier is not None:
            assert d.frontier not in d.dropped
        assert len(d.kept) >= SPEC.keep_min
    # Why the rule extrapolates instead of comparing the rung's losses: at the first rung the eventual
    # winner ranks in the bottom half (successive halving on measured loss would have dropped it).
    first = sorted((r for r in runs["full"] if r.budget == 1e12), key=lambda r: r.final_val_loss)
    rank = [config_id(r) for r in first].index(best)
    assert rank >= len(first) // 2
    assert first[rank].final_val_loss > 2 * first[0].final_val_loss


def test_replay_matches_the_live_adaptive_run(runs, replay):
    rep = replay
    report = runs["live_result"].adaptive
    assert rep.runs_grid == 60 and rep.runs_adaptive == report.cells_selected
    assert sorted(rep.adaptive_keys) == sorted(r.key for r in runs["live"])
    assert rep.flops_adaptive == pytest.approx(sum(record_flops(r) for r in runs["live"]), rel=1e-12)
    assert rep.fraction == pytest.approx(report.fraction, rel=1e-2)  # model vs planned FLOPs
    assert [set(d.dropped) for d in rep.decisions] == [set(d.dropped) for d in report.decisions]
    assert rep.same_recommendation and rep.grid_best.config == ("toy-h128-l4", "lora-r8")
    text = rep.format()
    assert "SYNTHETIC" in text and "same recommendation: yes" in text
    assert f"{100 * rep.fraction:.1f}% of the grid" in text
    assert "drop bias on toy-h64-l2" in text


def test_adaptive_resumes_after_a_failure_and_an_interruption(runs, tmp_path):
    store = tmp_path / "resume.sqlite"
    grid = grid_from_dict(GRID)

    def failing(config):
        if config["method"]["name"] == "bias" and config["model"] == "toy-h64-l2" and config["budget"] == 4e12:
            raise RuntimeError("simulated crash")
        return synthetic_train(config)

    r1 = run_sweep(grid, store=store, adaptive=SPEC, train_fn=failing, **QUIET)
    # A rung with a failed cell ends the sweep before deciding (a partial rung must not steer the policy).
    assert len(r1.failed) == 1 and not r1.adaptive.complete and len(r1.adaptive.decisions) == 1
    st = RunStore(store)
    assert st.counts() == {"pending": 0, "running": 0, "completed": 23, "failed": 1}
    st.close()

    calls: list[str] = []

    def interrupted(config):
        calls.append(config["method"]["name"])
        if len(calls) == 15:  # the retried cell, rung 3's twelve, then the second cell of rung 4
            raise KeyboardInterrupt
        return synthetic_train(config)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, store=store, adaptive=SPEC, train_fn=interrupted, **QUIET)
    st = RunStore(store)
    done_before = {r["key"] for r in st.rows("completed")}
    # The interrupted cell was handed back (pending, not running), beside rung 4's cell not started yet.
    assert len(done_before) == 37 and st.counts() == {"pending": 2, "running": 0, "completed": 37, "failed": 0}
    st.close()

    trained: list[tuple] = []

    def counting(config):
        trained.append((config["model"], config["method"]["name"], config["budget"]))
        return synthetic_train(config)

    r3 = run_sweep(grid, store=store, adaptive=SPEC, train_fn=counting, **QUIET)
    assert r3.adaptive.complete and not r3.failed
    assert not set(r3.ran) & done_before  # nothing completed is retrained
    assert len(trained) == len(r3.ran) == 42 - 37 and r3.already_done == 37
    assert {b for _, _, b in trained} == {6.4e13, 2.56e14}  # the rest of rung 4, then rung 5
    # The same selection and the same decisions as the uninterrupted run.
    st = RunStore(store)
    assert {r["key"] for r in st.rows("completed")} == {r.key for r in runs["live"]}
    assert len(st) == 42
    assert [set(d.dropped) for d in r3.adaptive.decisions] == \
        [set(d.dropped) for d in runs["live_result"].adaptive.decisions]
    attempts = sorted(r["attempts"] for r in st.rows())
    assert attempts[-2:] == [2, 2] and attempts[-3] == 1  # only the failed and the interrupted cell ran twice
    st.close()


def test_cli_adaptive_replay(runs, replay, capsys):
    store = str(runs["root"] / "full.sqlite")
    assert main(["sweep", "--adaptive-replay", store, "--budget", "2.56e14", "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fraction"] == pytest.approx(replay.fraction, rel=1e-12)
    assert out["runs_adaptive"] == replay.runs_adaptive
    assert out["same_recommendation"] is True and out["runs_grid"] == 60
    assert out["grid_best"]["variant"] == "lora-r8" and out["spec"]["bootstrap"] == 20


def test_cli_live_adaptive_sweep(tmp_path, capsys):
    small = {**GRID, "methods": {"full": {}, "bias": {}}, "budgets": [1e12, 4e12, 1.6e13],
             "adaptive": {"min_rungs": 2, "keep_min": 1, "bootstrap": 10}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(small))
    store = tmp_path / "small.sqlite"
    assert main(["sweep", str(path), "--store", str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rung 3/3" in out and "drop bias on toy-h" in out and "adaptive: " in out
    st = RunStore(store)
    assert st.counts()["completed"] == len(st) < 18  # the dropped cells never entered the store
    # --no-adaptive runs the rest of the grid and reuses every completed cell.
    done = st.counts()["completed"]
    st.close()
    assert main(["sweep", str(path), "--store", str(store), "--no-progress", "--no-adaptive"]) == 0
    assert f"{done} already completed, {18 - done} ran now" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "give a grid YAML"),
    (["grid.yaml", "--adaptive-replay", "runs.sqlite"], "give no grid file"),
    (["--adaptive-replay", "missing.sqlite"], "is not a run store"),
    (["GRID", "--keep-min", "2"], "need --adaptive"),
    (["GRID", "--no-adaptive", "--margin", "0.1"], "conflicts with --no-adaptive"),
    (["GRID", "--adaptive", "--keep-min", "0"], "keep_min must be >= 1"),
    (["GRID", "--json"], "--json goes with --adaptive-replay"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    argv = [str(path) if a == "GRID" else a for a in argv]
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("embrecipe: error:") and "\n" not in err
