r"""The adaptive experimental design: spend FLOPs on the runs that change the recipe, stop when it is known.

Pure, seeded and torch-free: :func:`next_step` maps the finished runs (plus the grid's options, the target
budget and the settings) to the next runs to train, the configurations it deprioritises, the current
recipe, its probability of being optimal and its expected regret — and whether to stop and why. A live
sweep (:mod:`embrecipe.sweep.orchestration`), its resumption after a kill, and an offline replay on a completed grid
(:func:`replay_design`) therefore take identical decisions.

**Posterior.** A configuration :math:`c = (m, v)` is a model and a variant. Each variant's law
:math:`L_v(N, D) = E_v + A_v N^{-\alpha_v} + B_v D^{-\beta_v}` is fitted on the variant's finished runs and
refitted on ``draws`` bootstrap resamples (:class:`~embrecipe.laws.ScalingLaw`). Draw :math:`k` of every
variant forms one joint *particle* (as the planner's P(optimal) does); its predicted loss at the target
budget :math:`C^\star` is :math:`P_{kc} = L_v^{(k)}(N_m, C^\star / \mathrm{cost}_c)`. The relative regret of
choosing :math:`c` under particle :math:`k` is :math:`r_{kc} = P_{kc} / \min_{c'} P_{kc'} - 1`, and

.. math::

    \mathrm{ER}(c) = \tfrac1K \textstyle\sum_k r_{kc},\quad \hat c = \arg\min_c \mathrm{ER}(c),\quad
    \mathrm{ER} = \mathrm{ER}(\hat c),\quad P_{\mathrm{opt}}(c) = \tfrac1K\,\#\{k: \arg\min_{c'} P_{kc'} = c\}.

:math:`\hat c` is the recipe (the choice with the least expected regret) and ER its *stated* expected regret.

**Minimum evidence.** A variant's law counts only when its runs span at least ``min_sizes`` model sizes and
``min_budgets`` budgets (and the law's 6 runs); until then no configuration of that variant can be chosen,
dropped or stopped on. The *seed* runs the cheapest cells that give every variant that evidence: all its
cells at budgets up to the smallest budget where the evidence is met (cheap, and spread in N and D, which is
what pins a 5-parameter law — not every rung).

**Value of a run.** For an option :math:`x` (a configuration at a budget it has not run) the particles
predict :math:`y_k = \ln L^{(k)}(x)`. Had particle :math:`t` been the truth, observing :math:`x` would
reweight the particles by the likelihood of :math:`y_t` under each,
:math:`w_{ts} \propto \exp\{-(y_t - y_s)^2 / (2 \cdot 2\sigma_v^2)\}` (the run noise :math:`\sigma_v` of the
variant, on both the hypothetical and the particles' outcome), and the recipe's expected regret would become
:math:`\mathrm{ER}'_t = \min_c \sum_s w_{ts} r_{sc}`. The value of :math:`x` is the expected reduction
:math:`\mathrm{VOI}(x) = \mathrm{ER} - \tfrac1K \sum_t \mathrm{ER}'_t` (a knowledge gradient on the bootstrap
particles; no refit per option, so it is cheap) and the design runs the options with the largest
:math:`\mathrm{VOI}(x)/\mathrm{FLOPs}(x)` that the remaining experiment budget affords.

**Deprioritising.** A configuration whose variant has its evidence and whose :math:`P_{\mathrm{opt}}` is below
``p_drop`` offers no options (its cells are deferred, not deleted: the next decision recomputes
:math:`P_{\mathrm{opt}}` from all runs and may bring it back).

**Stopping.** The design stops when (1) every variant has its evidence, (2) :math:`\mathrm{ER} \le`
``threshold`` (default 0.5 %), and (3) the recipe and its closest rivals by expected regret (``verify``
configurations in all) each have a run at their budget nearest the target, so that no recipe rests on
extrapolation alone — the guard against a bootstrap posterior that is overconfident far from its runs; or
when the experiment budget cannot pay for any further useful run, or no option is left. It says which.

**LR.** When a configuration's options come at several LRs (the grid's LR search), the design tries every LR
only at the cheapest cell of the configurations whose cheapest cell lies in the ``lr_rungs`` smallest
budgets; their other cells train at the chosen LR (:func:`~embrecipe.recipe.select_lrs`). The other
configurations inherit an LR by transfer across sizes: a least-squares line of log(chosen LR) on log N over
the variant's searched models, snapped to the nearest candidate LR. A contender (one of the ``verify``
closest) with a transferred LR gets its own search at its cheapest cell before it is verified. Only the chosen
LR's runs are fitted; the FLOPs of the runs at LRs not chosen are what the LR choice cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.flops import check_budget

ConfigId = tuple[str, str]  # (model, variant)


@dataclass(frozen=True)
class DesignSpec:
    """Settings of the design (see the module docstring)."""

    threshold: float = 0.005  # stop when the recipe's expected relative regret is at most this
    min_sizes: int = 2  # a variant's law counts with runs at >= this many model sizes ...
    min_budgets: int = 3  # ... and >= this many budgets
    draws: int = 40  # bootstrap particles per decision
    p_drop: float = 0.02  # deprioritise configurations less likely than this to be optimal
    verify: int = 3  # the recipe and its closest rivals (this many, by expected regret) need a run at the target's rung
    batch: int = 1  # options started per decision (parallel workers)
    lr_rungs: int = 2  # the LR search runs at the grid's this many smallest budgets; larger cells transfer
    noise_floor: float = 0.005  # smallest run noise (log-loss sigma) the value of a run assumes
    estimator: str = "huber-log"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise InputError(f"adaptive: threshold must be >= 0, got {self.threshold}")
        if self.min_sizes < 2:
            raise InputError(f"adaptive: min_sizes must be >= 2 (N needs two sizes), got {self.min_sizes}")
        if self.min_budgets < 2:
            raise InputError(f"adaptive: min_budgets must be >= 2, got {self.min_budgets}")
        if self.draws < 8:
            raise InputError(f"adaptive: draws must be >= 8 (the posterior's particles), got {self.draws}")
        if not 0 <= self.p_drop < 1:
            raise InputError(f"adaptive: p_drop must be in [0, 1), got {self.p_drop}")
        if self.lr_rungs < 1:
            raise InputError(f"adaptive: lr_rungs must be >= 1, got {self.lr_rungs}")
        if self.verify < 0:
            raise InputError(f"adaptive: verify must be >= 0, got {self.verify}")
        if self.batch < 1:
            raise InputError(f"adaptive: batch must be >= 1, got {self.batch}")


@dataclass(frozen=True)
class Option:
    """A cell the design may run: a configuration at a budget (``lr``: None, or one LR of the search)."""

    model: str
    variant: str
    budget: float
    N: float  # non-embedding parameters
    D: float  # tokens the budget affords
    flops: float
    lr: float | None = None
    key: str = ""

    @property
    def config(self) -> ConfigId:
        return self.model, self.variant

    @property
    def cost_per_token(self) -> float:
        return self.budget / self.D


@dataclass(frozen=True)
class Run:
    """A finished run as the design sees it."""

    model: str
    variant: str
    budget: float
    N: float
    D: float
    flops: float
    loss: float
    lr: float | None = None
    key: str = ""

    @property
    def config(self) -> ConfigId:
        return self.model, self.variant


# ------------------------------------------------------------------------------------------------------
# LR: search at the cheapest cell, transfer across sizes
# ------------------------------------------------------------------------------------------------------
def chosen_lrs(runs: Sequence[Run]) -> dict[ConfigId, float]:
    """Per configuration, the LR the search chose (only configurations where several LRs ran)."""
    from embrecipe.recipe import select_lrs

    searched = {c for c in {r.config for r in runs if r.lr is not None}
                if len({r.lr for r in runs if r.config == c and r.lr is not None}) > 1}
    picks = select_lrs((r.model, r.variant, r.budget, r.lr, r.loss) for r in runs if r.config in searched)
    return {c: lr for c, lr in picks.items() if c in searched}


def transfer_lr(variant: str, n: float, searched: Mapping[ConfigId, float], sizes: Mapping[str, float],
                candidates: Sequence[float]) -> float | None:
    """The LR for a configuration that was not searched: log LR linear in log N over the variant's searched
    models (constant with one), snapped to the nearest candidate (so the cell is one of the grid's)."""
    pts = [(math.log(sizes[m]), math.log(lr)) for (m, v), lr in searched.items() if v == variant and m in sizes]
    if not pts or not candidates:
        return None
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if len(set(xs.tolist())) >= 2:
        slope, icept = np.polyfit(xs, ys, 1)
        guess = slope * math.log(n) + icept
    else:
        guess = float(ys.mean())
    return float(min(candidates, key=lambda c: (abs(math.log(c) - guess), c)))


def runs_at_chosen_lr(runs: Sequence[Run]) -> list[Run]:
    """The runs the laws are fitted on: at each searched configuration only its chosen LR."""
    picks = chosen_lrs(runs)
    return [r for r in runs if r.config not in picks or r.lr is None or math.isclose(r.lr, picks[r.config])]


# ------------------------------------------------------------------------------------------------------
# Evidence and the seed
# ------------------------------------------------------------------------------------------------------
def _evidence(runs: Iterable[Run | Option], spec: DesignSpec) -> bool:
    runs = list(runs)
    return (len({r.N for r in runs}) >= spec.min_sizes and len({r.budget for r in runs}) >= spec.min_budgets
            and len({(r.N, r.budget) for r in runs}) >= 6)


def seed_cap(variant: str, options: Sequence[Option], spec: DesignSpec) -> float:
    """The smallest budget such that the variant's cells at or below it give its law the minimum evidence
    (its largest budget when even the whole grid does not)."""
    mine = [o for o in options if o.variant == variant]
    budgets = sorted({o.budget for o in mine})
    for b in budgets:
        if _evidence((o for o in mine if o.budget <= b * (1 + 1e-9)), spec):
            return b
    return budgets[-1] if budgets else 0.0


def _lowest_budget(options: Sequence[Option]) -> dict[ConfigId, float]:
    low: dict[ConfigId, float] = {}
    for o in options:
        low[o.config] = min(low.get(o.config, math.inf), o.budget)
    return low


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def _done(o: Option, runs: Sequence[Run]) -> bool:
    return any(r.config == o.config and _same(r.budget, o.budget)
               and (o.lr is None or r.lr is None or math.isclose(r.lr, o.lr, rel_tol=1e-9)) for r in runs)


def _lr_cap(options: Sequence[Option], spec: DesignSpec) -> float:
    """The largest budget the LR search runs at: the grid's ``lr_rungs`` smallest budgets."""
    budgets = sorted({o.budget for o in options})
    return budgets[min(spec.lr_rungs, len(budgets)) - 1] if budgets else 0.0


def _search_cells(options: Sequence[Option], spec: DesignSpec) -> list[Option]:
    """The LR search's cells: every LR at the cheapest cell of each configuration whose cheapest cell is in
    the LR rungs (the others get a transferred LR)."""
    low, cap = _lowest_budget(options), _lr_cap(options, spec)
    multi = _multi_lr(options)
    return [o for o in options if o.config in multi and _same(o.budget, low[o.config])
            and o.budget <= cap * (1 + 1e-9)]


def _multi_lr(options: Sequence[Option]) -> set[ConfigId]:
    """Configurations whose cells come at several LRs (an LR search); the others train at their one LR."""
    lrs: dict[ConfigId, set[float]] = {}
    for o in options:
        if o.lr is not None:
            lrs.setdefault(o.config, set()).add(o.lr)
    return {c for c, s in lrs.items() if len(s) > 1}


def seed_options(options: Sequence[Option], runs: Sequence[Run], spec: DesignSpec) -> list[Option]:
    """The seed's cells not yet run (module docstring): first the LR searches at the cheapest cells, then
    (once a variant's searches have run) its other seed cells at the chosen or transferred LR."""
    caps = {v: seed_cap(v, options, spec) for v in {o.variant for o in options}}
    search = _search_cells(options, spec)
    search_pending = [o for o in search if not _done(o, runs)]
    waiting_variants = {o.variant for o in search_pending}
    searched_configs = {o.config for o in search}
    todo: list[Option] = list(search_pending)
    lr_of: dict[ConfigId, float | None] = {}
    multi = _multi_lr(options)
    for o in options:
        if o.budget > caps[o.variant] * (1 + 1e-9) or _done(o, runs) or o in search_pending:
            continue
        if o.lr is None or o.config not in multi:
            todo.append(o)
            continue
        if o.variant in waiting_variants or (o.config in searched_configs and o in search):
            continue
        if o.config not in lr_of:
            lr_of[o.config] = lr_for_config(o.config, options, runs)
        lr = lr_of[o.config]
        if lr is not None and math.isclose(o.lr, lr, rel_tol=1e-9):
            todo.append(o)
    return todo


def lr_for_config(config: ConfigId, options: Sequence[Option], runs: Sequence[Run]) -> float | None:
    """The LR a configuration's non-search cells train at: its search's choice, else the transferred one."""
    lrs = sorted({o.lr for o in options if o.lr is not None and o.config == config})
    if len(lrs) <= 1:
        return lrs[0] if lrs else None
    picks = chosen_lrs(runs)
    if config in picks:
        return picks[config]
    sizes = {o.model: o.N for o in options}
    return transfer_lr(config[1], sizes[config[0]], picks, sizes, lrs)


# ------------------------------------------------------------------------------------------------------
# The posterior
# ------------------------------------------------------------------------------------------------------
@dataclass
class Posterior:
    """Particles of every counted variant's law (``samples[v]``: ``(draws, 5)``) and the target matrix."""

    configs: list[ConfigId]
    target_loss: np.ndarray  # (draws, configs): predicted loss at the target under each particle
    laws: dict[str, Any]  # variant → fitted ScalingLaw with samples_
    sigma: dict[str, float]  # variant → run noise of log-loss used for the value of a run

    @property
    def regret(self) -> np.ndarray:
        best = self.target_loss.min(axis=1, keepdims=True)
        return self.target_loss / best - 1.0

    def expected_regret(self) -> np.ndarray:
        return self.regret.mean(axis=0)

    def p_optimal(self) -> np.ndarray:
        wins = np.bincount(self.target_loss.argmin(axis=1), minlength=len(self.configs))
        return wins / len(self.target_loss)


def _fit_variant(variant: str, runs: Sequence[Run], spec: DesignSpec, cache: dict[Any, Any] | None) -> Any:
    from embrecipe.laws import ScalingLaw

    key = (variant, tuple(sorted((r.N, r.D, r.loss) for r in runs)), spec.draws, spec.seed, spec.estimator)
    if cache is not None and key in cache:
        return cache[key]
    # The seed of a variant's bootstrap is fixed by the spec's seed and the variant's name (not its position
    # among the variants), so adding a variant does not reshuffle the others' particles.
    vseed = spec.seed + int.from_bytes(variant.encode()[:4].ljust(4, b"\0"), "little") % 100_003
    law = ScalingLaw(seed=vseed, estimator=spec.estimator).fit([r.N for r in runs], [r.D for r in runs],
                                                               [r.loss for r in runs])
    law.bootstrap(spec.draws, extra_starts=1)
    if cache is not None:
        cache[key] = law
    return law


def posterior(runs: Sequence[Run], options: Sequence[Option], target: float, spec: DesignSpec,
              cache: dict[Any, Any] | None = None) -> tuple[Posterior | None, list[str]]:
    """The particles of the variants with their evidence, at the target for each of their configurations;
    None when no variant counts yet. Also returns notes (variants waiting for evidence, failed fits)."""
    notes: list[str] = []
    fit_runs = runs_at_chosen_lr(runs)
    by_variant: dict[str, list[Run]] = {}
    for r in fit_runs:
        by_variant.setdefault(r.variant, []).append(r)
    cost = {o.config: o.cost_per_token for o in options}
    sizes = {o.model: o.N for o in options}
    laws: dict[str, Any] = {}
    for v in sorted({o.variant for o in options}):
        mine = by_variant.get(v, [])
        if not _evidence(mine, spec):
            notes.append(f"{v}: waiting for evidence ({len({r.N for r in mine})} sizes, "
                         f"{len({r.budget for r in mine})} budgets; need {spec.min_sizes} and {spec.min_budgets})")
            continue
        try:
            laws[v] = _fit_variant(v, mine, spec, cache)
        except EmbrecipeError as exc:
            notes.append(f"{v}: law not fitted ({exc})")
    if not laws:
        return None, notes
    configs = sorted(c for c in cost if c[1] in laws)
    mat = np.empty((spec.draws, len(configs)))
    for j, (m, v) in enumerate(configs):
        mat[:, j] = laws[v].predict_samples(sizes[m], target / cost[(m, v)])
    mat = np.where(np.isfinite(mat) & (mat > 0), mat, np.inf)
    sigma = {}
    for v, law in laws.items():
        s = (law.noise_ or {}).get("sigma")
        sigma[v] = max(spec.noise_floor, float(s) if s is not None and math.isfinite(float(s)) else 0.0)
    return Posterior(configs=configs, target_loss=mat, laws=laws, sigma=sigma), notes


def value_of_runs(post: Posterior, options: Sequence[Option]) -> np.ndarray:
    """VOI of each option (module docstring): the expected reduction of the recipe's expected regret."""
    regret = post.regret
    regret = np.where(np.isfinite(regret), regret, 1.0)
    er_now = float(regret.mean(axis=0).min())
    out = np.zeros(len(options))
    for i, o in enumerate(options):
        law = post.laws.get(o.variant)
        if law is None:
            continue
        y = np.log(np.maximum(law.predict_samples(o.N, o.D), 1e-12))
        var = 2.0 * post.sigma[o.variant] ** 2
        w = np.exp(-((y[:, None] - y[None, :]) ** 2) / (2.0 * var))
        w /= w.sum(axis=1, keepdims=True)
        er_after = (w @ regret).min(axis=1).mean()
        out[i] = max(0.0, er_now - float(er_after))
    return out


# ------------------------------------------------------------------------------------------------------
# One decision
# ------------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One decision: what to run next, what is deferred, the recipe and how sure it is; ``stop`` says why."""

    index: int
    spent: float  # experiment FLOPs spent before this decision
    run: list[Option] = field(default_factory=list)
    deferred: dict[ConfigId, str] = field(default_factory=dict)
    recipe: ConfigId | None = None
    p_optimal: float | None = None
    expected_regret: float | None = None
    phase: str = "seed"  # seed | verify | value | done
    stop: str | None = None  # why the design stopped (None: it goes on)
    notes: list[str] = field(default_factory=list)
    ran: list[Option] = field(default_factory=list)  # what the previous decision ran (set by the driver)

    def line(self) -> str:
        what, ran = _list(self.run), _list(self.ran)
        rec = "none yet" if self.recipe is None else f"{self.recipe[1]} on {_short(self.recipe[0])}"
        sure = ("" if self.p_optimal is None or self.expected_regret is None else
                f" P(optimal) {self.p_optimal:.2f}, expected regret {100 * self.expected_regret:.2f}%")
        drop = f"; deferred {len(self.deferred)} (P(optimal) < p_drop)" if self.deferred else ""
        stop = f"; STOP: {self.stop}" if self.stop else ""
        waiting = [n.split(":")[0] for n in self.notes if "waiting for evidence" in n]
        if waiting and self.recipe is not None:
            sure += f" (among counted laws only; {', '.join(waiting)} still waiting for evidence)"
        ran_txt = f"ran {ran}; " if self.ran else ""
        return (f"adaptive step {self.index} [{self.phase}] spent {self.spent:.3g} FLOPs; {ran_txt}next: {what}"
                f"{drop}; recipe {rec}{sure}{stop}")

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "spent": self.spent, "phase": self.phase, "stop": self.stop,
                "run": [dataclasses.asdict(o) for o in self.run], "ran": [dataclasses.asdict(o) for o in self.ran],
                "deferred": [{"model": c[0], "variant": c[1], "reason": why} for c, why in self.deferred.items()],
                "recipe": None if self.recipe is None else list(self.recipe), "p_optimal": self.p_optimal,
                "expected_regret": self.expected_regret, "notes": list(self.notes)}


