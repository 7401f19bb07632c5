"""SIMULATED study-v2 grid: the adaptive design (embrecipe.sweep.design) against the full grid on the same draws.

Nothing here is a measurement of training. Each redraw draws new "true" laws shaped like study v1's fits
(src/embrecipe/resources/laws/default.json: every parameter perturbed log-normally), a true LR optimum per
(variant, size) (the synthetic trainer's rule, embrecipe.sweep.synthetic), and log-normal run noise at study v1's
level (sigma 2 % of log-loss: v1's residual scatter, 1.5-3.1 %, has no repeated seeds). The grid is study v2's
option A (docs/study_v2_plan.md): the SmolLM2 depth ladder L2-L30, full / freeze 25 % / freeze 50 % /
LoRA r8 / r32, budgets 4e13 ... 4e15 (x sqrt 10), batch 1,024, 43.2 tokens per pair, cells with >= 20 steps,
3 LRs per (size, variant) at its cheapest kept budget. The full grid runs every cell (the LR search at the
cheapest budget, the upper rungs at the chosen LR) on the SAME noise draws; its recipe is the argmin of its
fitted laws' point predictions at the target.

    nice -n 10 python benchmarks/adaptive_sim.py --redraws 50 --out benchmarks/adaptive_sim.json

Writes per-redraw rows and the summary to --out (JSON) and prints the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from embrecipe.flops import ModelShape  # noqa: E402
from embrecipe.laws import ScalingLaw  # noqa: E402
from embrecipe.models.methods import method_from_dict  # noqa: E402
from embrecipe.sweep.design import DesignSpec, Option, Run, chosen_lrs, run_design  # noqa: E402

VARIANTS = {
    "full": {"name": "full"},
    "freeze-f0.25": {"name": "freeze", "trainable_blocks": 0.25},
    "freeze-f0.5": {"name": "freeze", "trainable_blocks": 0.5},
    "lora-r8": {"name": "lora", "rank": 8},
    "lora-r32": {"name": "lora", "rank": 32},
}
BUDGETS = [4e13 * math.sqrt(10) ** k for k in range(5)]
BATCH, TPP, MIN_STEPS = 1024, 43.2, 20
LR_BASE = {"full": 1e-3, "freeze-f0.25": 1.5e-3, "freeze-f0.5": 1.5e-3, "lora-r8": 3e-3, "lora-r32": 3e-3}
LR_FACTORS = (0.15, 0.35, 0.8)  # the 3 LRs tried, x LR_BASE: they bracket the optimum over the ladder
LR_CURVATURE = 0.05  # loss x (1 + k ln^2(lr / lr*)), as embrecipe.sweep.synthetic
NOISE = 0.02


def ladder() -> dict[str, ModelShape]:
    card = json.loads((ROOT / "src/embrecipe/resources/laws/default.json").read_text())
    return {m["name"]: ModelShape.from_dict(m["shape"]) for m in card["family"]}


def v1_laws() -> dict[str, dict[str, float]]:
    card = json.loads((ROOT / "src/embrecipe/resources/laws/default.json").read_text())
    return {v: dict(law["params"]) for v, law in card["variants"].items()}


def grid_cells(shapes: dict[str, ModelShape]) -> list[tuple[str, str, float, float, float]]:
    """(model, variant, budget, N, D) of every kept cell (>= MIN_STEPS steps)."""
    out = []
    for m, shape in shapes.items():
        for v, md in VARIANTS.items():
            cost = method_from_dict(md).flops_per_token(shape)
            for b in BUDGETS:
                d = b / cost
                if d / (BATCH * TPP) >= MIN_STEPS:
                    out.append((m, v, b, float(shape.non_embedding_params), d))
    return out


def draw_laws(rng: np.random.Generator, base: dict[str, dict[str, float]],
              spread: float = 1.0) -> dict[str, dict[str, float]]:
    scale = {"E": 0.3, "A": 0.1, "alpha": 0.2, "B": 0.3, "beta": 0.1}
    return {v: {k: p[k] * math.exp(rng.normal(0, spread * scale[k])) for k in p} for v, p in base.items()}


def true_loss(law: dict[str, float], n: float, d: float) -> float:
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


def lr_star(v: str, n: float) -> float:
    return LR_BASE[v] * (n / 1e6) ** -0.25


def make_oracle(laws: dict[str, dict[str, float]], redraw: int, noise: float = NOISE):
    def train(o: Option) -> Run:
        # The noise of a cell depends only on the redraw and the cell, so the design and the grid see the
        # same run when they train the same cell.
        h = int(hashlib.sha256(f"{redraw}|{o.model}|{o.variant}|{o.budget:.6g}|{o.lr}".encode()).hexdigest()[:8], 16)
        eps = np.random.default_rng(h).normal(0.0, noise)
        pen = 1.0 if o.lr is None else 1.0 + LR_CURVATURE * math.log(o.lr / lr_star(o.variant, o.N)) ** 2
        loss = true_loss(laws[o.variant], o.N, o.D) * pen * math.exp(eps)
        return Run(model=o.model, variant=o.variant, budget=o.budget, N=o.N, D=o.D, flops=o.flops, loss=loss,
                   lr=o.lr, key=o.key)
    return train


def options_of(cells) -> list[Option]:
    return [Option(model=m, variant=v, budget=b, N=n, D=d, flops=b, lr=LR_BASE[v] * f)
            for m, v, b, n, d in cells for f in LR_FACTORS]


def full_grid(cells, oracle) -> tuple[list[Run], float]:
    """The full grid with the LR protocol: every LR at each configuration's cheapest cell, the rest at the
    chosen LR. Returns its runs and FLOPs."""
    low: dict[tuple[str, str], float] = {}
    for m, v, b, _, _ in cells:
        low[(m, v)] = min(low.get((m, v), math.inf), b)
    search = [Option(m, v, b, n, d, b, LR_BASE[v] * f) for m, v, b, n, d in cells if b == low[(m, v)]
              for f in LR_FACTORS]
    runs = [oracle(o) for o in search]
    picks = chosen_lrs(runs)
    runs += [oracle(Option(m, v, b, n, d, b, picks[(m, v)])) for m, v, b, n, d in cells if b != low[(m, v)]]
    return runs, sum(r.flops for r in runs)


def point_recipe(runs: list[Run], configs: dict[tuple[str, str], tuple[float, float]], target: float):
    """The full grid's recipe: argmin of the fitted laws' point predictions (chosen LR's runs only)."""
    from embrecipe.sweep.design import runs_at_chosen_lr

    kept = runs_at_chosen_lr(runs)
    best, best_loss = None, math.inf
    for v in VARIANTS:
        mine = [r for r in kept if r.variant == v]
        law = ScalingLaw(estimator="huber-log").fit([r.N for r in mine], [r.D for r in mine], [r.loss for r in mine])
        for (m, vv), (n, cost) in configs.items():
            if vv == v:
                pred = float(law.predict(n, target / cost))
                if pred < best_loss:
                    best, best_loss = (m, v), pred
    return best


def one(redraw: int, cells, base, spec: DesignSpec, target: float, budget: float | None,
        noise: float = NOISE, spread: float = 1.0) -> dict:
    rng = np.random.default_rng(1000 + redraw)
    laws = draw_laws(rng, base, spread)
    oracle = make_oracle(laws, redraw, noise)
    configs = {(m, v): (n, b / d) for m, v, b, n, d in cells}
    truth = {c: true_loss(laws[c[1]], n, target / cost) for c, (n, cost) in configs.items()}
    opt = min(truth, key=truth.get)
    t0 = time.time()
    grid_runs, grid_flops = full_grid(cells, oracle)
    grid_rec = point_recipe(grid_runs, configs, target)
    res = run_design(options_of(cells), oracle, target=target, spec=spec, experiment_budget=budget)
    rec = res.recipe
    return {
        "redraw": redraw, "true_optimum": list(opt), "grid_recipe": list(grid_rec),
        "adaptive_recipe": None if rec is None else list(rec), "stop": res.stop,
        "grid_flops": grid_flops, "adaptive_flops": res.flops, "fraction": res.flops / grid_flops,
        "lr_cost_flops": res.lr_cost(), "runs": len(res.runs), "steps": len(res.steps),
        "regret_vs_optimum": (truth[rec] / truth[opt] - 1) if rec else None,
        "grid_regret_vs_optimum": truth[grid_rec] / truth[opt] - 1,
        "regret_vs_grid": (truth[rec] / truth[grid_rec] - 1) if rec else None,
        "stated_expected_regret": res.expected_regret, "p_optimal": res.p_optimal,
        "agree": rec == grid_rec, "seconds": time.time() - t0,
        "trace": res.trace(),
    }


def summarise(rows: list[dict]) -> dict:
    def stats(xs):
        xs = np.array([x for x in xs if x is not None], dtype=float)
        return {"mean": float(xs.mean()), "p95": float(np.quantile(xs, 0.95)), "worst": float(xs.max())}

    stated = np.array([r["stated_expected_regret"] for r in rows], dtype=float)
    real = np.array([r["regret_vs_optimum"] for r in rows], dtype=float)
    bins = []
    for lo, hi in ((0, 0.002), (0.002, 0.005), (0.005, 0.02), (0.02, 1.0)):
        sel = (stated >= lo) & (stated < hi)
        if sel.any():
            bins.append({"stated_in": [lo, hi], "n": int(sel.sum()), "mean_stated": float(stated[sel].mean()),
                         "mean_realised": float(real[sel].mean())})
    return {
        "redraws": len(rows),
        "fraction": stats(r["fraction"] for r in rows),
        "lr_cost_fraction_of_adaptive": float(np.mean([r["lr_cost_flops"] / r["adaptive_flops"] for r in rows])),
        "regret_vs_optimum": stats(real),
        "regret_vs_grid": stats(r["regret_vs_grid"] for r in rows),
        "grid_regret_vs_optimum": stats(r["grid_regret_vs_optimum"] for r in rows),
        "agreement": float(np.mean([r["agree"] for r in rows])),
        "adaptive_finds_true_optimum": float(np.mean([r["adaptive_recipe"] == r["true_optimum"] for r in rows])),
        "grid_finds_true_optimum": float(np.mean([r["grid_recipe"] == r["true_optimum"] for r in rows])),
        "calibration": {"mean_stated": float(stated.mean()), "mean_realised": float(real.mean()),
                        "ratio_realised_over_stated": float(real.mean() / stated.mean()) if stated.mean() else None,
                        "bins": bins},
        "p_optimal": {"mean_stated": float(np.mean([r["p_optimal"] for r in rows])),
                      "realised": float(np.mean([r["adaptive_recipe"] == r["true_optimum"] for r in rows]))},
        "stops": {s: sum(r["stop"] == s for r in rows) for s in sorted({r["stop"] for r in rows})},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redraws", type=int, default=50)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--draws", type=int, default=30, help="bootstrap particles per decision")
    ap.add_argument("--threshold", type=float, default=0.005)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--experiment-budget-fraction", type=float, default=None,
                    help="cap the design at this fraction of the full grid's FLOPs")
    ap.add_argument("--noise", type=float, default=NOISE, help="run noise (sigma of log-loss; default v1's 0.02)")
    ap.add_argument("--law-spread", type=float, default=1.0,
                    help="multiply the perturbation of v1's law parameters by this (harder redraws)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/adaptive_sim.json"))
    ap.add_argument("--resummarise", action="store_true",
                    help="recompute the summary of the rows already in --out (no simulation)")
    args = ap.parse_args()
    if args.resummarise:
        data = json.loads(Path(args.out).read_text())
        data["summary"] = summarise(data["rows"])
        Path(args.out).write_text(json.dumps(data, indent=1))
        print(json.dumps(data["summary"], indent=1))
        return
    shapes = ladder()
    cells = grid_cells(shapes)
    base = v1_laws()
    target = max(BUDGETS)
    spec = DesignSpec(draws=args.draws, threshold=args.threshold, batch=args.batch)
    grid_total = None
    rows = []
    out = Path(args.out)
    for i in range(args.start, args.start + args.redraws):
        budget = None
        if args.experiment_budget_fraction is not None:
            if grid_total is None:
                grid_total = full_grid(cells, make_oracle(draw_laws(np.random.default_rng(0), base), 0))[1]
            budget = args.experiment_budget_fraction * grid_total
        row = one(i, cells, base, spec, target, budget, args.noise, args.law_spread)
        rows.append(row)
        print(f"redraw {i}: fraction {row['fraction']:.3f} regret {row['regret_vs_optimum']:.4f} "
              f"stated {row['stated_expected_regret']:.4f} agree {row['agree']} stop {row['stop']} "
              f"({row['seconds']:.0f} s)", flush=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": {**vars(args), "spec": spec.__dict__,
                                                "budgets": BUDGETS, "cells": len(cells)},
                                   "summary": summarise(rows), "rows": rows}, indent=1))
        os.replace(tmp, out)
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
    main()
