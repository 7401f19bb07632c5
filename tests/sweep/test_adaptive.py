"""The adaptive design (embrecipe.sweep.design, embrecipe.sweep.adaptive) on SYNTHETIC runs (fake trainer / known laws):
the decision logic on seeded stores, a case where stopping early would give a wrong recipe, the experiment
budget, the LR search inside the design, resume after an interruption, the replay and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from embrecipe.cli import main
from embrecipe.errors import InputError
from embrecipe.runs.store import RunStore
from embrecipe.sweep.adaptive import AdaptiveSpec, read_trace, record_flops, replay_adaptive
from embrecipe.sweep.design import DesignSpec, Option, Run, next_step, seed_options, transfer_lr
from embrecipe.sweep.grid import grid_from_dict
from embrecipe.sweep.orchestration import run_adaptive_sweep, run_sweep

GRID = {
    "name": "adaptive-toy",
    "trainer": "synthetic",
    "models": ["toy-h64-l2", "toy-h128-l4", "toy-h256-l6"],
    "methods": {"full": {}, "lora": {"rank": 8}, "freeze": {"trainable_blocks": 0.5}},
    "budgets": [1e12 * 4**i for i in range(5)],
    "tokens_per_pair": 60,
    "min_steps": 10,
    "train": {"batch_size": 32, "seed": 0},
}
TARGET = 2.56e14
SPEC = AdaptiveSpec(draws=16)  # few particles keep the tests fast; the logic is the same
QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    full = run_sweep(grid_from_dict(GRID), store=root / "full.sqlite", **QUIET)
    assert len(full.ran) == 45 and not full.failed
    live = run_sweep(grid_from_dict(GRID), store=root / "live.sqlite", adaptive=SPEC, **QUIET)
    return {"root": root, "full": RunStore(root / "full.sqlite").records(), "live_result": live,
            "live": RunStore(root / "live.sqlite").records()}


def test_spec_from_grid_key():
    assert grid_from_dict(GRID).adaptive is None
    assert grid_from_dict({**GRID, "adaptive": True}).adaptive == AdaptiveSpec()
    spec = grid_from_dict({**GRID, "adaptive": {"target": 1e15, "threshold": 0.01, "experiment_budget": 1e15}}).adaptive
    assert spec.targets == (1e15,) and spec.threshold == 0.01 and spec.experiment_budget == 1e15
    with pytest.raises(InputError, match="unknown adaptive key"):
        grid_from_dict({**GRID, "adaptive": {"keep_min": 2}})
    with pytest.raises(InputError, match="min_sizes"):
        AdaptiveSpec(min_sizes=1)
    with pytest.raises(InputError, match="experiment_budget"):
        AdaptiveSpec(experiment_budget=-1)


def test_live_design_spends_a_fraction_and_finds_the_grid_recipe(runs):
    report = runs["live_result"].adaptive
    assert report.complete and "expected regret" in report.stop
    spent = sum(record_flops(r) for r in runs["live"])
    grid = sum(record_flops(r) for r in runs["full"])
    assert spent < 0.5 * grid
    replay = replay_adaptive(runs["full"], target=TARGET, spec=SPEC)
    assert replay.same_recommendation
    assert replay.design.expected_regret is not None and replay.design.expected_regret <= SPEC.threshold
    # the live sweep and the replay take the same decisions on the same cells
    assert [s.recipe[1] if s.recipe else None for s in report.steps] == \
        [s.recipe[1] if s.recipe else None for s in replay.design.steps]
    trace = read_trace(runs["root"] / "live.sqlite")
    assert trace and trace["stop"] == report.stop and len(trace["steps"]) == len(report.steps)


def test_experiment_budget_is_never_exceeded(tmp_path):
    cap = 1.5e14
    res = run_adaptive_sweep(grid_from_dict(GRID), tmp_path / "s.sqlite", experiment_budget=cap,
                             adaptive=SPEC, **QUIET)
    spent = sum(record_flops(r) for r in RunStore(tmp_path / "s.sqlite").records())
    assert spent <= cap and res.adaptive.stop and "budget" in res.adaptive.stop


def test_resume_after_interruption_takes_the_same_decisions(runs, tmp_path):
    # a deadline in the past stops after the first decision's batch; reruns go on where it stopped
    store = tmp_path / "r.sqlite"
    first = run_adaptive_sweep(grid_from_dict(GRID), store, deadline=0.0, adaptive=SPEC, **QUIET)
    assert not first.adaptive.complete
    final = run_adaptive_sweep(grid_from_dict(GRID), store, adaptive=SPEC, **QUIET)
    assert final.adaptive.complete
    assert sorted(r.key for r in RunStore(store).records()) == sorted(r.key for r in runs["live"])


# --- the decision logic on hand-made runs -------------------------------------------------------------
SIZES = (1e6, 4e6, 1.6e7)
BUDGETS = (1e12, 4e12, 1.6e13, 6.4e13, 2.56e14)


def _law(E, A, a, B, b):
    return lambda n, d: E + A / n**a + B / d**b


def _options():
    return [Option(model=f"m{int(math.log2(n))}", variant=v, budget=c, N=n, D=c / (6 * n), flops=c)
            for v in ("a", "b") for n in SIZES for c in BUDGETS]


def _run(o, law, factor=1.0):
    return Run(model=o.model, variant=o.variant, budget=o.budget, N=o.N, D=o.D, flops=o.flops,
               loss=law(o.N, o.D) * factor)


def test_stopping_early_would_be_wrong_and_the_design_does_not_stop():
    """The seed's runs pin both laws tightly (noise-free), and both say 'a' wins at the target with a tiny
    expected regret. But 'b' is truly 4 % better at the target (its law bends beyond the seed). A design that
    stopped on the posterior alone would give the wrong recipe; ours must verify at the target's rung first."""
    law_a, law_b = _law(0.5, 30.0, 0.3, 400.0, 0.3), _law(0.5, 30.0, 0.3, 460.0, 0.3)
    opts = _options()
    spec = DesignSpec(draws=16)
    seed = seed_options(opts, [], spec)
    assert {o.budget for o in seed} == set(BUDGETS[:3])  # the cheapest three budgets pin each law
    runs = [_run(o, law_a if o.variant == "a" else law_b) for o in seed]
    naive = next_step(runs, opts, target=BUDGETS[-1], spec=DesignSpec(draws=16, verify=0))
    assert naive.stop and naive.recipe[1] == "a"  # the trap: confident, and wrong at the target
    step = next_step(runs, opts, target=BUDGETS[-1], spec=spec)
    assert step.stop is None and step.phase == "verify"
    assert step.recipe[1] == "a" and step.expected_regret <= spec.threshold
    # it goes on until the recipe and its two closest rivals have each run at the target's rung
    while step.stop is None:
        runs += [_run(o, law_a if o.variant == "a" else law_b,
                      0.93 if (o.variant == "b" and o.budget == BUDGETS[-1]) else 1.0) for o in step.run]
        step = next_step(runs, opts, target=BUDGETS[-1], spec=spec, index=step.index + 1)
        assert step.index < 40
    at_target = {r.config for r in runs if r.budget == BUDGETS[-1]}
    assert len(at_target) >= 3 and step.recipe in at_target


