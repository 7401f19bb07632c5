r"""The law's functional form and its two estimators, as pure functions on arrays (no state, no torch).

The form (Hoffmann et al. 2022, used per method by the compute-optimal embedding study):

.. math::

    L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}

with :math:`N` the non-embedding parameters and :math:`D` the training tokens.

``huber-log`` minimises the Huber loss (``delta = 1e-3``) between :math:`\log L_{pred}` and
:math:`\log L_{obs}`,

.. math::

    \min_{e, a, b, \alpha, \beta} \sum_i \mathrm{Huber}_\delta\big(
        \mathrm{LSE}(a - \alpha \log N_i,\; b - \beta \log D_i,\; e) - \log L_i \big),

where :math:`e = \log E`, :math:`a = \log A`, :math:`b = \log B` and :math:`\alpha = e^{\tilde\alpha}`,
:math:`\beta = e^{\tilde\beta}` (all five in log-space, so every fitted quantity is positive): these are the
*internal coordinates* of every function here, with N and D divided by their geometric means. L-BFGS-B
(scipy, driven by :class:`~embrecipe.laws.law.ScalingLaw`) minimises :func:`huber_objective` with its
analytic gradient from the best points of :func:`start_grid` (screened by :func:`huber_values`).

``varpro-nnls`` (variable projection, :func:`varpro_fit`): exponents on a grid, E, A, B by non-negative least
squares on relative error at each grid cell.

Written by hand: no library fits this law, and the optimiser calls the objective thousands of times per
bootstrap, so it is kept lean.

    >>> import numpy as np
    >>> ln_l = np.log([1.0, 2.0])
    >>> start_grid(ln_l).shape
    (192, 5)
"""

from __future__ import annotations

import itertools
import math

import numpy as np

FORM = "E + A/N^alpha + B/D^beta"
PARAM_NAMES = ("E", "A", "alpha", "B", "beta")
# How the five parameters are estimated (the functional form is the same for both):
# "huber-log": L-BFGS-B on the Huber loss of log-loss from screened grid starts (Hoffmann et al.);
# "varpro-nnls": variable projection: for each (alpha, beta) on a grid, E, A, B >= 0 by non-negative least
# squares on relative error; the best grid cell is refined on a finer grid.
ESTIMATORS = ("huber-log", "varpro-nnls")

# Bounds in the internal (log, normalised) coordinates. Exponents in [0.01, 5] cover every published
# scaling exponent with a wide margin; E down to 1e-9 lets the fit say "no measurable floor".
LOG_EXP_BOUNDS = (math.log(0.01), math.log(5.0))
COEF_BOUNDS = (-40.0, 40.0)


def huber_objective(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
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


def start_grid(ln_l: np.ndarray) -> np.ndarray:
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


def huber_values(thetas: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
                  delta: float) -> np.ndarray:
    """:func:`huber_objective`'s value for many parameter rows at once (no gradient): array ``(k,)``."""
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


def varpro_fit(ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray) -> tuple[np.ndarray, float]:
    """Exponents by a coarse-to-fine grid search (3 levels, final step ~0.6 %), E/A/B by NNLS; internal
    coordinates as :func:`huber_objective` uses them (a zero coefficient maps to its lower bound)."""
    loss = np.exp(ln_l)
    alphas = betas = _VARPRO_EXPONENTS
    step = float(alphas[1] / alphas[0])
    for _ in range(3):
        ssr, coef = _varpro_grid(ln_n, ln_d, loss, alphas, betas)
        i, j = np.unravel_index(int(np.argmin(ssr)), ssr.shape)
        alpha, beta, c = float(alphas[i]), float(betas[j]), coef[i, j]
        lo, hi = math.exp(LOG_EXP_BOUNDS[0]), math.exp(LOG_EXP_BOUNDS[1])
        alphas = np.clip(np.geomspace(alpha / step, alpha * step, 9), lo, hi)
        betas = np.clip(np.geomspace(beta / step, beta * step, 9), lo, hi)
        step = step ** 0.25
    theta = np.array([
        math.log(max(c[0], 1e-9)),
        math.log(max(c[1], math.exp(COEF_BOUNDS[0]))),
        math.log(alpha),
        math.log(max(c[2], math.exp(COEF_BOUNDS[0]))),
        math.log(beta),
    ])
    return theta, float(ssr[i, j])
