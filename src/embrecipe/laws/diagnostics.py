r"""Diagnostics across a variant's runs: held-out validation, the estimator choice, the paper's trend lines.

**Validation.** :func:`leave_largest_budget_out` refits every variant without its largest budget and
reports the relative error of the predictions for the held-out runs.

**Estimator choice.** :func:`choose_estimator` picks, for one variant, the estimator of
:data:`~embrecipe.laws.estimators.ESTIMATORS` with the smaller leave-largest-budget-out error (out of
sample, not in-sample fit).

**The paper's simpler view.** :func:`best_loss_trends`: per variant, the best loss at each budget and a
straight line :math:`\log L = c_0 + c_1 \log C` fitted through them.

(A single law's own diagnostics, :func:`~embrecipe.laws.law.identifiability`, live with the law; the
run-to-run noise in :mod:`embrecipe.laws.noise`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embrecipe.errors import EmbrecipeError
from embrecipe.laws.estimators import ESTIMATORS
from embrecipe.laws.law import ScalingLaw
from embrecipe.laws.points import RunPoint, group_by_variant


def leave_largest_budget_out(points: Sequence[RunPoint], *, huber_delta: float = 1e-3,
                             min_runs: int = 6, estimators: Mapping[str, str] | None = None,
                             bootstrap: int = 0, level: float = 0.9, seed: int = 0,
                             noise: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per variant: fit without the largest budget, predict its runs, report relative errors.

    Relative error is ``(predicted - observed) / observed``. ``estimators`` maps a variant to its
    estimator (default ``huber-log``). With ``bootstrap > 0`` the held-out fit is bootstrapped and every
    held-out run gets its single-run interval at ``level`` (noise: ``noise`` if measured, else the held-out
    fit's residual scatter) and whether it was covered. A variant whose remaining runs cannot be fitted
    gets ``{"skipped": reason}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for i, (variant, pts) in enumerate(group_by_variant(points).items()):
        top = max(p.budget for p in pts)
        train = [p for p in pts if p.budget < top]
        test = [p for p in pts if p.budget == top]
        est = (estimators or {}).get(variant, "huber-log")
        try:
            law = ScalingLaw(huber_delta=huber_delta, min_runs=min_runs, estimator=est, seed=seed + i).fit(
                [p.N for p in train], [p.D for p in train], [p.loss for p in train])
        except EmbrecipeError as exc:
            out[variant] = {"held_out_budget": top, "skipped": str(exc)}
            continue
        pred = law.predict([p.N for p in test], [p.D for p in test])
        rel = [(float(pr) - p.loss) / p.loss for pr, p in zip(pred, test, strict=True)]
        runs = [{"model": p.model, "N": p.N, "D": p.D, "observed": p.loss, "predicted": float(pr),
                 "rel_error": r} for p, pr, r in zip(test, pred, rel, strict=True)]
        entry: dict[str, Any] = {
            "held_out_budget": top,
            "estimator": est,
            "n_train": len(train),
            "n_test": len(test),
            "runs": runs,
            "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))),
        }
        if bootstrap > 0:
            law.bootstrap(bootstrap)
            if noise and noise.get("sigma") is not None:
                law.noise_ = dict(noise)
            lo, hi = law.interval([p.N for p in test], [p.D for p in test], level, kind="run")
            for r, p, a_, b_ in zip(runs, test, lo, hi, strict=True):
                r.update(run_low=float(a_), run_high=float(b_), covered=bool(a_ <= p.loss <= b_))
            entry["run_interval_level"] = level
            entry["run_coverage"] = float(np.mean([r["covered"] for r in runs]))
        out[variant] = entry
    return out


def choose_estimator(points: Sequence[RunPoint], *, huber_delta: float = 1e-3,
                     min_runs: int = 6) -> dict[str, Any]:
    """Pick the estimator for one variant's runs by leave-largest-budget-out error, not in-sample fit.

    Each estimator in :data:`ESTIMATORS` is fitted without the largest budget; the one whose predictions
    of the held-out runs have the smaller mean ``|log(predicted / observed)|`` wins (ties and failures go
    to ``huber-log``, the historical default). Returns ``{"chosen", "criterion", "errors", "note"?}``.
    """
    errors: dict[str, float | None] = {}
    notes = []
    for est in ESTIMATORS:
        res = leave_largest_budget_out(points, huber_delta=huber_delta, min_runs=min_runs,
                                       estimators={p.variant: est for p in points})
        entry = next(iter(res.values()))
        if "skipped" in entry:
            errors[est] = None
            notes.append(f"{est}: {entry['skipped']}")
            continue
        errors[est] = float(np.mean([abs(math.log(r["predicted"] / r["observed"])) for r in entry["runs"]]))
    scored = {k: v for k, v in errors.items() if v is not None}
    chosen = "huber-log"
    if scored and min(scored.values()) < scored.get("huber-log", math.inf):
        chosen = min(scored, key=lambda k: scored[k])
    out: dict[str, Any] = {"chosen": chosen, "criterion": "leave-largest-budget-out mean |log(pred/obs)|",
                           "errors": errors}
    if notes:
        out["note"] = "; ".join(notes)
    return out


def best_loss_trends(points: Sequence[RunPoint]) -> dict[str, dict[str, Any]]:
    """The paper's view: per variant, the best loss at each budget and a log–log straight line through them.

    ``slope``/``intercept`` are for ``log10 L = intercept + slope * log10 C`` (None with fewer than two
    budgets). Also an entry ``"frontier"``: the best variant at each budget.
    """
    out: dict[str, dict[str, Any]] = {}
    groups = group_by_variant(points)
    for variant, pts in groups.items():
        budgets = sorted({p.budget for p in pts})
        best = [min((p for p in pts if p.budget == b), key=lambda p: p.loss) for b in budgets]
        entry: dict[str, Any] = {
            "budgets": budgets,
            "flops": [p.C for p in best],
            "best_loss": [p.loss for p in best],
            "best_model": [p.model for p in best],
            "slope": None,
            "intercept": None,
        }
        if len(budgets) >= 2:
            slope, intercept = np.polyfit(np.log10([p.C for p in best]), np.log10([p.loss for p in best]), 1)
            entry["slope"], entry["intercept"] = float(slope), float(intercept)
        out[variant] = entry
    budgets = sorted({p.budget for p in points})
    out["frontier"] = {
        "budgets": budgets,
        "best_variant": [min((p for p in points if p.budget == b), key=lambda p: p.loss).variant
                         for b in budgets],
        "best_loss": [min(p.loss for p in points if p.budget == b) for b in budgets],
    }
    return out
