r"""Calibration of the laws' intervals on SYNTHETIC studies with known truth and known noise.

Nothing here is a measurement of a real model: every "run" is drawn from a known law,

.. math::  \log L = \log\big(E_v + A_v N^{-\alpha_v} + B_v D^{-\beta_v}\big) + \varepsilon,
           \quad \varepsilon \sim \mathcal N(0, \sigma^2),

with :math:`D = C / (k_v N)` the tokens a budget :math:`C` affords (``k_v`` FLOPs per parameter and token:
6 for full fine-tuning, 4 for a method without weight gradients). Each *redraw* is one simulated study:
a grid of model sizes × budgets per variant, three seeds at three configurations per variant (so the
run-noise term is measured, as :func:`embrecipe.laws.run_noise` requires), fitted with
:func:`embrecipe.laws.fit_laws` exactly as ``embrecipe fit`` does (estimator chosen by
leave-largest-budget-out, multi-start bootstrap). Then:

- **single-run coverage**: fresh runs (new noise) at every fitted configuration ("interior") and at a
  budget ``extrapolate``\ × above the largest fitted ("extrapolated"); the share inside their 90 %
  single-run prediction interval (target 85–95 %);
- **mean-law coverage**: the share of true (noise-free) losses inside the 90 % mean-law interval;
- **P(optimal) vs hit rate**: at the extrapolated budget, every option (size × variant) gets P(optimal)
  from the joint bootstrap draws; options are binned by P(optimal) and each bin's *hit rate* is the share
  of options that are truly optimal. A calibrated P(optimal) has hit rate ≈ mean P(optimal) per bin.

A **known-law check** compares the estimator of the previous release (Huber on log-loss, bootstrap
refits warm-started from the full fit only) with the current default on the law of issue 10
(E = 0.3, α = 0.25, 1 % noise).

Command (writes ``benchmarks/calibration.json`` and prints the table)::

    python -m embrecipe.laws.calibration --redraws 40 --bootstrap 100 --out benchmarks/calibration.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embrecipe.jsonio import write_text_atomic
from embrecipe.laws import ScalingLaw, fit_laws
from embrecipe.runs.records import RunConfig, RunRecord, variant_of

# Two variants whose optima compete near the extrapolated budget (so P(optimal) is not trivially 0 or 1).
# (E, A, alpha, B, beta, FLOPs per parameter and token)
DEFAULT_TRUTHS: dict[str, tuple[float, float, float, float, float, float]] = {
    "full": (0.5, 40.0, 0.3, 600.0, 0.35, 6.0),
    "bias": (0.55, 40.0, 0.3, 400.0, 0.35, 4.0),
}


@dataclass
class Setup:
    """One simulated study design (defaults: 4 sizes × 4 budgets per variant, 2 % noise)."""

    sizes: Sequence[float] = (1e6, 3e6, 1e7, 3e7)
    budgets: Sequence[float] = (1e14, 4e14, 1.6e15, 6.4e15)
    extrapolate: float = 3.0
    sigma: float = 0.02
    seeds: int = 3
    seeded_cells: int = 3
    truths: Mapping[str, tuple[float, float, float, float, float, float]] = field(
        default_factory=lambda: dict(DEFAULT_TRUTHS))

    def tokens(self, variant: str, n: float, budget: float) -> float:
        return budget / (self.truths[variant][5] * n)

    def true_loss(self, variant: str, n: Any, d: Any) -> Any:
        e, a, al, b, be, _ = self.truths[variant]
        return e + a / np.asarray(n) ** al + b / np.asarray(d) ** be


def simulate_records(setup: Setup, rng: np.random.Generator) -> list[RunRecord]:
    """One SYNTHETIC study: run records as the trainer would return them (``synthetic`` set)."""
    recs = []
    for variant in setup.truths:
        cells = [(n, b) for n in setup.sizes for b in setup.budgets]
        # Repeated seeds at a few configurations spread over the grid (smallest, middle, largest).
        seeded = {cells[i] for i in np.linspace(0, len(cells) - 1, setup.seeded_cells).round().astype(int)}
        for n, b in cells:
            for seed in range(setup.seeds if (n, b) in seeded else 1):
                d = setup.tokens(variant, n, b)
                loss = float(setup.true_loss(variant, n, d) * math.exp(rng.normal(0.0, setup.sigma)))
                cfg = {"model": f"m{n:g}", "method": {"name": variant}, "budget": b, "seed": seed}
                recs.append(RunRecord(key=f"{variant}-{n:g}-{b:g}-{seed}", synthetic=True,
                                      config=RunConfig.from_dict(cfg), model=str(cfg["model"]),
                                      method={"name": variant}, variant=variant_of({"name": variant}), budget=b,
                                      seed=seed, n_params=n, tokens=d, model_flops=b, final_val_loss=loss))
    return recs


def one_redraw(setup: Setup, rng: np.random.Generator, *, bootstrap: int, level: float,
               seed: int) -> dict[str, Any]:
    """Fit one simulated study and score its intervals against fresh runs and the truth."""
    laws = fit_laws(simulate_records(setup, rng), bootstrap=bootstrap, seed=seed, validate=False)
    top = max(setup.budgets) * setup.extrapolate
    out: dict[str, Any] = {"run": {"interior": [], "extrapolated": []},
                           "mean": {"interior": [], "extrapolated": []}, "width": [], "popt": [],
                           "noise_measured": bool(laws.noise.get("measured")),
                           "estimators": {v: laws[v].estimator for v in laws.variants}}
    options = []
    for variant in laws.variants:
        law = laws[variant]
        for where, budgets in (("interior", setup.budgets), ("extrapolated", [top])):
            n = np.array([x for x in setup.sizes for _ in budgets])
            d = np.array([setup.tokens(variant, x, b) for x in setup.sizes for b in budgets])
            truth = setup.true_loss(variant, n, d)
            fresh = truth * np.exp(rng.normal(0.0, setup.sigma, len(n)))
            lo, hi = law.interval(n, d, level, kind="run")
            out["run"][where] += ((lo <= fresh) & (fresh <= hi)).tolist()
            mlo, mhi = law.interval(n, d, level, kind="mean")
            out["mean"][where] += ((mlo <= truth) & (truth <= mhi)).tolist()
            if where == "extrapolated":
                out["width"] += ((hi - lo) / truth).tolist()
        for x in setup.sizes:
            d_top = setup.tokens(variant, x, top)
            options.append((variant, x, float(setup.true_loss(variant, x, d_top)), law.predict_samples(x, d_top)))
    draws = np.stack([o[3] for o in options], axis=1)  # (n_boot, options): draw b of every variant jointly
    p_opt = np.bincount(np.argmin(draws, axis=1), minlength=len(options)) / len(draws)
    best = int(np.argmin([o[2] for o in options]))
    out["popt"] = [(float(p), j == best) for j, p in enumerate(p_opt)]
    return out


P_BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0001)


def calibrate(setup: Setup | None = None, *, redraws: int = 40, bootstrap: int = 100, level: float = 0.9,
              seed: int = 0) -> dict[str, Any]:
    """Run ``redraws`` simulated studies and tabulate coverage and P(optimal) calibration."""
    setup = setup or Setup()
    rng = np.random.default_rng(seed)
    agg: dict[str, Any] = {"run": {"interior": [], "extrapolated": []},
                           "mean": {"interior": [], "extrapolated": []}, "width": [], "popt": [],
                           "noise_measured": [], "estimators": {}}
    t0 = time.time()
    for r in range(redraws):
        one = one_redraw(setup, rng, bootstrap=bootstrap, level=level, seed=seed + r)
        for kind in ("run", "mean"):
            for where in ("interior", "extrapolated"):
                agg[kind][where] += one[kind][where]
        agg["width"] += one["width"]
        agg["popt"] += one["popt"]
        agg["noise_measured"].append(one["noise_measured"])
        for v, est in one["estimators"].items():
            agg["estimators"].setdefault(v, {}).setdefault(est, 0)
            agg["estimators"][v][est] += 1
    coverage = {f"{kind}_{where}": {"coverage": float(np.mean(agg[kind][where])), "n": len(agg[kind][where])}
                for kind in ("run", "mean") for where in ("interior", "extrapolated")}
    popt = np.array([p for p, _ in agg["popt"]])
    hit = np.array([h for _, h in agg["popt"]])
    bins = []
    for lo, hi in itertools.pairwise(P_BINS):
        sel = (popt >= lo) & (popt < hi)
        if sel.any():
            bins.append({"bin": [lo, min(hi, 1.0)], "n": int(sel.sum()), "mean_p_optimal": float(popt[sel].mean()),
                         "hit_rate": float(hit[sel].mean())})
    return {
        "synthetic": True,
        "setup": {**asdict(setup), "truths": {k: list(v) for k, v in setup.truths.items()}},
        "redraws": redraws, "bootstrap": bootstrap, "level": level, "seed": seed,
        "coverage": coverage,
        "median_rel_width_run_extrapolated": float(np.median(agg["width"])),
        "p_optimal_bins": bins,
        "brier_p_optimal": float(np.mean((popt - hit) ** 2)),
        "noise_measured_share": float(np.mean(agg["noise_measured"])),
        "estimators_chosen": agg["estimators"],
        "seconds": round(time.time() - t0, 1),
    }


# ------------------------------------------------------------------------------------------------------
# The known-law check of issue 10: E = 0.3, alpha = 0.25, 1 % noise
# ------------------------------------------------------------------------------------------------------
KNOWN = {"E": 0.3, "A": 40.0, "alpha": 0.25, "B": 400.0, "beta": 0.3}


def known_law_check(*, redraws: int = 20, bootstrap: int = 100, level: float = 0.9, seed: int = 0,
                    sigma: float = 0.01) -> dict[str, Any]:
    """Estimates of E and alpha and the 90 % interval at an extrapolated point (N = 3e7, D = 1e10, ~3x above
    the largest fitted D), before (Huber, warm-start-only bootstrap, mean-law interval: the previous
    release) and now (estimator chosen by leave-largest-budget-out, multi-start bootstrap, single-run and
    mean-law intervals). Grid: 4 sizes (1e6..3e7) × 5 token counts (1e7..3e9), 1 % log-normal noise."""
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid([1e6, 3e6, 1e7, 3e7], np.geomspace(1e7, 3e9, 5)))
    n0, d0 = 3e7, 1e10

    def truth(n: Any, d: Any) -> Any:
        return KNOWN["E"] + KNOWN["A"] / np.asarray(n) ** KNOWN["alpha"] + KNOWN["B"] / np.asarray(d) ** KNOWN["beta"]

    rows: dict[str, dict[str, list]] = {"before": {}, "now": {}}
    for r in range(redraws):
        loss = truth(N, D) * np.exp(rng.normal(0, sigma, N.size))
        fresh = float(truth(n0, d0) * math.exp(rng.normal(0, sigma)))
        old = ScalingLaw(seed=r).fit(N, D, loss).bootstrap(bootstrap, extra_starts=0)
        recs = [{"key": f"k{i}", "config": {"model": f"m{n:g}", "method": {"name": "full"}, "budget": 6 * n * d,
                                            "seed": 0, "i": i},
                 "method": {"name": "full"}, "model": f"m{n:g}", "n_params": n, "tokens": d,
                 "model_flops": 6 * n * d, "final_val_loss": x} for i, (n, d, x) in enumerate(zip(N, D, loss, strict=True))]
        new = fit_laws(recs, bootstrap=bootstrap, seed=r, validate=False)["full"]
        t0 = float(truth(n0, d0))
        for name, law in (("before", old), ("now", new)):
            row, params = rows[name], law.params_ or {}
            row.setdefault("E", []).append(params["E"])
            row.setdefault("alpha", []).append(params["alpha"])
            ci = law.param_intervals(level)
            row.setdefault("E_covered", []).append(ci["E"][0] <= KNOWN["E"] <= ci["E"][1])
            row.setdefault("alpha_covered", []).append(ci["alpha"][0] <= KNOWN["alpha"] <= ci["alpha"][1])
            mlo, mhi = law.interval(n0, d0, level, kind="mean")
            row.setdefault("mean_covers_truth", []).append(bool(mlo <= t0 <= mhi))
            if name == "now":
                rlo, rhi = law.interval(n0, d0, level, kind="run")
                row.setdefault("run_covers_fresh_run", []).append(bool(rlo <= fresh <= rhi))
                row.setdefault("estimator", []).append(law.estimator)
                row.setdefault("flagged", []).append(bool(law.diagnostics_.get("warnings")))
            else:
                row.setdefault("run_covers_fresh_run", []).append(bool(mlo <= fresh <= mhi))
    out: dict[str, Any] = {"truth": KNOWN, "sigma": sigma, "redraws": redraws, "bootstrap": bootstrap,
                           "point": {"N": n0, "D": d0}}
    for name, row in rows.items():
        out[name] = {
            "E_median": float(np.median(row["E"])), "E_q10_q90": [float(x) for x in np.quantile(row["E"], [.1, .9])],
            "alpha_median": float(np.median(row["alpha"])),
            "alpha_q10_q90": [float(x) for x in np.quantile(row["alpha"], [.1, .9])],
            "E_interval_covers_truth": float(np.mean(row["E_covered"])),
            "alpha_interval_covers_truth": float(np.mean(row["alpha_covered"])),
            "mean_interval_covers_true_loss": float(np.mean(row["mean_covers_truth"])),
            # "before" had only the mean-law interval, which plan/report compared with single runs.
            "interval_covers_fresh_run": float(np.mean(row["run_covers_fresh_run"])),
        }
        if name == "now":
            out[name]["estimators"] = {e: row["estimator"].count(e) for e in sorted(set(row["estimator"]))}
            out[name]["flagged_by_diagnostics"] = float(np.mean(row["flagged"]))
    return out


def format_table(res: Mapping[str, Any]) -> str:
    cov = res["coverage"]
    lines = [f"SYNTHETIC calibration: {res['redraws']} redraws, {res['bootstrap']} bootstrap refits, "
             f"{res['level']:.0%} intervals, noise sigma {res['setup']['sigma']:.0%} of log-loss",
             "", "| interval | held-out points | n | coverage |", "|---|---|---:|---:|"]
    names = {"run": "single run (fresh seed)", "mean": "mean law (true loss)"}
    for key, c in cov.items():
        kind, where = key.split("_", 1)
        lines.append(f"| {names[kind]} | {where} | {c['n']} | {c['coverage']:.3f} |")
    lines += ["", f"median relative width of the single-run interval, extrapolated: "
                  f"{res['median_rel_width_run_extrapolated']:.3f}",
              "", "| P(optimal) bin | options | mean P(optimal) | hit rate |", "|---|---:|---:|---:|"]
    for b in res["p_optimal_bins"]:
        lines.append(f"| [{b['bin'][0]:.1f}, {b['bin'][1]:.1f}) | {b['n']} | {b['mean_p_optimal']:.3f} | "
                     f"{b['hit_rate']:.3f} |")
    lines.append(f"\nBrier score of P(optimal): {res['brier_p_optimal']:.4f}; estimators chosen: "
                 f"{res['estimators_chosen']}")
    k = res.get("known_law")
    if k:
        lines += ["", f"Known-law check (E={k['truth']['E']}, alpha={k['truth']['alpha']}, "
                      f"{k['sigma']:.0%} noise, {k['redraws']} redraws):",
                  "| | E median [q10, q90] | alpha median [q10, q90] | E CI covers | alpha CI covers | "
                  "mean CI covers true L | interval covers fresh run |", "|---|---|---|---:|---:|---:|---:|"]
        for name in ("before", "now"):
            r = k[name]
            lines.append(f"| {name} | {r['E_median']:.3g} [{r['E_q10_q90'][0]:.3g}, {r['E_q10_q90'][1]:.3g}] | "
                         f"{r['alpha_median']:.3g} [{r['alpha_q10_q90'][0]:.3g}, {r['alpha_q10_q90'][1]:.3g}] | "
                         f"{r['E_interval_covers_truth']:.2f} | {r['alpha_interval_covers_truth']:.2f} | "
                         f"{r['mean_interval_covers_true_loss']:.2f} | {r['interval_covers_fresh_run']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m embrecipe.laws.calibration", description=__doc__.split("\n\n")[0])
    ap.add_argument("--redraws", type=int, default=40)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--known-redraws", type=int, default=20, help="redraws of the known-law check (0 = skip)")
    ap.add_argument("--out", default=None, help="write the results as JSON here (e.g. benchmarks/calibration.json)")
    args = ap.parse_args(argv)
    res = calibrate(redraws=args.redraws, bootstrap=args.bootstrap, level=args.level, seed=args.seed)
    if args.known_redraws:
        res["known_law"] = known_law_check(redraws=args.known_redraws, bootstrap=args.bootstrap,
                                           level=args.level, seed=args.seed)
    res["command"] = "python -m embrecipe.laws.calibration " + " ".join(argv if argv is not None else sys.argv[1:])
    text = format_table(res)
    print(text)
    if args.out:
        path = Path(args.out)
        write_text_atomic(path, json.dumps({**res, "table": text}, indent=1))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
