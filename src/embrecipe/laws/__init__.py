"""Scaling laws of the final contrastive loss, one per fine-tuning *variant*, with bootstrap uncertainty.

- :mod:`~embrecipe.laws.estimators`: the form ``E + A/N^alpha + B/D^beta`` and its two estimators (the maths);
- :mod:`~embrecipe.laws.law`: one fitted law (:class:`ScalingLaw`): bootstrap, intervals, identifiability;
- :mod:`~embrecipe.laws.points` / :mod:`~embrecipe.laws.noise`: run points from run records, run-to-run noise;
- :mod:`~embrecipe.laws.diagnostics`: leave-largest-budget-out validation, estimator choice, best-loss trends;
- :mod:`~embrecipe.laws.card`: the law card (:class:`LawSet`); :mod:`~embrecipe.laws.fit`: :func:`fit_laws`.

    >>> from embrecipe.laws import LawSet, fit_laws
    >>> LawSet.load("laws.json").predict("full", 1e8, 1e9)  # doctest: +SKIP
"""

from embrecipe.laws.card import CARD_VERSION, LawSet
from embrecipe.laws.diagnostics import best_loss_trends, choose_estimator, leave_largest_budget_out
from embrecipe.laws.estimators import ESTIMATORS, FORM, PARAM_NAMES
from embrecipe.laws.fit import fit_laws
from embrecipe.laws.law import BOOTSTRAP_STARTS, ScalingLaw, identifiability
from embrecipe.laws.noise import run_noise
from embrecipe.laws.points import RunPoint, finite_records, run_point

__all__ = [
    "BOOTSTRAP_STARTS", "CARD_VERSION", "ESTIMATORS", "FORM", "PARAM_NAMES", "LawSet", "RunPoint", "ScalingLaw",
    "best_loss_trends", "choose_estimator", "finite_records", "fit_laws", "identifiability", "leave_largest_budget_out", "run_noise",
    "run_point",
]
