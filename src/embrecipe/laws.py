r"""Scaling laws of the final contrastive loss, one per fine-tuning *variant*, with bootstrap uncertainty.

The form (Hoffmann et al. 2022, used per method by the compute-optimal embedding study):

.. math::

    L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}

with :math:`N` the non-embedding parameters and :math:`D` the training tokens. It is fitted by minimising the
Huber loss (``delta = 1e-3``) between :math:`\log L_{pred}` and :math:`\log L_{obs}`,

.. math::

    \min_{e, a, b, \alpha, \beta} \sum_i \mathrm{Huber}_\delta\big(
        \mathrm{LSE}(a - \alpha \log N_i,\; b - \beta \log D_i,\; e) - \log L_i \big),

where :math:`e = \log E`, :math:`a = \log A`, :math:`b = \log B` and :math:`\alpha = e^{\tilde\alpha}`,
:math:`\beta = e^{\tilde\beta}` (all five in log-space, so every fitted quantity is positive). N and D are
divided by their geometric means before fitting so that the optimiser sees well-scaled numbers; the reported
parameters are in original units. L-BFGS-B (scipy) with an analytic gradient runs from a grid of starts and
the best optimum is kept.

**Method hyper-parameters are separate fits.** Each LoRA rank and each block-freezing fraction is its own
*variant* (``lora-r8``, ``freeze-f0.25``: :attr:`method.key <embrecipe.methods.LoRA.key>`), fitted on its
own runs. Why not a joint law with the hyper-parameter as an extra variable? (1) The planner enumerates a
discrete grid of ranks/fractions anyway, so a continuous law in the hyper-parameter buys nothing at plan
time; (2) there is no established functional form for how rank or freeze depth enters the loss, and a wrong
one would bias every variant; (3) separate fits make each variant's uncertainty honest: a variant with few
runs gets wide bootstrap intervals instead of borrowing strength through an assumed form. The cost is more
runs per variant (at least ``min_runs``, default 6, from two or more model sizes); variants with fewer runs
are skipped and reported in :attr:`LawSet.skipped`.

**Estimators.** ``huber-log`` (above) or ``varpro-nnls`` (variable projection: exponents on a grid, E, A,
B by non-negative least squares); :func:`fit_laws` picks per variant the one with the smaller
leave-largest-budget-out error (:func:`choose_estimator`).

**Uncertainty.** :meth:`ScalingLaw.bootstrap` resamples the runs with replacement and refits (from the
full fit *and* screened grid starts, Besiroglu et al. 2024), keeping the parameter samples; predictions at
any (N, D) then come with percentile intervals of the mean law (``interval(..., kind="mean")``) or, with
the run-to-run noise :func:`run_noise` measured from repeated seeds, for a single run (``kind="run"``);
the planner computes the probability that each option is optimal from the same draws.
:func:`identifiability` flags parameters the data do not pin down; :mod:`embrecipe.calibration` checks the
intervals' coverage on synthetic laws.

**Validation.** :func:`leave_largest_budget_out` refits every variant without its largest budget and
reports the relative error of the predictions for the held-out runs.

**The paper's simpler view.** :func:`best_loss_trends`: per variant, the best loss at each budget and a
straight line :math:`\log L = c_0 + c_1 \log C` fitted through them.

Example::

    >>> import numpy as np
    >>> N, D = np.meshgrid([1e6, 1e7, 1e8], [1e7, 1e8, 1e9])
    >>> L = 0.5 + 400 / N**0.35 + 200 / D**0.3
    >>> law = ScalingLaw().fit(N.ravel(), D.ravel(), L.ravel())
    >>> round(law.params_["alpha"], 2), round(law.params_["beta"], 2)
    (0.35, 0.3)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from .errors import EmbrecipeError, InputError
from .family import family_fingerprint
from .jsonio import YAML_SUFFIXES, read_mapping, write_text_atomic
from .records import RunRecord, as_record, run_key

try:  # installed with scikit-learn (a sentence-transformers dependency); optional here
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

FORM = "E + A/N^alpha + B/D^beta"
PARAM_NAMES = ("E", "A", "alpha", "B", "beta")
CARD_VERSION = 1
# How the five parameters are estimated (the functional form is the same for both):
# "huber-log": L-BFGS-B on the Huber loss of log-loss from screened grid starts (Hoffmann et al.);
# "varpro-nnls": variable projection: for each (alpha, beta) on a grid, E, A, B >= 0 by non-negative least
# squares on relative error; the best grid cell is refined on a finer grid.
ESTIMATORS = ("huber-log", "varpro-nnls")
# Grid starts per bootstrap refit besides the full-data optimum (Besiroglu et al. 2024 restart every refit
# from a grid; screening the grid and keeping the best few is the cheap version of that).
BOOTSTRAP_STARTS = 3
_SCOUT_ITERS = 40

# Bounds in the internal (log, normalised) coordinates. Exponents in [0.01, 5] cover every published
# scaling exponent with a wide margin; E down to 1e-9 lets the fit say "no measurable floor".
_LOG_EXP_BOUNDS = (math.log(0.01), math.log(5.0))
_COEF_BOUNDS = (-40.0, 40.0)


# ------------------------------------------------------------------------------------------------------
# One law
# ------------------------------------------------------------------------------------------------------
def _as_1d(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=float).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains non-finite values")
    return arr


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """L-BFGS-B calls BLAS on 5-vectors; a multi-threaded BLAS then spends 10-100x longer spinning threads
    than computing, worst when other processes share the cores. One thread is always faster here."""
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _objective(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log-predictions and its gradient in the internal coordinates.

    Hand-rolled log-sum-exp: scipy's generic one costs ~10x more on these tiny arrays, and the optimiser
    calls this thousands of times per bootstrap.
    """
    e, a, la, b, lb = theta
    alpha, beta = math.exp(la), math.exp(lb)
    u0 = a - alpha * ln_n
    u1 = b - beta * ln_d
    m = np.maximum(np.maximum(u0, u1), e)
    x0, x1, x2 = np.exp(u0 - m), np.exp(u1 - m), np.exp(e - m)
    s = x0 + x1 + x2
    r = m + np.log(s) - ln_l
    absr = np.abs(r)
    value = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta) / s  # Huber'(r) times the softmax normaliser
    g0, g1 = dr * x0, dr * x1
    grad = np.array([
        (dr * x2).sum(),
        g0.sum(),
        -(g0 * ln_n).sum() * alpha,
        g1.sum(),
        -(g1 * ln_d).sum() * beta,
    ])
    return float(value), grad