def _list(opts: Sequence[Option], most: int = 4) -> str:
    text = ", ".join(f"{o.variant} on {_short(o.model)} at {o.budget:.3g}"
                     + ("" if o.lr is None else f" lr {o.lr:.3g}") for o in opts[:most]) or "nothing"
    return text + (f" (+{len(opts) - most} more)" if len(opts) > most else "")


def _short(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


def _affordable(opts: Iterable[Option], left: float | None) -> list[Option]:
    return [o for o in opts if left is None or o.flops <= left * (1 + 1e-9)]


def _within(opts: Sequence[Option], left: float | None) -> list[Option]:
    """The options in order while their sum fits the budget left (a batch never overspends)."""
    out: list[Option] = []
    for o in opts:
        if left is not None and o.flops > left * (1 + 1e-9):
            continue
        out.append(o)
        if left is not None:
            left -= o.flops
    return out


def _verify_budget(config: ConfigId, options: Sequence[Option], target: float) -> float | None:
    """The largest budget of the configuration's cells not above the target (its rung for verification)."""
    mine = [o.budget for o in options if o.config == config and o.budget <= target * (1 + 1e-9)]
    return max(mine) if mine else None


def next_step(runs: Sequence[Run], options: Sequence[Option], *, target: float, spec: DesignSpec,
              spent: float = 0.0, experiment_budget: float | None = None, index: int = 0,
              cache: dict[Any, Any] | None = None) -> Step:
    """The design's decision after ``runs`` (module docstring). Pure and seeded: the same runs, options,
    target and settings give the same step (``cache`` only memoises law fits)."""
    check_budget(target, "adaptive: target budget", InputError)
    runs = sorted(runs, key=lambda r: (r.budget, r.model, r.variant, r.lr or 0.0, r.key))
    left = None if experiment_budget is None else experiment_budget - spent
    step = Step(index=index, spent=spent)
    post, notes = posterior(runs, options, target, spec, cache)
    step.notes += notes
    er = None
    if post is not None:
        er_c = post.expected_regret()
        j = int(np.argmin(np.where(np.isfinite(er_c), er_c, np.inf)))
        step.recipe, er = post.configs[j], float(er_c[j])
        step.p_optimal, step.expected_regret = float(post.p_optimal()[j]), er
    pending = [o for o in options if not _done(o, runs)]
    seed = _within(sorted(seed_options(options, runs, spec),
                          key=lambda o: (o.budget, o.N, o.variant, o.model, o.lr or 0.0)), left)
    if seed:
        step.phase, step.run = "seed", seed
        return step
    all_counted = post is not None and not [n for n in notes if "waiting" in n]
    if post is None:
        step.phase, step.stop = "done", ("experiment budget spent before every law had its minimum evidence"
                                         if left is not None else "no law could be fitted from the grid's cells")
        return step
    assert step.recipe is not None and er is not None
    popt = post.p_optimal()
    for c, p in zip(post.configs, popt, strict=True):
        if p < spec.p_drop and c != step.recipe:
            step.deferred[c] = f"P(optimal) {p:.2f} < {spec.p_drop:g}"
    # Verification: the recipe and its closest rivals by expected regret must have a run at their rung
    # nearest the target, so that no recipe rests on the particles' extrapolation alone.
    rivals = [post.configs[i] for i in np.argsort(er_c, kind="stable")[:spec.verify]]
    unverified = []
    for c in rivals:
        vb = _verify_budget(c, options, target)
        if vb is not None and not any(r.config == c and _same(r.budget, vb) for r in runs):
            unverified.append((c, vb))
    # A contender whose LR was transferred gets its own LR search at its cheapest cell first: a wrong LR
    # biases every run of the configuration, and for the few configurations that can win it is cheap to avoid.
    multi = _multi_lr(options)
    searched = chosen_lrs(runs)
    low = _lowest_budget(options)
    contenders = [c for c in rivals if c in multi and c not in searched]
    lr_cells = _within([o for c in contenders for o in options
                        if o.config == c and _same(o.budget, low[c]) and not _done(o, runs)], left)
    if lr_cells:
        step.phase, step.run = "lr", lr_cells
        return step
    if all_counted and er <= spec.threshold and not unverified:
        step.phase, step.stop = "done", (f"expected regret {100 * er:.2f}% <= threshold "
                                         f"{100 * spec.threshold:.2f}%")
        return step
    lr_of = {c: lr_for_config(c, options, runs) for c in {o.config for o in pending}}
    # Options beyond the seed train at their configuration's chosen (or transferred) LR only.
    cands = [o for o in pending if (o.config not in step.deferred or any(o.config == c for c, _ in unverified))
             and o.variant in post.laws
             and (o.lr is None or (lr := lr_of.get(o.config)) is None or math.isclose(o.lr, lr))]
    useful = cands
    cands = _affordable(cands, left)
    if er <= spec.threshold and unverified:
        ver = [o for c, vb in unverified for o in cands if o.config == c and _same(o.budget, vb)]
        if ver:
            step.phase, step.run = "verify", _within(ver, left)[:spec.batch]
            return step
    if not cands:
        step.phase = "done"
        step.stop = ("experiment budget spent (the runs that could still change the recipe cost more than "
                     "is left)" if useful else "no run left that could change the recipe")
        return step
    voi = value_of_runs(post, cands)
    score = voi / np.array([o.flops for o in cands])
    order = sorted(range(len(cands)), key=lambda i: (-score[i], cands[i].flops, cands[i].model, cands[i].variant))
    if voi.max() <= 0:
        # The particles cannot tell the options apart (all agree, or none informs): go up the contenders'
        # budgets instead, most probable first, so the recipe is still checked nearer the target.
        pbyc = dict(zip(post.configs, popt, strict=True))
        order = sorted(range(len(cands)), key=lambda i: (-pbyc.get(cands[i].config, 0.0), -cands[i].budget,
                                                         cands[i].model, cands[i].variant))
    picked: list[Option] = []
    budget_left = left
    for i in order:
        if len(picked) >= spec.batch:
            break
        o = cands[i]
        if budget_left is not None and o.flops > budget_left * (1 + 1e-9):
            continue
        picked.append(o)
        if budget_left is not None:
            budget_left -= o.flops
    step.phase, step.run = "value", picked
    return step


# ------------------------------------------------------------------------------------------------------
# Driving the design against an oracle (a completed store, or a simulator)
# ------------------------------------------------------------------------------------------------------
@dataclass
class DesignResult:
    """What a design run did: its steps, what it spent, and its final recipe."""

    target: float
    spec: DesignSpec
    steps: list[Step]
    runs: list[Run]
    stop: str
    recipe: ConfigId | None
    p_optimal: float | None
    expected_regret: float | None
    experiment_budget: float | None = None

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.runs)

    def lr_cost(self) -> float:
        """FLOPs of the runs at LRs the search did not choose (what the LR choice cost beyond one LR)."""
        picks = chosen_lrs(self.runs)
        return sum(r.flops for r in self.runs
                   if r.config in picks and r.lr is not None and not math.isclose(r.lr, picks[r.config]))

    def trace(self) -> list[dict[str, Any]]:
        """(FLOPs spent, expected regret, P(optimal), recipe) per decision: the report's figure."""
        return [{"step": s.index, "spent": s.spent, "expected_regret": s.expected_regret,
                 "p_optimal": s.p_optimal, "recipe": None if s.recipe is None else list(s.recipe),
                 "phase": s.phase, "stop": s.stop} for s in self.steps]


