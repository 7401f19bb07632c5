r"""One scaling law, :class:`ScalingLaw`: fit, bootstrap, predict with intervals, (de)serialise, diagnose.

The law and its estimators are in :mod:`embrecipe.laws.estimators`; this module holds the fitted object.
N and D are divided by their geometric means before fitting so that the optimiser sees well-scaled numbers;
the reported parameters are in original units. L-BFGS-B (scipy) with an analytic gradient runs from a grid
of starts and the best optimum is kept.

**Uncertainty.** :meth:`ScalingLaw.bootstrap` resamples the runs with replacement and refits (from the
full fit *and* screened grid starts, Besiroglu et al. 2024), keeping the parameter samples; predictions at
any (N, D) then come with percentile intervals of the mean law (``interval(..., kind="mean")``) or, with
the run-to-run noise :func:`~embrecipe.laws.noise.run_noise` measured from repeated seeds, for a single run
(``kind="run"``); the planner computes the probability that each option is optimal from the same draws.
:func:`identifiability` flags parameters the data do not pin down; :mod:`embrecipe.laws.calibration` checks the
intervals' coverage on synthetic laws.

Example::

    >>> import numpy as np
    >>> N, D = np.meshgrid([1e6, 1e7, 1e8], [1e7, 1e8, 1e9])
    >>> L = 0.5 + 400 / N**0.35 + 200 / D**0.3
    >>> law = ScalingLaw().fit(N.ravel(), D.ravel(), L.ravel())
    >>> round(law.params_["alpha"], 2), round(law.params_["beta"], 2)
    (0.35, 0.3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy.optimize import minimize

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.laws.estimators import (
    COEF_BOUNDS,
    ESTIMATORS,
    FORM,
    LOG_EXP_BOUNDS,
    PARAM_NAMES,
    huber_objective,
    huber_values,
    start_grid,
    varpro_fit,
)
from embrecipe.laws.noise import residual_noise, with_run_noise

try:  # installed with scikit-learn (a sentence-transformers dependency); optional here
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

# Grid starts per bootstrap refit besides the full-data optimum (Besiroglu et al. 2024 restart every refit
# from a grid; screening the grid and keeping the best few is the cheap version of that).
BOOTSTRAP_STARTS = 3
_SCOUT_ITERS = 40


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


class ScalingLaw:
    """``L(N, D) = E + A/N^alpha + B/D^beta`` fitted by Huber on log-loss (:mod:`embrecipe.laws.estimators`).

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
        grid = start_grid(ln_l)
        values = huber_values(grid, ln_n, ln_d, ln_l, self.huber_delta)
        return [grid[i] for i in np.argsort(values, kind="stable")[:keep]]

    def _optimise(self, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, starts: Iterable[np.ndarray],
                  maxiter: int = 500) -> tuple[np.ndarray, float]:
        hi_e = float(ln_l.max()) + math.log(10.0)
        bounds = [(math.log(1e-9), hi_e), COEF_BOUNDS, LOG_EXP_BOUNDS, COEF_BOUNDS, LOG_EXP_BOUNDS]
        best_theta, best_val = None, math.inf
        for x0 in starts:
            x0 = np.clip(x0, [b[0] for b in bounds], [b[1] for b in bounds])
            res = minimize(huber_objective, x0, args=(ln_n, ln_d, ln_l, self.huber_delta), jac=True,
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
        self.noise_ = residual_noise(self.residuals_, len(n))
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
            return varpro_fit(ln_n, ln_d, ln_l)
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
        :attr:`noise_` (log-loss ``+ sigma * t_dof`` quantiles, see :func:`~embrecipe.laws.noise.run_noise`), so the interval is
        wider by the noise a single seed adds. Use ``"run"`` to judge one measured run, ``"mean"`` for
        the law itself.
        """
        s = self.predict_samples(N, D)
        if kind == "run":
            s = with_run_noise(s, self.noise_)
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
        law.noise_ = d.get("noise") or residual_noise(d.get("residual_rms"), law.n_runs_, old_card=True)
        law.ranges_ = {k: [float(x) for x in v] for k, v in dict(d.get("ranges", {})).items()}
        law.warnings_ = list(d.get("warnings", []))
        boot = d.get("bootstrap")
        if boot:
            order = list(boot.get("order", PARAM_NAMES))
            arr = np.asarray(boot["samples"], dtype=float)
            law.samples_ = arr[:, [order.index(k) for k in PARAM_NAMES]]
        return law


# What the data pin down of one fitted law (ScalingLaw.fit and .bootstrap record it in diagnostics_)
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
    lo_e, hi_e = math.exp(LOG_EXP_BOUNDS[0]), math.exp(LOG_EXP_BOUNDS[1])
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