def test_low_probability_configurations_are_deferred_and_every_decision_is_seeded():
    law_a, law_b = _law(0.5, 30.0, 0.3, 400.0, 0.3), _law(0.9, 30.0, 0.3, 400.0, 0.3)  # b clearly worse
    opts = _options()
    spec = DesignSpec(draws=16)
    runs = [_run(o, law_a if o.variant == "a" else law_b) for o in seed_options(opts, [], spec)]
    s1 = next_step(runs, opts, target=BUDGETS[-1], spec=spec)
    s2 = next_step(list(reversed(runs)), opts, target=BUDGETS[-1], spec=spec)
    assert s1.to_dict() == s2.to_dict()  # order of the runs does not matter: a pure function
    assert {c for c in s1.deferred if c[1] == "b"} == {(f"m{int(math.log2(n))}", "b") for n in SIZES}
    assert s1.p_optimal > 0.9 and "P(optimal)" in s1.line() and "expected regret" in s1.line()


def test_lr_search_then_transfer():
    searched = {("m1", "a"): 2e-3, ("m2", "a"): 1e-3}
    assert transfer_lr("a", 4.0, searched, {"m1": 1.0, "m2": 2.0}, [2.5e-4, 5e-4, 1e-3, 2e-3]) == 5e-4
    assert transfer_lr("b", 4.0, searched, {"m1": 1.0, "m2": 2.0}, [1e-3]) is None