def run_design(options: Sequence[Option], oracle: Any, *, target: float, spec: DesignSpec,
               experiment_budget: float | None = None, runs: Sequence[Run] = (),
               log: Any = None, max_steps: int = 10_000) -> DesignResult:
    """Drive :func:`next_step` to its stop; ``oracle(option) -> Run | None`` trains (or looks up) one option
    (None: it cannot, e.g. the store lacks that cell — the option is then removed)."""
    have = list(runs)
    opts = list(options)
    cache: dict[Any, Any] = {}
    steps: list[Step] = []
    for i in range(max_steps):
        spent = sum(r.flops for r in have)
        step = next_step(have, opts, target=target, spec=spec, spent=spent, experiment_budget=experiment_budget,
                         index=i, cache=cache)
        step.ran = list(steps[-1].run) if steps else []
        steps.append(step)
        if log:
            log(step.line())
        if step.stop:
            break
        for o in step.run:
            r = oracle(o)
            if r is None:
                opts = [x for x in opts if x != o]
            else:
                have.append(r)
    last = steps[-1]
    return DesignResult(target=target, spec=spec, steps=steps, runs=have, stop=last.stop or "step limit",
                        recipe=last.recipe, p_optimal=last.p_optimal, expected_regret=last.expected_regret,
                        experiment_budget=experiment_budget)
