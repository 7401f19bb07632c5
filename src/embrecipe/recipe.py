r"""The parts of a recipe that are not the law: the learning rate chosen per (variant, model size), and the
data actually seen when a plan repeats its data.

Hand-written: no library selects an LR from a sweep's runs or discounts repeated data; both are a few lines of
arithmetic over run records, kept pure (no torch) so they are testable and shared by the sweep, the fit and the
planner.

**LR protocol** (``docs/sweep.md``): the sweep runs every LR of a log-spaced grid at the lowest rung(s) of the
budget ladder, per (model, variant); :func:`select_lrs` picks, per (model, variant), the LR with the lowest mean
log held-out loss over the searched budgets (seeds averaged first); the upper rungs train at that LR only, and
the fit keeps only the runs at the chosen LR (:func:`keep_selected_lr`), so every law is fitted on one LR per
(model, variant) and the card can name it.

**Effective data** (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5): with
:math:`U` unique tokens seen :math:`1 + R` times (:math:`R = D/U - 1` repetitions),

.. math::

    D' = U + U R^* \big(1 - e^{-R/R^*}\big),

so repeated tokens are worth less and less; :math:`D' = D` for :math:`D \le U`, and :math:`D' \to U(1 + R^*)`
as :math:`R \to \infty`. We use their fitted :math:`R^*_D = 15.4` (pre-training of decoder LMs on web text):
no contrastive-fine-tuning estimate exists, and a store with repeated-epoch runs at several R could refit it.

Example::

    >>> round(effective_tokens(4e6, 1e6) / 1e6, 3)   # 4 epochs: 3 repetitions worth 2.726 fresh epochs
    3.726
    >>> select_lrs([("m", "full", 1e12, 1e-3, 0.9), ("m", "full", 1e12, 3e-3, 0.8), ("m", "full", 1e12, 1e-2, 1.1)])
    {('m', 'full'): 0.003}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

R_STAR = 15.4  # Muennighoff et al. 2023, fitted R*_D

LR_PROTOCOL = ("lr grid at the lowest rung(s) per (model, variant); the LR with the lowest mean log held-out "
               "loss there is used at every upper rung; the fit keeps only the chosen LR's runs")


def effective_tokens(tokens: float, unique_tokens: float | None, r_star: float = R_STAR) -> float:
    """Muennighoff et al.'s effective data :math:`D'` for ``tokens`` drawn from ``unique_tokens`` (see module)."""
    d = float(tokens)
    if unique_tokens is None or not unique_tokens > 0 or d <= unique_tokens:
        return d
    u = float(unique_tokens)
    r = d / u - 1.0
    return u + u * r_star * (1.0 - math.exp(-r / r_star))


def epochs(tokens: float, unique_tokens: float | None) -> float | None:
    """Passes over the data a run of ``tokens`` makes (None when the data size is unknown)."""
    if unique_tokens is None or not unique_tokens > 0:
        return None
    return float(tokens) / float(unique_tokens)


def log_spaced_lrs(base: float, factors: Sequence[float]) -> list[float]:
    """``base × factor`` for each factor, rounded to 4 significant digits (stable run keys)."""
    return sorted({float(f"{base * f:.4g}") for f in factors})


def select_lrs(runs: Iterable[tuple[str, str, float, float | None, float | None]]) -> dict[tuple[str, str], float]:
    """Per (model, variant): the LR with the lowest mean log loss over the budgets where several LRs ran.

    ``runs``: ``(model, variant, budget, lr, loss)``; a run with ``loss`` None or non-finite (failed, diverged)
    makes its LR ineligible at that (model, variant). Seeds at the same (budget, lr) are averaged first; an LR
    missing at one of the searched budgets is scored on those it has. Ties go to the smaller LR. Groups with a
    single LR are returned as that LR.
    """
    groups: dict[tuple[str, str], dict[float, dict[float, list[float]]]] = {}
    bad: set[tuple[str, str, float]] = set()
    for model, variant, budget, lr, loss in runs:
        if lr is None:
            continue
        g = groups.setdefault((model, variant), {})
        if loss is None or not math.isfinite(float(loss)) or float(loss) <= 0:
            bad.add((model, variant, float(lr)))
            continue
        g.setdefault(float(lr), {}).setdefault(float(budget), []).append(math.log(float(loss)))
    out: dict[tuple[str, str], float] = {}
    for key, by_lr in groups.items():
        eligible = {lr: b for lr, b in by_lr.items() if (*key, lr) not in bad}
        if not eligible:
            continue
        budget_lrs: dict[float, int] = {}
        for b in eligible.values():
            for budget in b:
                budget_lrs[budget] = budget_lrs.get(budget, 0) + 1
        searched = {budget for budget, n in budget_lrs.items() if n > 1} or set(budget_lrs)

        def score(lr: float, _e: dict[float, dict[float, list[float]]] = eligible,
                  _s: set[float] = searched) -> float:
            vals = [sum(v) / len(v) for budget, v in _e[lr].items() if budget in _s]
            return sum(vals) / len(vals) if vals else math.inf

        out[key] = min(sorted(eligible), key=score)
    return out


def keep_selected_lr(points: Sequence[Any]) -> tuple[list[Any], dict[str, dict[str, dict[str, Any]]]]:
    """Points (with ``model``, ``variant``, ``budget``, ``lr``, ``loss``, ``batch_size``) → the ones at each
    (model, variant)'s selected LR, and the card's ``recipe`` section ``{variant: {model: {lr, batch_size,
    lr_candidates, lr_searched_at}}}``. Points without an LR are kept as they are."""
    chosen = select_lrs((p.model, p.variant, p.budget, p.lr, p.loss) for p in points)
    kept: list[Any] = []
    recipe: dict[str, dict[str, dict[str, Any]]] = {}
    for p in points:
        lr = chosen.get((p.model, p.variant))
        if p.lr is not None and lr is not None and not math.isclose(float(p.lr), lr, rel_tol=1e-9):
            continue
        kept.append(p)
    for (model, variant), lr in chosen.items():
        mine = [p for p in points if p.model == model and p.variant == variant and p.lr is not None]
        lrs = sorted({float(p.lr) for p in mine})
        at = sorted({p.budget for p in mine if sum(1 for q in mine if q.budget == p.budget
                                                     and q.lr != p.lr) > 0})
        bss = sorted({int(p.batch_size) for p in mine if p.batch_size})
        recipe.setdefault(variant, {})[model] = {
            "lr": lr, "batch_size": bss[0] if len(bss) == 1 else bss or None,
            "lr_candidates": lrs, "lr_searched_at": at,
        }
    return kept, recipe


def _lr_origin(entry: dict[str, Any]) -> str:
    """Whether the card's LR for one (variant, size) won an LR search or is simply the one its runs used."""
    tried = entry.get("lr_candidates") or []
    if len(tried) > 1:
        return f"selected for this variant and size from {len(tried)} LRs"
    return "the LR this variant and size was trained at; no LR search"


def recipe_lr(recipe: dict[str, dict[str, dict[str, Any]]], variant: str, model: str,
              n_params: float | None = None, sizes: dict[str, float] | None = None) -> tuple[float | None, str]:
    """The LR a card records for (variant, model), with a note: exact, nearest fitted size, or unknown."""
    by_model = recipe.get(variant) or {}
    for key in (model, model.rsplit("/", 1)[-1]):
        if key in by_model and by_model[key].get("lr") is not None:
            return float(by_model[key]["lr"]), _lr_origin(by_model[key])
    for key, entry in by_model.items():  # cards name models by path; the family by short name
        if key.rsplit("/", 1)[-1] == model and entry.get("lr") is not None:
            return float(entry["lr"]), _lr_origin(entry)
    if by_model and n_params and sizes:
        known = [(abs(math.log(sizes[k] / n_params)), k) for k in by_model if sizes.get(k)]
        if known:
            k = min(known)[1]
            return float(by_model[k]["lr"]), f"not fitted at this size: the LR of the nearest fitted size ({k})"
    return None, "unknown (the card records no LR for this variant)"