def _start_grid(ln_l: np.ndarray) -> np.ndarray:
    """192 starting points (E as a fraction of the smallest loss, A = B, alpha, beta) in internal coordinates."""
    lmin, lmean = float(np.exp(ln_l.min())), float(np.exp(ln_l.mean()))
    rows = []
    for e_frac, alpha, beta, c_frac in itertools.product(
        (0.02, 0.3, 0.6, 0.9), (0.1, 0.25, 0.5, 1.0), (0.1, 0.25, 0.5, 1.0), (0.1, 0.5, 1.0)
    ):
        e0 = e_frac * lmin
        coef = math.log(max(c_frac * (lmean - e0) / 2.0, 1e-6))
        rows.append((math.log(e0), coef, math.log(alpha), coef, math.log(beta)))
    return np.array(rows)


def _huber_values(thetas: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
                  delta: float) -> np.ndarray:
    """:func:`_objective`'s value for many parameter rows at once (no gradient): array ``(k,)``."""
    e, a, la, b, lb = (thetas[:, i, None] for i in range(5))
    u0 = a - np.exp(la) * ln_n
    u1 = b - np.exp(lb) * ln_d
    r = np.logaddexp(np.logaddexp(u0, u1), e) - ln_l
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(axis=1)


# Variable projection. For fixed exponents the law is linear in (E, A, B); with weights 1/L the least-squares
# residual is the relative error (≈ the log residual). Written by hand because scipy's nnls solves one
# problem per call and this solves thousands (every exponent pair, every bootstrap resample): with three
# columns the NNLS optimum is the best *feasible* unconstrained solution over the 7 column subsets, which
# numpy solves for the whole grid in a few batched 3x3 systems.
_VARPRO_EXPONENTS = np.geomspace(0.01, 5.0, 40)
_SUBSETS = ((0, 1, 2), (1, 2), (0, 1), (0, 2), (0,), (1,), (2,))


