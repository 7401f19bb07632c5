r"""Fitting a law card from run records: :func:`fit_laws` (one :class:`~embrecipe.laws.law.ScalingLaw` a variant).

**Method hyper-parameters are separate fits.** Each LoRA rank and each block-freezing fraction is its own
*variant* (``lora-r8``, ``freeze-f0.25``: :attr:`method.key <embrecipe.models.methods.LoRA.key>`), fitted on its
own runs. Why not a joint law with the hyper-parameter as an extra variable? (1) The planner enumerates a
discrete grid of ranks/fractions anyway, so a continuous law in the hyper-parameter buys nothing at plan
time; (2) there is no established functional form for how rank or freeze depth enters the loss, and a wrong
one would bias every variant; (3) separate fits make each variant's uncertainty honest: a variant with few
runs gets wide bootstrap intervals instead of borrowing strength through an assumed form. The cost is more
runs per variant (at least ``min_runs``, default 6, from two or more model sizes); variants with fewer runs
are skipped and reported in :attr:`LawSet.skipped <embrecipe.laws.card.LawSet.skipped>`.

**Estimators.** ``huber-log`` or ``varpro-nnls`` (:mod:`embrecipe.laws.estimators`); :func:`fit_laws` picks
per variant the one with the smaller leave-largest-budget-out error
(:func:`~embrecipe.laws.diagnostics.choose_estimator`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embrecipe.errors import InputError
from embrecipe.laws.card import LawSet
from embrecipe.laws.diagnostics import best_loss_trends, choose_estimator, leave_largest_budget_out
from embrecipe.laws.estimators import ESTIMATORS
from embrecipe.laws.law import BOOTSTRAP_STARTS, ScalingLaw
from embrecipe.laws.noise import run_noise
from embrecipe.laws.points import RunPoint, finite_records, group_by_variant, run_point
from embrecipe.models.family import family_fingerprint
from embrecipe.runs.records import RunRecord


def fit_laws(
    records: Iterable[RunRecord | Mapping[str, Any]],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    loss_key: str | None = None,
    huber_delta: float = 1e-3,
    min_runs: int = 6,
    provenance: str = "unlabelled",
    family: Sequence[Mapping[str, Any]] | None = None,
    validate: bool = True,
    estimator: str = "auto",
    extra_starts: int = BOOTSTRAP_STARTS,
    effective_data: bool = False,
) -> LawSet:
    """Group completed run records by variant and fit one :class:`ScalingLaw` each (plus bootstrap).

    ``estimator``: ``"auto"`` picks, per variant, the estimator with the smaller leave-largest-budget-out
    error (:func:`choose_estimator`, recorded as ``form_choice`` in the card), or one of
    :data:`ESTIMATORS` for all. Bootstrap refits use ``extra_starts`` grid starts each. The run-noise
    term is measured from repeated seeds (:func:`run_noise`) and attached to every law; without repeated
    seeds each law keeps its own residual scatter as the (labelled) fallback.

    Variants with too few runs or a single model size are skipped (reason in ``LawSet.skipped``); if no
    variant can be fitted the error lists why for each. Where several LRs ran per (model, variant) (the
    sweep's ``lr_search``), only the chosen LR's runs are fitted (:func:`embrecipe.recipe.keep_selected_lr`).
    ``effective_data``: fit runs that repeated their data at Muennighoff et al.'s effective tokens
    (:func:`embrecipe.recipe.effective_tokens`) instead of the tokens processed.
    """
    if estimator != "auto" and estimator not in ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; choose auto or one of {', '.join(ESTIMATORS)}")

    from embrecipe.recipe import LR_PROTOCOL, keep_selected_lr

    runs, _ = finite_records(records, loss_key)  # failed runs and non-finite losses are left out
    points = [run_point(r, loss_key=loss_key) for r in runs]
    if not points:
        raise InputError("no completed runs to fit")
    all_lrs = {(p.model, p.variant, p.lr) for p in points if p.lr is not None}
    # One LR per (model, variant): the one the sweep's LR search chose (the others' runs are not fitted).
    points, recipe = keep_selected_lr(points)
    searched = len(all_lrs) > len({(m, v) for m, v, _ in all_lrs})
    if effective_data:
        points = _with_effective_data(points)
    if any(r.synthetic for r in runs) and "SYNTHETIC" not in provenance:
        # Fake-trainer runs must never pass for measurements, whatever label the caller chose.
        provenance = f"SYNTHETIC (fake trainer, not measurements): {provenance}"
    laws: dict[str, ScalingLaw] = {}
    skipped: dict[str, str] = {}
    methods: dict[str, dict[str, Any]] = {}
    ranges: dict[str, dict[str, list[float]]] = {}
    groups = group_by_variant(points)
    noise = run_noise(points)
    chosen: dict[str, str] = {}
    for i, (variant, pts) in enumerate(groups.items()):
        methods[variant] = pts[0].method
        choice = None
        if estimator == "auto":
            choice = choose_estimator(pts, huber_delta=huber_delta, min_runs=min_runs)
        chosen[variant] = choice["chosen"] if choice else estimator
        try:
            law = ScalingLaw(huber_delta=huber_delta, min_runs=min_runs, seed=seed + i,
                             estimator=chosen[variant]).fit(
                [p.N for p in pts], [p.D for p in pts], [p.loss for p in pts])
        except InputError as exc:
            skipped[variant] = str(exc)
            continue
        law.form_choice_ = choice
        if noise["sigma"] is not None:
            law.noise_ = {k: noise[k] for k in ("sigma", "dof", "source", "measured")}
        if bootstrap:
            law.bootstrap(bootstrap, extra_starts=extra_starts)
        laws[variant] = law
        ranges[variant] = _fitted_ranges(law, pts)
    if not laws:
        detail = "; ".join(f"{v}: {why}" for v, why in skipped.items())
        raise InputError(f"no variant could be fitted ({detail})")
    methods = {v: methods[v] for v in laws}

    # The family: what the caller gives, else every distinct model shape the runs recorded.
    fam: list[dict[str, Any]] = [dict(m) for m in family] if family else []
    if not fam:
        fam = _family_of_runs(points)
    tpps = [p.tokens_per_pair for p in points if p.tokens_per_pair]
    bss = [p.batch_size for p in points if p.batch_size]
    uniq = [p.unique_pairs for p in points if p.unique_pairs]
    fps = sorted({p.data_fingerprint for p in points if p.data_fingerprint})
    return LawSet(
        laws=laws,
        methods=methods,
        ranges=ranges,
        family=fam,
        data_fingerprint=fps[0] if len(fps) == 1 else (",".join(fps) if fps else None),
        family_fingerprint=family_fingerprint(m.get("shape") for m in fam) if fam else None,
        provenance=provenance,
        tokens_per_pair=float(np.mean(tpps)) if tpps else None,
        batch_size=max(set(bss), key=bss.count) if bss else None,
        skipped=skipped,
        validation=leave_largest_budget_out(points, huber_delta=huber_delta, min_runs=min_runs, estimators=chosen,
                                            bootstrap=min(bootstrap, 50), seed=seed,
                                            noise=noise if noise["sigma"] is not None else None)
        if validate else {},
        trends=best_loss_trends(points),
        points={v: [_point_summary(p, laws.get(v)) for p in pts] for v, pts in groups.items()},
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        noise=noise,
        recipe={v: r for v, r in recipe.items() if v in laws},
        lr_protocol=LR_PROTOCOL if searched else ("single LR per (model, variant): as trained" if recipe else None),
        batch_sizes=sorted(set(bss)),
        unique_pairs=max(set(uniq), key=uniq.count) if uniq else None,
        unique_tokens=(max(set(uniq), key=uniq.count) * float(np.mean(tpps))) if uniq and tpps else None,
        effective_data=effective_data,
    )


def _fitted_ranges(law: ScalingLaw, pts: Sequence[RunPoint]) -> dict[str, list[float]]:
    """The law's fitted N and D ranges, with C and D widened to the nominal budgets the runs were given."""
    # Actual FLOPs stop just short of the nominal budget (whole steps); span both so that planning at a
    # budget the sweep ran is not reported as extrapolation.
    # Likewise D: the tokens the nominal budget affords (cost = C / D) as well as those processed.
    cs = [p.C for p in pts] + [p.budget for p in pts]
    ds = [p.D for p in pts] + [p.D * p.budget / p.C for p in pts]
    return {**law.ranges_, "C": [min(cs), max(cs)], "D": [min(ds), max(ds)]}


def _family_of_runs(points: Sequence[RunPoint]) -> list[dict[str, Any]]:
    """Every distinct model shape the runs recorded, smallest first (``{"name", "path", "shape"}`` each)."""
    seen: dict[str, dict[str, Any]] = {}
    for p in points:
        if p.shape is not None and p.model not in seen:
            name = str(p.shape.get("name") or p.model)
            # Trainer records name models by their path; the planner's tables want the short name.
            seen[p.model] = {"name": Path(name).name or name, "path": p.model, "shape": p.shape}
    return sorted(seen.values(), key=lambda m: float(m["shape"].get("non_embedding_params") or 0))


def _with_effective_data(points: list[RunPoint]) -> list[RunPoint]:
    """Runs that repeated their data are fitted at Muennighoff et al.'s effective tokens D' (embrecipe.recipe),
    so that the law's D means fresh-data-equivalent tokens and the planner can apply the same discount."""
    import dataclasses

    from embrecipe.recipe import effective_tokens

    out = []
    for p in points:
        if p.unique_pairs and p.tokens_per_pair:
            d_eff = effective_tokens(p.D, p.unique_pairs * p.tokens_per_pair)
            if d_eff < p.D:
                p = dataclasses.replace(p, D=d_eff)
        out.append(p)
    return out


def _point_summary(p: RunPoint, law: ScalingLaw | None) -> dict[str, Any]:
    d = {"key": p.key, "model": p.model, "N": p.N, "D": p.D, "C": p.C, "budget": p.budget, "loss": p.loss}
    if law is not None:
        d["predicted"] = float(law.predict(p.N, p.D))
    return d