def test_lr_search_inside_the_live_design(tmp_path):
    grid = grid_from_dict({**GRID, "lr_search": {"factors": [0.5, 1, 2], "rungs": 1}, "train": {**GRID["train"], "lr": 1e-3}})
    res = run_sweep(grid, store=tmp_path / "lr.sqlite", adaptive=SPEC, **QUIET)
    recs = RunStore(tmp_path / "lr.sqlite").records()
    low = [r for r in recs if r.budget == 1e12]
    assert len({r.lr for r in low}) == 3  # the search ran at the cheapest rung
    upper = {}
    for r in recs:
        if r.budget > 1e12:
            upper.setdefault((r.model, r.variant), set()).add(r.lr)
    assert upper and all(len(lrs) == 1 for lrs in upper.values())  # one LR above the search
    assert res.adaptive.complete and res.adaptive.lr_cost > 0


def test_cli_adaptive_replay_json(runs, capsys):
    assert main(["sweep", "--adaptive-replay", str(runs["root"] / "full.sqlite"), "--budget", str(TARGET),
                 "--draws", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"fraction", "same_recommendation", "expected_regret", "p_optimal", "stop"} <= set(out)
    assert 0 < out["fraction"] < 1


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--adaptive-replay", "missing.sqlite"], "missing.sqlite"),
    (["sweep", "--adaptive-replay", "x.sqlite", "--no-adaptive"], "contradict"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "x.sqlite" in argv:
        RunStore(tmp_path / "x.sqlite").close()
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_report_draws_the_design_trace(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs["root"] / "live.sqlite"), "--out", str(out), "--bootstrap", "0"]) == 0
    assert (out / "adaptive.png").exists()
    assert "## Adaptive design" in (out / "report.md").read_text()


def test_dry_run_prints_the_recipe_now_without_training(runs):
    lines = []
    store = runs["root"] / "live.sqlite"
    before = len(RunStore(store).records())
    res = run_sweep(grid_from_dict(GRID), store=store, adaptive=SPEC, dry_run=True, progress=False, log=lines.append)
    assert len(RunStore(store).records()) == before and not res.ran
    assert "P(optimal)" in lines[-1] and "expected regret" in lines[-1] and "STOP" in lines[-1]


def test_each_decision_line_says_what_ran_and_what_comes_next(runs):
    steps = runs["live_result"].adaptive.steps
    assert steps[0].ran == [] and all(s.ran == p.run for p, s in itertools.pairwise(steps))
    line = steps[1].line()
    assert "ran " in line and "next: " in line and "recipe " in line


def test_the_grid_flops_an_adaptive_sweep_is_measured_against_include_the_upper_rungs_of_an_lr_search():
    """With an LR search the upper-rung cells wait for the chosen LR (they are not among the expanded cells):
    the full grid the design's fraction divides by must count them once, or the fraction exceeds 100 %."""
    from embrecipe.sweep.cells import WAITS_FOR_LR, Skipped
    from embrecipe.sweep.orchestration import full_grid_flops

    class _Cell:
        def __init__(self, budget):
            self.budget = budget

    cells = [_Cell(1e12), _Cell(1e12), _Cell(1e12)]  # three LRs at the search rung
    skipped = [Skipped("m", "full", 1e13, WAITS_FOR_LR), Skipped("m", "full", 1e14, "too few steps")]
    assert full_grid_flops(cells, skipped) == 3e12 + 1e13  # the too-small cell is not part of the grid