def _varpro_grid(ln_n: np.ndarray, ln_d: np.ndarray, loss: np.ndarray, alphas: np.ndarray,
                 betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NNLS of ``loss ≈ E + A e^{-alpha ln_n} + B e^{-beta ln_d}`` at every (alpha, beta) pair.

    Returns the residual sum of squares ``(na, nb)`` and the coefficients ``(na, nb, 3)`` (E, A, B >= 0).
    """
    w = 1.0 / loss
    xa = np.exp(-np.outer(alphas, ln_n)) * w
    xb = np.exp(-np.outer(betas, ln_d)) * w
    na, nb = len(alphas), len(betas)
    G = np.empty((na, nb, 3, 3))
    G[..., 0, 0] = w @ w
    G[..., 0, 1] = G[..., 1, 0] = (xa @ w)[:, None]
    G[..., 0, 2] = G[..., 2, 0] = (xb @ w)[None, :]
    G[..., 1, 1] = (xa * xa).sum(axis=1)[:, None]
    G[..., 2, 2] = (xb * xb).sum(axis=1)[None, :]
    G[..., 1, 2] = G[..., 2, 1] = xa @ xb.T
    r = np.empty((na, nb, 3))
    r[..., 0] = w.sum()  # target loss * w = 1
    r[..., 1] = xa.sum(axis=1)[:, None]
    r[..., 2] = xb.sum(axis=1)[None, :]
    yy = float(len(loss))
    best_ssr = np.full((na, nb), yy)
    best_c = np.zeros((na, nb, 3))
    for subset in _SUBSETS:
        idx = np.array(subset)
        gs = G[..., idx[:, None], idx[None, :]]
        rs = r[..., idx]
        ridge = 1e-12 * np.trace(gs, axis1=-2, axis2=-1)[..., None, None] * np.eye(len(idx))
        c = np.linalg.solve(gs + ridge, rs[..., None])[..., 0]
        ssr = yy - 2 * (c * rs).sum(-1) + np.einsum("...i,...ij,...j->...", c, gs, c)
        ok = np.all(c >= 0, axis=-1) & (ssr < best_ssr)
        best_ssr = np.where(ok, ssr, best_ssr)
        full = np.zeros((na, nb, 3))
        full[..., idx] = c
        best_c = np.where(ok[..., None], full, best_c)
    return best_ssr, best_c


def _varpro_fit(ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray) -> tuple[np.ndarray, float]:
    """Exponents by a coarse-to-fine grid search (3 levels, final step ~0.6 %), E/A/B by NNLS; internal
    coordinates as :func:`_objective` uses them (a zero coefficient maps to its lower bound)."""
    loss = np.exp(ln_l)
    alphas = betas = _VARPRO_EXPONENTS
    step = float(alphas[1] / alphas[0])
    for _ in range(3):
        ssr, coef = _varpro_grid(ln_n, ln_d, loss, alphas, betas)
        i, j = np.unravel_index(int(np.argmin(ssr)), ssr.shape)
        alpha, beta, c = float(alphas[i]), float(betas[j]), coef[i, j]
        lo, hi = math.exp(_LOG_EXP_BOUNDS[0]), math.exp(_LOG_EXP_BOUNDS[1])
        alphas = np.clip(np.geomspace(alpha / step, alpha * step, 9), lo, hi)
        betas = np.clip(np.geomspace(beta / step, beta * step, 9), lo, hi)
        step = step ** 0.25
    theta = np.array([
        math.log(max(c[0], 1e-9)),
        math.log(max(c[1], math.exp(_COEF_BOUNDS[0]))),
        math.log(alpha),
        math.log(max(c[2], math.exp(_COEF_BOUNDS[0]))),
        math.log(beta),
    ])
    return theta, float(ssr[i, j])


class ScalingLaw:
    """``L(N, D) = E + A/N^alpha + B/D^beta`` fitted by Huber on log-loss (see the module docstring).

    Scikit-learn-like: :meth:`fit` returns ``self`` and sets ``params_`` (dict of E, A, alpha, B, beta in
    original units), ``residuals_`` (log observed − log predicted, per run), ``n_runs_``, ``ranges_``;
    :meth:`bootstrap` sets ``samples_`` (array ``(n_boot, 5)`` in :data:`PARAM_NAMES` order).
    """

    def __init__(self, *, huber_delta: float = 1e-3, min_runs: int = 6, seed: int = 0,
                 estimator: str = "huber-log") -> None:
        if huber_delta <= 0:
            raise InputError("huber_delta must be > 0")
        if estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
        self.estimator = estimator
        self.huber_delta = float(huber_delta)
        self.min_runs = int(min_runs)
        self.seed = int(seed)
        self.params_: dict[str, float] | None = None
        self.samples_: np.ndarray | None = None
        self.residuals_: np.ndarray | None = None
        self.n_runs_ = 0
        self.ranges_: dict[str, list[float]] = {}
        self.objective_: float | None = None
        self.warnings_: list[str] = []
        # Run-to-run noise of log-loss (sigma, source, dof): what a single run adds to the mean law.
        self.noise_: dict[str, Any] | None = None
        self.diagnostics_: dict[str, Any] = {}
        self.form_choice_: dict[str, Any] | None = None
        # Internal state kept for warm-started bootstrap refits.
        self._data: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._scale: tuple[float, float] = (1.0, 1.0)
        self._theta: np.ndarray | None = None

    # -- validation -------------------------------------------------------------------------------------
    def _check(self, N: Any, D: Any, loss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, d, l_ = _as_1d("N", N), _as_1d("D", D), _as_1d("loss", loss)
        if not (len(n) == len(d) == len(l_)):
            raise InputError(f"N, D and loss must have the same length (got {len(n)}, {len(d)}, {len(l_)})")
        if len(n) < self.min_runs:
            raise InputError(
                f"too few runs to fit {FORM}: have {len(n)}, need at least {self.min_runs} "
                "(5 free parameters); add budgets or model sizes"
            )
        if np.any(l_ <= 0):
            raise InputError("losses must be positive to fit on log-loss (found a loss <= 0)")
        if np.any(n <= 0) or np.any(d <= 0):
            raise InputError("N and D must be positive")
        if len(np.unique(n)) < 2:
            raise InputError(
                f"only one model size (N={n[0]:.3g}) among the runs: A and alpha cannot be identified; "
                "run at least two model sizes"
            )
        if len(np.unique(d)) < 2:
            raise InputError("only one token count D among the runs: B and beta cannot be identified")
        return n, d, l_

    # -- fitting ----------------------------------------------------------------------------------------
    def _starts(self, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, keep: int = 4) -> list[np.ndarray]:
        """The ``keep`` best points of a coarse grid, by objective value.

        Screening a few hundred grid points costs less than one L-BFGS run, so the optimiser only starts
        from the promising basins (the same idea as Hoffmann et al.'s grid of initialisations, cheaper).
        The screen is vectorised over the grid: bootstrap refits run it once per resample.
        """
        grid = _start_grid(ln_l)
        values = _huber_values(grid, ln_n, ln_d, ln_l, self.huber_delta)
        return [grid[i] for i in np.argsort(values, kind="stable")[:keep]]

    def _optimise(self, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, starts: Iterable[np.ndarray],
                  maxiter: int = 500) -> tuple[np.ndarray, float]:
        hi_e = float(ln_l.max()) + math.log(10.0)
        bounds = [(math.log(1e-9), hi_e), _COEF_BOUNDS, _LOG_EXP_BOUNDS, _COEF_BOUNDS, _LOG_EXP_BOUNDS]
        best_theta, best_val = None, math.inf
        for x0 in starts:
            x0 = np.clip(x0, [b[0] for b in bounds], [b[1] for b in bounds])
            res = minimize(_objective, x0, args=(ln_n, ln_d, ln_l, self.huber_delta), jac=True,
                           method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter})
            if np.isfinite(res.fun) and res.fun < best_val:
                best_theta, best_val = res.x, float(res.fun)
        if best_theta is None:
            raise EmbrecipeError("scaling-law fit failed to converge from every start")
        return best_theta, best_val

    def fit(self, N: Any, D: Any, loss: Any) -> ScalingLaw:
        """Fit on arrays of non-embedding parameters, tokens and final losses (one entry per run)."""
        n, d, l_ = self._check(N, D, loss)
        self.warnings_ = []
        if len(np.unique(n)) < 3:
            self.warnings_.append(
                "only two model sizes: the N-exponent is barely identified; trust predictions only "
                "inside the fitted range of N"
            )
        n0, d0 = float(np.exp(np.log(n).mean())), float(np.exp(np.log(d).mean()))
        self._scale = (n0, d0)
        ln_n, ln_d, ln_l = np.log(n / n0), np.log(d / d0), np.log(l_)
        self._data = (ln_n, ln_d, ln_l)
        with _single_threaded_blas():
            theta, val = self._refit(ln_n, ln_d, ln_l, None, keep=4)
        self._theta = theta
        self.objective_ = val
        self.params_ = self._to_params(theta)
        self.n_runs_ = len(n)
        self.ranges_ = {"N": [float(n.min()), float(n.max())], "D": [float(d.min()), float(d.max())]}
        self.residuals_ = ln_l - np.log(self.predict(n, d))
        self.samples_ = None
        self.diagnostics_ = identifiability(self)
        # Until a measured run-noise term is attached (fit_laws does, from repeated seeds), single-run
        # intervals use the fit's residual scatter, labelled as such.
        self.noise_ = _residual_noise(self.residuals_, len(n))
        return self

    def _to_params(self, theta: np.ndarray) -> dict[str, float]:
        e, a, la, b, lb = (float(t) for t in theta)
        alpha, beta = math.exp(la), math.exp(lb)
        n0, d0 = self._scale
        # A/(N/n0)^alpha = (A * n0^alpha) / N^alpha; kept as log to avoid overflow in extreme fits.
        return {
            "E": math.exp(e),
            "A": math.exp(a + alpha * math.log(n0)),
            "alpha": alpha,
            "B": math.exp(b + beta * math.log(d0)),
            "beta": beta,
        }

    def _refit(self, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, warm: np.ndarray | None,
               keep: int) -> tuple[np.ndarray, float]:
        """One fit in internal coordinates with this law's estimator (``warm``: an extra start)."""
        if self.estimator == "varpro-nnls":
            return _varpro_fit(ln_n, ln_d, ln_l)
        if warm is None:
            return self._optimise(ln_n, ln_d, ln_l, self._starts(ln_n, ln_d, ln_l, keep=keep))
        theta, val = self._optimise(ln_n, ln_d, ln_l, [warm])
        if keep:
            # Scout each grid start with a short L-BFGS run and polish only a scout that beats the warm
            # start: most of the multi-start's benefit (escaping the full fit's basin) at ~1/3 of its cost.
            scout, scout_val = self._optimise(ln_n, ln_d, ln_l, self._starts(ln_n, ln_d, ln_l, keep=keep),
                                              maxiter=_SCOUT_ITERS)
            if scout_val < val:
                polished, pval = self._optimise(ln_n, ln_d, ln_l, [scout])
                if pval < val:
                    theta, val = polished, pval
        return theta, val

    def bootstrap(self, n_boot: int = 200, *, seed: int | None = None,
                  extra_starts: int = BOOTSTRAP_STARTS) -> ScalingLaw:
        """Refit on ``n_boot`` resamples of the runs (with replacement); keep the parameter samples.

        Each Huber refit runs L-BFGS-B from the full-data optimum *and* from the ``extra_starts`` best
        points of the start grid, screened on that resample (Besiroglu et al. 2024: a refit that only
        warm-starts from the full fit stays in its basin and understates the uncertainty of weakly
        identified parameters such as E). The variable-projection estimator searches its exponent grid
        afresh on every resample, so it needs no starts. Resamples with a single model size or token count
        (unidentifiable) are redrawn. Sets :attr:`diagnostics_` (see :func:`identifiability`).
        """
        if self._data is None or self._theta is None:
            raise EmbrecipeError("fit the law before bootstrapping it")
        if n_boot < 1:
            self.samples_ = None
            return self
        rng = np.random.default_rng(self.seed if seed is None else seed)
        samples = np.empty((n_boot, len(PARAM_NAMES)))
        with _single_threaded_blas():
            self._bootstrap_into(samples, rng, extra_starts)
        self.samples_ = samples
        self.diagnostics_ = identifiability(self)
        return self

    def _bootstrap_into(self, samples: np.ndarray, rng: np.random.Generator, extra_starts: int) -> None:
        assert self._data is not None  # bootstrap() refuses an unfitted law
        ln_n, ln_d, ln_l = self._data
        m = len(ln_l)
        for i in range(len(samples)):
            for _ in range(100):
                idx = rng.integers(0, m, size=m)
                if len(np.unique(ln_n[idx])) >= 2 and len(np.unique(ln_d[idx])) >= 2:
                    break
            theta, _ = self._refit(ln_n[idx], ln_d[idx], ln_l[idx], self._theta, keep=extra_starts)
            p = self._to_params(theta)
            samples[i] = [p[k] for k in PARAM_NAMES]

    # -- prediction -------------------------------------------------------------------------------------
    def _require_fit(self) -> dict[str, float]:
        if self.params_ is None:
            raise EmbrecipeError("this ScalingLaw is not fitted yet")
        return self.params_

    @staticmethod
    def _eval(params: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
        """Loss for a ``(k, 5)`` array of parameter rows at ``m`` points: array ``(k, m)``."""
        E, A, alpha, B, beta = (np.atleast_2d(params)[:, i, None] for i in range(len(PARAM_NAMES)))
        return E + np.exp(np.log(A) - alpha * np.log(N)) + np.exp(np.log(B) - beta * np.log(D))

    def predict(self, N: Any, D: Any) -> np.ndarray:
        """Point prediction of the loss at each (N, D) pair (broadcast)."""
        p = self._require_fit()
        n, d = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
        out = self._eval(np.array([p[k] for k in PARAM_NAMES]), n.reshape(-1), d.reshape(-1))[0]
        return out.reshape(n.shape)

    def predict_samples(self, N: Any, D: Any) -> np.ndarray:
        """Predictions under every bootstrap sample: array ``(n_boot, *broadcast shape)``."""
        self._require_fit()
        if self.samples_ is None:
            raise EmbrecipeError("no bootstrap samples: call .bootstrap(n) after .fit(...)")
        n, d = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
        out = self._eval(self.samples_, n.reshape(-1), d.reshape(-1))
        return out.reshape((len(self.samples_), *n.shape))

    def interval(self, N: Any, D: Any, level: float = 0.9, *, kind: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """Percentile bootstrap interval of the loss at (N, D).

        ``kind="mean"``: the interval of the *mean law* (where the average over many seeds of this
        configuration lies): percentiles of the bootstrap predictions. ``kind="run"``: a *prediction
        interval for one run*: each bootstrap prediction is combined with the run-to-run noise
        :attr:`noise_` (log-loss ``+ sigma * t_dof`` quantiles, see :func:`run_noise`), so the interval is
        wider by the noise a single seed adds. Use ``"run"`` to judge one measured run, ``"mean"`` for
        the law itself.
        """
        s = self.predict_samples(N, D)
        if kind == "run":
            s = _with_run_noise(s, self.noise_)
        elif kind != "mean":
            raise InputError(f"interval kind must be 'mean' or 'run', got {kind!r}")
        q = (1 - level) / 2
        return np.quantile(s, q, axis=0), np.quantile(s, 1 - q, axis=0)

    def param_intervals(self, level: float = 0.9) -> dict[str, tuple[float, float]]:
        if self.samples_ is None:
            return {}
        q = (1 - level) / 2
        lo, hi = np.quantile(self.samples_, q, axis=0), np.quantile(self.samples_, 1 - q, axis=0)
        return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(PARAM_NAMES)}

    # -- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        p = self._require_fit()
        return {
            "form": FORM,
            "params": dict(p),
            "huber_delta": self.huber_delta,
            "n_runs": self.n_runs_,
            "ranges": self.ranges_,
            "residual_rms": float(np.sqrt(np.mean(self.residuals_ ** 2))) if self.residuals_ is not None else None,
            "warnings": list(self.warnings_),
            "estimator": self.estimator,
            "noise": self.noise_,
            "diagnostics": self.diagnostics_,
            "form_choice": self.form_choice_,
            "bootstrap": None if self.samples_ is None else {
                "order": list(PARAM_NAMES),
                "samples": [[float(f"{v:.8g}") for v in row] for row in self.samples_],
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingLaw:
        if d.get("form", FORM) != FORM:
            raise InputError(f"unsupported law form {d.get('form')!r}; this version knows {FORM!r}")
        # Cards written before the estimator choice existed were all fitted by Huber on log-loss.
        est = str(d.get("estimator") or "huber-log")
        law = cls(huber_delta=float(d.get("huber_delta", 1e-3)), estimator=est if est in ESTIMATORS else "huber-log")
        law.params_ = {k: float(d["params"][k]) for k in PARAM_NAMES}
        law.n_runs_ = int(d.get("n_runs", 0))
        law.diagnostics_ = dict(d.get("diagnostics") or {})
        law.form_choice_ = d.get("form_choice")
        law.noise_ = d.get("noise") or _residual_noise(d.get("residual_rms"), law.n_runs_, old_card=True)
        law.ranges_ = {k: [float(x) for x in v] for k, v in dict(d.get("ranges", {})).items()}
        law.warnings_ = list(d.get("warnings", []))
        boot = d.get("bootstrap")
        if boot:
            order = list(boot.get("order", PARAM_NAMES))
            arr = np.asarray(boot["samples"], dtype=float)
            law.samples_ = arr[:, [order.index(k) for k in PARAM_NAMES]]
        return law


# ------------------------------------------------------------------------------------------------------
# Run-to-run noise, single-run intervals, identifiability
# ------------------------------------------------------------------------------------------------------
def _residual_noise(residuals: Any, n_runs: int, *, old_card: bool = False) -> dict[str, Any] | None:
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


def _with_run_noise(samples: np.ndarray, noise: Mapping[str, Any] | None, k: int = 40) -> np.ndarray:
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


def identifiability(law: ScalingLaw, level: float = 0.9) -> dict[str, Any]:
    """Which parameters the data do not pin down; ``warnings`` holds one sentence per finding.

    Flags (thresholds are judgement calls, stated so they can be argued with):

    - a parameter at a bound of the fit: E ≈ 0 (below 0.1 % of the smallest loss: the data show no floor),
      an exponent at 0.01 or 5;
    - a bootstrap interval (at ``level``) spanning more than a factor 10 (E, A, B) or 3 (exponents);
    - E at its lower bound in more than 10 % of the bootstrap refits;
    - a strong trade-off: correlation of log E with log A or log B across refits beyond ±0.9 while E's
      interval spans more than a factor 1.5.
    """
    p = law.params_ or {}
    out: dict[str, Any] = {"unpinned": [], "at_bound": [], "warnings": []}
    if not p:
        return out
    lmin = float(np.exp(law._data[2].min())) if law._data is not None else None
    lo_e, hi_e = math.exp(_LOG_EXP_BOUNDS[0]), math.exp(_LOG_EXP_BOUNDS[1])
    if lmin is not None and p["E"] < 1e-3 * lmin:
        out["at_bound"].append("E")
        out["warnings"].append(f"E = {p['E']:.2g} is at its lower bound: the data show no loss floor, E is not "
                               "pinned (extrapolations to large budgets inherit this)")
    for k in ("alpha", "beta"):
        if p[k] <= lo_e * 1.01 or p[k] >= hi_e * 0.99:
            out["at_bound"].append(k)
            out["warnings"].append(f"{k} = {p[k]:.3g} is at a bound of the fit: not pinned by the data")
    if law.samples_ is not None and len(law.samples_) >= 10:
        ci = law.param_intervals(level)
        for k, limit in (("E", 10.0), ("A", 10.0), ("B", 10.0), ("alpha", 3.0), ("beta", 3.0)):
            lo, hi = ci[k]
            ratio = hi / lo if lo > 0 else math.inf
            if ratio > limit:
                out["unpinned"].append(k)
                out["warnings"].append(f"{k}: the {level:.0%} bootstrap interval [{lo:.3g}, {hi:.3g}] spans a "
                                       f"factor {ratio:.3g}: {k} is not pinned by the data")
        e = law.samples_[:, 0]
        if lmin is not None and np.mean(e < 1e-3 * lmin) > 0.1 and "E" not in out["at_bound"]:
            out["warnings"].append(f"E is at its lower bound in {np.mean(e < 1e-3 * lmin):.0%} of bootstrap refits")
        logs = np.log(np.maximum(law.samples_, 1e-300))
        for k, j in (("A", 1), ("B", 3)):
            if np.std(logs[:, 0]) > 0 and np.std(logs[:, j]) > 0:
                r = float(np.corrcoef(logs[:, 0], logs[:, j])[0, 1])
                out[f"corr_logE_log{k}"] = r
                # Correlated but tight estimates are harmless; flag the trade-off only when it leaves E loose.
                if abs(r) > 0.9 and ci["E"][1] > 1.5 * ci["E"][0]:
                    out["warnings"].append(f"strong E-{k} trade-off across bootstrap refits (corr {r:+.2f}): "
                                           f"the data fix a combination of E and {k}, not each")
    out["unpinned"] = sorted(set(out["unpinned"]))
    return out


# ------------------------------------------------------------------------------------------------------
# Run records → points
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPoint:
    """What the fit needs from one completed run."""

    key: str
    variant: str
    method: dict[str, Any]
    model: str
    N: float
    D: float
    C: float
    budget: float
    loss: float
    n_trainable: float | None = None
    shape: dict[str, Any] | None = None
    tokens_per_pair: float | None = None
    batch_size: int | None = None
    data_fingerprint: str | None = None
    # Identity of the configuration without its seed: runs sharing a cell are repeated seeds.
    cell: str | None = None
    seed: Any = None
    lr: float | None = None
    unique_pairs: int | None = None  # training pairs the run drew from (its data set, not pairs processed)


def run_point(record: RunRecord | Mapping[str, Any], *, loss_key: str | None = None) -> RunPoint:
    """Extract a :class:`RunPoint` from a run record (a :class:`~embrecipe.records.RunRecord`, or a dict of
    any layout it reads). ``loss_key`` picks the loss field (default: the final validation loss)."""
    from .flops import ModelShape
    from .methods import method_from_dict, method_to_dict

    rec = as_record(record)
    key = str(rec.key or "?")
    if rec.method is None:
        raise InputError(f"run {key}: record has no 'method'")
    method = method_from_dict(rec.method)
    # Sorted keys: the order a shape always had when read back from a store (whose JSON is key-sorted).
    shape = None if rec.shape is None else dict(sorted(rec.shape.to_dict().items()))
    n = rec.n_params
    if n is None and shape is not None:
        n = shape.get("non_embedding_params") or ModelShape.from_dict(shape).non_embedding_params
    loss = rec.loss(loss_key)
    d, c, budget = rec.tokens, rec.model_flops, rec.budget
    missing = [name for name, x in (("n_params", n), ("tokens", d), (loss_key or "final_val_loss", loss))
               if x is None]
    if c is None and budget is None:
        missing.append("model_flops/budget")
    if missing:
        hint = " (no validation loss: fit with loss_key='final_train_loss' or add validation data)" \
            if "final_val_loss" in missing else ""
        raise InputError(f"run {key}: record lacks {', '.join(missing)}{hint}")
    assert n is not None and d is not None and loss is not None  # what `missing` just ruled out
    c = float(c if c is not None else budget)  # type: ignore[arg-type]  # one of them is set (checked above)
    tpp = rec.tokens_per_pair
    if tpp is None and rec.pairs:
        tpp = float(d) / float(rec.pairs)
    elif tpp is None and rec.steps and rec.batch_size:
        tpp = float(d) / (float(rec.steps) * float(rec.batch_size))
    return RunPoint(
        key=key, variant=method.key, method=method_to_dict(method), model=str(rec.model or "?"),
        N=float(n), D=float(d), C=c, budget=float(budget) if budget is not None else c, loss=float(loss),
        n_trainable=None if rec.n_trainable is None else float(rec.n_trainable),
        shape=shape,
        tokens_per_pair=None if tpp is None else float(tpp),
        batch_size=None if rec.batch_size is None else int(rec.batch_size),
        data_fingerprint=rec.data_fingerprint,
        cell=_cell(rec, method.key),
        seed=rec.seed,
        lr=rec.lr,
        unique_pairs=rec.unique_pairs,
    )


def _cell(record: RunRecord, variant: str) -> str:
    """The run's configuration minus its seed (run-key hash of the config), or, for records without a
    config, (variant, model, budget, batch size)."""
    cfg = None if record.config is None else record.config.to_dict()
    if cfg:
        try:
            return run_key({k: x for k, x in cfg.items() if k != "seed"})
        except (TypeError, ValueError, EmbrecipeError):
            pass
    return json.dumps([variant, str(record.model), record.budget, record.batch_size], default=str)


# ------------------------------------------------------------------------------------------------------
# Validation and the simple view
# ------------------------------------------------------------------------------------------------------
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
    for i, (variant, pts) in enumerate(_group(points).items()):
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
    groups = _group(points)
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


def _group(points: Iterable[RunPoint]) -> dict[str, list[RunPoint]]:
    groups: dict[str, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(p.variant, []).append(p)
    return dict(sorted(groups.items()))


# ------------------------------------------------------------------------------------------------------
# A set of laws: what the planner consumes and what a law card stores
# ------------------------------------------------------------------------------------------------------
@dataclass
class LawSet:
    """Fitted laws keyed by variant, with everything the planner needs to plan from the card alone."""

    laws: dict[str, ScalingLaw]
    methods: dict[str, dict[str, Any]]
    ranges: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    family: list[dict[str, Any]] = field(default_factory=list)
    data_fingerprint: str | None = None
    family_fingerprint: str | None = None
    provenance: str = "unlabelled"
    tokens_per_pair: float | None = None
    batch_size: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    trends: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    created_at: str = ""
    # Run-to-run noise measured from repeated seeds (run_noise()); sigma None = not measured.
    noise: dict[str, Any] = field(default_factory=dict)
    # The recipe beyond the law (embrecipe.recipe): {variant: {model: {lr, batch_size, lr_candidates, ...}}},
    # how the LRs were chosen, the batch sizes the runs used and the training data's size.
    recipe: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lr_protocol: str | None = None
    batch_sizes: list[int] = field(default_factory=list)
    unique_pairs: int | None = None
    unique_tokens: float | None = None
    effective_data: bool = False  # repeated-data runs were fitted at the effective tokens D'

    def __post_init__(self) -> None:
        if not self.laws:
            raise InputError("a LawSet needs at least one fitted law")
        if self.family and self.family_fingerprint is None:
            self.family_fingerprint = family_fingerprint(m.get("shape") for m in self.family)

    @property
    def variants(self) -> list[str]:
        return list(self.laws)

    def predict(self, variant: str, N: Any, D: Any) -> np.ndarray:
        return self[variant].predict(N, D)

    def __getitem__(self, variant: str) -> ScalingLaw:
        try:
            return self.laws[variant]
        except KeyError:
            raise InputError(f"no law for variant {variant!r}; have: {', '.join(self.laws)}") from None

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "card_version": CARD_VERSION,
            "kind": "embrecipe-law-card",
            "embrecipe_version": __version__,
            "created_at": self.created_at,
            "provenance": self.provenance,
            "form": FORM,
            "data_fingerprint": self.data_fingerprint,
            "family_fingerprint": self.family_fingerprint,
            "family": self.family,
            "tokens_per_pair": self.tokens_per_pair,
            "batch_size": self.batch_size,
            "variants": {
                v: {"method": self.methods[v], **law.to_dict(), "ranges": self.ranges.get(v, law.ranges_)}
                for v, law in self.laws.items()
            },
            "batch_sizes": list(self.batch_sizes),
            "unique_pairs": self.unique_pairs,
            "unique_tokens": self.unique_tokens,
            "effective_data": self.effective_data,
            "lr_protocol": self.lr_protocol,
            "recipe": self.recipe,
            "skipped": self.skipped,
            "validation": self.validation,
            "trends": self.trends,
            "points": self.points,
            "noise": self.noise,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LawSet:
        if d.get("kind") != "embrecipe-law-card":
            raise InputError("not an embrecipe law card (missing kind: embrecipe-law-card)")
        if int(d.get("card_version", 0)) > CARD_VERSION:
            raise InputError(f"law card version {d.get('card_version')} is newer than this embrecipe reads")
        variants = d.get("variants") or {}
        return cls(
            laws={v: ScalingLaw.from_dict(x) for v, x in variants.items()},
            methods={v: dict(x["method"]) for v, x in variants.items()},
            ranges={v: dict(x.get("ranges", {})) for v, x in variants.items()},
            family=list(d.get("family") or []),
            data_fingerprint=d.get("data_fingerprint"),
            family_fingerprint=d.get("family_fingerprint"),
            provenance=str(d.get("provenance", "unlabelled")),
            tokens_per_pair=d.get("tokens_per_pair"),
            batch_size=d.get("batch_size"),
            skipped=dict(d.get("skipped") or {}),
            validation=dict(d.get("validation") or {}),
            trends=dict(d.get("trends") or {}),
            points=dict(d.get("points") or {}),
            created_at=str(d.get("created_at", "")),
            noise=dict(d.get("noise") or {}),
            # absent from cards written before the LR was part of the recipe: they still load
            recipe={v: dict(x) for v, x in dict(d.get("recipe") or {}).items()},
            lr_protocol=d.get("lr_protocol"),
            batch_sizes=[int(b) for b in (d.get("batch_sizes") or ([d["batch_size"]] if d.get("batch_size") else []))],
            unique_pairs=None if d.get("unique_pairs") is None else int(d["unique_pairs"]),
            unique_tokens=None if d.get("unique_tokens") is None else float(d["unique_tokens"]),
            effective_data=bool(d.get("effective_data", False)),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the law card: JSON, or YAML when the name ends in .yaml/.yml."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in YAML_SUFFIXES:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=1)
        return write_text_atomic(path, text)  # a reader never sees half a card

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LawSet:
        return cls.from_dict(read_mapping(path, "law card"))


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

    from .recipe import LR_PROTOCOL, keep_selected_lr

    runs = [as_record(r) for r in records]
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
    groups = _group(points)
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
        # Actual FLOPs stop just short of the nominal budget (whole steps); span both so that planning at a
        # budget the sweep ran is not reported as extrapolation.
        # Likewise D: the tokens the nominal budget affords (cost = C / D) as well as those processed.
        cs = [p.C for p in pts] + [p.budget for p in pts]
        ds = [p.D for p in pts] + [p.D * p.budget / p.C for p in pts]
        ranges[variant] = {**law.ranges_, "C": [min(cs), max(cs)], "D": [min(ds), max(ds)]}
    if not laws:
        detail = "; ".join(f"{v}: {why}" for v, why in skipped.items())
        raise InputError(f"no variant could be fitted ({detail})")
    methods = {v: methods[v] for v in laws}

    # The family: what the caller gives, else every distinct model shape the runs recorded.
    fam: list[dict[str, Any]] = [dict(m) for m in family] if family else []
    if not fam:
        seen: dict[str, dict[str, Any]] = {}
        for p in points:
            if p.shape is not None and p.model not in seen:
                name = str(p.shape.get("name") or p.model)
                # Trainer records name models by their path; the planner's tables want the short name.
                seen[p.model] = {"name": Path(name).name or name, "path": p.model, "shape": p.shape}
        fam = sorted(seen.values(), key=lambda m: float(m["shape"].get("non_embedding_params") or 0))
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


def _with_effective_data(points: list[RunPoint]) -> list[RunPoint]:
    """Runs that repeated their data are fitted at Muennighoff et al.'s effective tokens D' (embrecipe.recipe),
    so that the law's D means fresh-data-equivalent tokens and the planner can apply the same discount."""
    import dataclasses

    from .recipe import effective_tokens

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
