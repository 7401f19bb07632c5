r"""Run-to-run noise of the final log-loss: what one training run adds around the mean law.

Measured from repeated seeds (:func:`run_noise`), or, without them, the fit's residual scatter as a labelled
fallback (:func:`residual_noise`); :func:`with_run_noise` widens a law's bootstrap predictions by it, which
turns the mean law's interval into a prediction interval for a single run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embrecipe.errors import EmbrecipeError
from embrecipe.laws.estimators import PARAM_NAMES
from embrecipe.laws.points import RunPoint


def residual_noise(residuals: Any, n_runs: int, *, old_card: bool = False) -> dict[str, Any] | None:
    """Fallback noise term: the fit's residual scatter of log-loss, ``sqrt(sum r^2 / (n - 5))``.

    It mixes run-to-run noise with misfit of the form, so it is labelled as such (``source``).
    ``residuals`` may be the residual array, or (old cards) the stored rms.
    """
    if residuals is None:
        return None
    dof = max(int(n_runs) - len(PARAM_NAMES), 1)
    if np.ndim(residuals) == 0:  # a card's residual_rms: sum r^2 = n * rms^2
        sigma = float(residuals) * math.sqrt(max(int(n_runs), 1) / dof)
    else:
        sigma = float(np.sqrt(np.sum(np.square(residuals)) / dof))
    source = "fit residual scatter (no repeated seeds; includes misfit of the form)"
    if old_card:
        source = "fit residual scatter (card written before the noise term existed)"
    return {"sigma": sigma, "dof": dof, "source": source, "measured": False}


def run_noise(points: Sequence[RunPoint], *, min_seeds: int = 3, min_cells: int = 3) -> dict[str, Any]:
    r"""Run-to-run noise of log-loss, measured from repeated seeds.

    A *cell* is a configuration (every config key but ``seed``, see :attr:`RunPoint.cell`). Over the cells
    with at least ``min_seeds`` runs, the pooled variance

    .. math::  s^2 = \frac{\sum_c \sum_{i \in c} (\log L_{ci} - \overline{\log L_c})^2}{\sum_c (n_c - 1)}

    is the noise a single run adds around its configuration's mean (pooled over variants: it is a property
    of the training process and data, and pooling keeps the number of repeated runs affordable). Needs
    ``min_cells`` such cells; otherwise ``sigma`` is None and ``note`` says why (callers then fall back to the
    fit's residual scatter, labelled as such).

    >>> pts = [RunPoint(key=f"{c}{s}", variant="full", method={}, model="m", N=1.0, D=1.0, C=1.0,
    ...                 budget=1.0, loss=1.0 + 0.01 * s, cell=c) for c in "abc" for s in (0, 1, 2)]
    >>> round(run_noise(pts)["sigma"], 4)
    0.0099
    """
    cells: dict[str, list[float]] = {}
    for p in points:
        if p.cell is not None:
            cells.setdefault(p.cell, []).append(math.log(p.loss))
    used = {c: x for c, x in cells.items() if len(x) >= min_seeds}
    out: dict[str, Any] = {"sigma": None, "dof": 0, "cells": len(used), "runs": sum(map(len, used.values())),
                           "min_seeds": min_seeds, "min_cells": min_cells, "measured": False}
    if len(used) < min_cells:
        out["note"] = (f"no run-noise measurement: {len(used)} configuration(s) with >= {min_seeds} seeds, "
                       f"need >= {min_cells}; single-run intervals fall back to the fit's residual scatter")
        return out
    ss = sum(float(np.sum((np.asarray(x) - np.mean(x)) ** 2)) for x in used.values())
    dof = sum(len(x) - 1 for x in used.values())
    out.update(sigma=math.sqrt(ss / dof), dof=dof, measured=True,
               source=f"repeated seeds ({len(used)} configurations, {out['runs']} runs)")
    return out


def with_run_noise(samples: np.ndarray, noise: Mapping[str, Any] | None, k: int = 40) -> np.ndarray:
    """Mean-law bootstrap predictions ⊕ run noise: each sample times ``exp(sigma * t_q)`` for ``k``
    evenly spaced quantiles ``t_q`` of Student's t with the noise estimate's degrees of freedom (a noise
    sigma estimated from few runs is itself uncertain; t widens the interval accordingly). Deterministic:
    quantiles, not random draws. Returns ``(n_boot * k, ...)``."""
    if not noise or noise.get("sigma") is None:
        raise EmbrecipeError("this law has no run-noise term: single-run intervals are unavailable")
    from scipy.stats import t as student_t

    z = student_t.ppf((np.arange(k) + 0.5) / k, max(float(noise.get("dof") or 1), 1.0))
    factor = np.exp(float(noise["sigma"]) * z).reshape((1, k) + (1,) * (samples.ndim - 1))
    return (samples[:, None] * factor).reshape((samples.shape[0] * k, *samples.shape[1:]))
