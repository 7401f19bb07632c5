r"""Adaptive sweeps: spend the grid's budget on the configurations that can still win at the target.

A *configuration* is a (model, variant) pair — variant = method + hyper-parameters, e.g. ``lora-r8`` — and a
*rung* is one budget of the grid. The adaptive sweep runs the rungs smallest budget first (successive-halving
style) and, after each rung, drops the configurations that are confidently worse **at the target budget**
:math:`C^\star` than the current frontier, so that the expensive top rungs are trained only for contenders.
With budgets spaced ×4 the top two rungs of five hold 94 % of a configuration's cost, so dropping after the
third rung still saves most of it.

**The rule.** After rung :math:`k`, every variant with runs at ``min_rungs`` or more distinct budgets gets its
law fitted (:func:`~embrecipe.laws.fit_laws`) on the runs the adaptive sweep has so far, with
``bootstrap`` refits. For an alive configuration :math:`c = (m, v)` the planner
(:func:`~embrecipe.plan.plan`) then predicts the loss at the target,

.. math::

    \hat L_c(C^\star) = E_v + \frac{A_v}{N_m^{\alpha_v}} + \frac{B_v}{D_c^{\beta_v}},\qquad
    D_c = \frac{C^\star}{\mathrm{cost}_v(N_m, N_{t})},

and the bootstrap refits give its percentile interval :math:`[\ell_c, u_c]` at level :math:`\lambda`
(``level``). The frontier's pessimistic bound is :math:`U^\star = \min_{c\ \text{alive}} u_c` and

.. math::

    \text{drop } c \iff \ell_c > (1 + \delta)\, U^\star \quad\text{at every target } C^\star,

with :math:`\delta` = ``margin`` (extra room for the law's misspecification, which the bootstrap does not
see). Why this is safe: let :math:`f` be the configuration attaining :math:`U^\star`. If :math:`c` were truly
better than :math:`f` at :math:`C^\star`, then :math:`L_c < L_f` with :math:`\ell_c > u_f`, so
:math:`L_c < \ell_c` or :math:`L_f > u_f`; each has probability :math:`(1-\lambda)/2` under the bootstrap, so a
drop is wrong with probability at most :math:`1 - \lambda` (per comparison, not corrected for multiplicity;
the margin and the protections below are the slack for that).

Protections: the configuration with the lowest measured loss at the rung, the frontier configuration
:math:`f` and the one with the lowest point prediction are never dropped; at least ``keep_min``
configurations stay alive (the most clearly dominated go first); a configuration whose variant has no law
yet (too few runs or rungs) is kept. No decision is taken after the last rung (nothing left to save).

**Why not the rung's measured loss?** The ranking at a small budget is not the ranking at the target: small
models and full fine-tuning win small budgets, larger models and LoRA win larger ones (the crossover the
study is about). Eliminating on the rung's loss drops exactly the configurations that win later; the laws
carry the measurements to the budget that matters. ``min_rungs`` defaults to 3 because with runs at two
budgets per model the floor :math:`E_v` and the data term :math:`B_v D^{-\beta_v}` cannot be told apart, and
the extrapolation to :math:`C^\star` would come from the functional form rather than the data.

Dropped configurations' runs remain in the store and keep informing their variant's law. Decisions are a
pure, seeded function of the completed runs (:func:`decide`), so a resumed sweep replays them exactly and
:func:`replay_adaptive` reproduces a live adaptive sweep from a full-grid store.

Example (on a completed full-grid store)::

    from embrecipe.adaptive import AdaptiveSpec, replay_adaptive
    from embrecipe.store import RunStore
    result = replay_adaptive(RunStore("runs.sqlite").records(), target=1e17, spec=AdaptiveSpec(keep_min=3))
    print(result.format())          # drops per rung, FLOP fraction, same recommendation?
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import EmbrecipeError, InputError
from .flops import check_budget, is_budget

if TYPE_CHECKING:
    from .records import RunRecord

ConfigId = tuple[str, str]  # (model as the runs name it, variant)

_SPEC_KEYS = ("target", "level", "margin", "keep_min", "min_rungs", "bootstrap", "seed")


# ------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptiveSpec:
    """Settings of the adaptive policy (grid key ``adaptive:``; see the module docstring for the rule).

    ``targets``: budgets the recommendation is for (a configuration is dropped only if dominated at every
    one; empty = the grid's largest budget); ``level``: bootstrap interval level; ``margin``: relative
    slack δ; ``keep_min``: fewest configurations kept alive; ``min_rungs``: distinct budgets a variant needs
    before its law may drop anything; ``bootstrap``: refits per decision; ``seed``: bootstrap seed.
    """

    targets: tuple[float, ...] = ()
    level: float = 0.9
    margin: float = 0.02
    keep_min: int = 3
    min_rungs: int = 3
    bootstrap: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise InputError(f"adaptive: level must be in (0, 1), got {self.level}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise InputError(f"adaptive: margin must be >= 0, got {self.margin}")
        if self.keep_min < 1:
            raise InputError(f"adaptive: keep_min must be >= 1, got {self.keep_min}")
        if self.min_rungs < 2:
            raise InputError(f"adaptive: min_rungs must be >= 2 (a law needs two budgets), got {self.min_rungs}")
        if self.bootstrap < 0:
            raise InputError(f"adaptive: bootstrap must be >= 0, got {self.bootstrap}")
        if not all(is_budget(t) for t in self.targets):
            raise InputError("adaptive: target budgets must be positive numbers of FLOPs")

    @classmethod
    def from_value(cls, value: Any, *, source: str = "grid") -> AdaptiveSpec | None:
        """``None``/``False`` → off; ``True`` → defaults; a mapping of the keys above (``target``: a budget or
        a list of budgets)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, AdaptiveSpec):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: 'adaptive' must be true/false or a mapping of "
                             f"{', '.join(_SPEC_KEYS)}")
        unknown = set(value) - set(_SPEC_KEYS)
        if unknown:
            raise InputError(f"{source}: unknown adaptive key(s) {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(_SPEC_KEYS)}")
        return cls().with_overrides(**dict(value))

    def with_overrides(self, **overrides: Any) -> AdaptiveSpec:
        """A copy with the given (non-None) settings replaced; ``target`` may be a number or a list."""
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if v is None:
                continue
            if k not in _SPEC_KEYS and k != "targets":
                raise InputError(f"unknown adaptive setting {k!r}")
            try:
                if k in ("target", "targets"):
                    kw["targets"] = tuple(float(t) for t in (v if isinstance(v, (list, tuple)) else [v]))
                elif k in ("level", "margin"):
                    kw[k] = float(v)
                else:
                    kw[k] = int(v)
            except (TypeError, ValueError):
                raise InputError(f"adaptive: {k} must be a number, got {v!r}") from None
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


# ------------------------------------------------------------------------------------------------------
# Records → configurations
# ------------------------------------------------------------------------------------------------------
def config_id(record: RunRecord | Mapping[str, Any]) -> ConfigId:
    """(model, variant) of a run record; the model as the sweep passed it to the trainer (its path)."""
    from .laws import run_point
    from .records import as_record

    rec = as_record(record)
    model = None if rec.config is None else rec.config.get("model")
    if not isinstance(model, str):  # records from elsewhere: the record's model name
        model = str(rec.model)
    return model, run_point(rec).variant


def record_flops(record: RunRecord | Mapping[str, Any]) -> float:
    """Model FLOPs a run spent (its nominal budget when the record does not say)."""
    from .records import as_record

    rec = as_record(record)
    spent = rec.model_flops if rec.model_flops is not None else rec.budget
    if spent is None:
        raise InputError(f"run {rec.key}: record has neither model_flops nor budget")
    return float(spent)


def _budget(record: RunRecord | Mapping[str, Any]) -> float:
    from .laws import run_point

    return run_point(record).budget


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def _describe(cid: ConfigId) -> str:
    return f"{cid[1]} on {cid[0]}"


# ------------------------------------------------------------------------------------------------------
# One decision
# ------------------------------------------------------------------------------------------------------
@dataclass
class RungDecision:
    """What the policy decided after one rung."""

    rung: int
    budget: float
    alive: list[ConfigId]  # before the decision
    dropped: dict[ConfigId, str] = field(default_factory=dict)  # configuration → why
    measured_best: ConfigId | None = None
    frontier: ConfigId | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[ConfigId]:
        return [c for c in self.alive if c not in self.dropped]

    def lines(self) -> list[str]:
        head = (f"adaptive: after rung {self.rung} ({self.budget:.3g} FLOPs): {len(self.alive)} alive, "
                f"dropped {len(self.dropped)}, keeping {len(self.kept)}")
        if self.measured_best:
            head += f"; best measured here: {_describe(self.measured_best)}"
        if self.frontier:
            head += f"; frontier: {_describe(self.frontier)}"
        out = [head]
        out += [f"  drop {_describe(c)}: {why}" for c, why in self.dropped.items()]
        out += [f"  note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rung": self.rung, "budget": self.budget, "alive": [list(c) for c in self.alive],
                "dropped": [{"model": c[0], "variant": c[1], "reason": why} for c, why in self.dropped.items()],
                "measured_best": None if self.measured_best is None else list(self.measured_best),
                "frontier": None if self.frontier is None else list(self.frontier), "notes": list(self.notes)}


def _sorted_records(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[RunRecord]:
    # The bootstrap resamples by position: a canonical order makes a decision independent of the order in
    # which runs finished or were read, so a live sweep, its resumption and a replay decide identically.
    from .records import as_record

    return sorted((as_record(r) for r in records), key=lambda r: (_budget(r), *config_id(r), str(r.key or "")))


def _bounds(c: Any) -> tuple[float, float]:
    # Without bootstrap refits the interval is the point prediction: only the margin separates configurations.
    return (c.loss if c.loss_low is None else c.loss_low, c.loss if c.loss_high is None else c.loss_high)


def decide(records: Iterable[RunRecord | Mapping[str, Any]], alive: Iterable[ConfigId], *, rung: int, budget: float,
           targets: Sequence[float], spec: AdaptiveSpec) -> RungDecision:
    """Apply the rule (module docstring) after ``rung`` (at ``budget``) to the completed ``records`` the
    adaptive sweep has so far; ``alive`` are the configurations still in the race. Pure and seeded."""
    from .laws import run_point

    if not targets:
        raise InputError("adaptive: no target budget to decide for")
    recs = _sorted_records(records)
    alive_list = sorted(set(alive))
    decision = RungDecision(rung=rung, budget=float(budget), alive=alive_list)
    ids = [config_id(r) for r in recs]
    points = list(zip(ids, (run_point(r) for r in recs), strict=True))
    decision.measured_best = _measured_best(points, set(alive_list), budget)
    usable = _variants_with_enough_rungs(points, alive_list, spec, decision.notes)
    if not usable:
        return decision
    laws = _fit_usable_laws([r for r, cid in zip(recs, ids, strict=True) if cid[1] in usable], spec, decision.notes)
    if laws is None:
        return decision
    dominance = _dominance_at_targets(laws, _family_of(recs, ids), targets, set(alive_list), spec, decision)
    if dominance is not None:
        _drop_dominated(decision, *dominance, spec)
    return decision


def _measured_best(points: Sequence[tuple[ConfigId, Any]], alive: set[ConfigId], budget: float) -> ConfigId | None:
    """The alive configuration with the lowest loss measured at this rung (protected from dropping)."""
    here: dict[ConfigId, Any] = {}
    for cid, p in points:
        if cid in alive and _same(p.budget, budget):
            here[cid] = min(here.get(cid, math.inf), p.loss)
    return min(here, key=lambda c: (here[c], c)) if here else None


def _variants_with_enough_rungs(points: Sequence[tuple[ConfigId, Any]], alive: Sequence[ConfigId],
                                spec: AdaptiveSpec, notes: list[str]) -> set[str]:
    """Variants with runs at ``min_rungs`` or more distinct budgets; a note names the alive ones still waiting."""
    rungs_of: dict[str, set[float]] = {}
    for cid, p in points:
        rungs_of.setdefault(cid[1], set()).add(p.budget)
    usable = {v for v, bs in rungs_of.items() if len(bs) >= spec.min_rungs}
    waiting = sorted({c[1] for c in alive} - usable)
    if waiting:
        notes.append(f"no decision yet for {', '.join(waiting)}: runs at fewer than "
                     f"{spec.min_rungs} budgets (min_rungs)")
    return usable


def _fit_usable_laws(records: list[RunRecord], spec: AdaptiveSpec, notes: list[str]) -> Any:
    """The laws of the usable variants' runs, or None (with a note) when none can be fitted yet."""
    from .laws import fit_laws

    try:
        laws = fit_laws(records, bootstrap=spec.bootstrap, seed=spec.seed, validate=False,
                        provenance="adaptive sweep decision")
    except EmbrecipeError as exc:
        notes.append(f"no law could be fitted yet ({exc}); nothing dropped")
        return None
    for v, why in laws.skipped.items():
        notes.append(f"{v} kept: its law could not be fitted ({why})")
    return laws


def _family_of(recs: Sequence[RunRecord], ids: Sequence[ConfigId]) -> list[Any]:
    """The models the runs name, with the shape the first run of each recorded (the planner costs them)."""
    from .family import FamilyMember
    from .flops import ModelShape

    shapes: dict[str, dict[str, Any]] = {}
    for r, cid in zip(recs, ids, strict=True):
        if r.shape is not None and cid[0] not in shapes:
            shapes[cid[0]] = r.shape.to_dict()
    return [FamilyMember(name=m, path=m, shape=ModelShape.from_dict(s)) for m, s in sorted(shapes.items())]


_Dominance = tuple[dict[ConfigId, list[str]], dict[ConfigId, float], set[ConfigId]]


def _dominance_at_targets(laws: Any, family: list[Any], targets: Sequence[float], alive: set[ConfigId],
                          spec: AdaptiveSpec, decision: RungDecision) -> _Dominance | None:
    r"""(the configurations dominated at *every* target with the reasons, each one's severity
    :math:`\ell_c / U^\star` (its smallest over the targets), the protected ones); None (with a note) when some
    target cannot be planned."""
    from .plan import plan

    dominated: dict[ConfigId, list[str]] | None = None
    severity: dict[ConfigId, float] = {}
    protected = {decision.measured_best} if decision.measured_best else set()
    for target in targets:
        try:
            target_plan = plan(float(target), laws, family, level=spec.level)
        except EmbrecipeError as exc:
            decision.notes.append(f"cannot plan at {target:.3g} ({exc}); nothing dropped")
            return None
        cands = {(c.model, c.variant): c for c in target_plan.candidates
                 if (c.model, c.variant) in alive and c.feasible}
        if not cands:
            decision.notes.append(f"no alive configuration can be predicted at {target:.3g}; nothing dropped")
            return None
        frontier = min(cands, key=lambda k: (_bounds(cands[k])[1], k))
        protected.add(frontier)
        protected.add(min(cands, key=lambda k: (cands[k].loss, k)))
        if decision.frontier is None:
            decision.frontier = frontier
        here_dom = _dominated_at(float(target), cands, frontier, spec, severity)
        if dominated is None:
            dominated = {k: [why] for k, why in here_dom.items()}
        else:
            dominated = {k: [*whys, here_dom[k]] for k, whys in dominated.items() if k in here_dom}
    return dominated or {}, severity, protected


def _dominated_at(target: float, cands: Mapping[ConfigId, Any], frontier: ConfigId, spec: AdaptiveSpec,
                  severity: dict[ConfigId, float]) -> dict[ConfigId, str]:
    r"""The candidates with :math:`\ell_c > (1+\delta) U^\star` at one target, each with its reason; records
    their severity :math:`\ell_c / U^\star` (the smallest over the targets so far) in ``severity``."""
    u_star = _bounds(cands[frontier])[1]
    here_dom = {}
    for k, c in cands.items():
        lo, hi = _bounds(c)
        if lo > (1 + spec.margin) * u_star:
            here_dom[k] = (f"at {target:.3g} predicted {c.loss:.4g} [{lo:.4g}, {hi:.4g}] ({spec.level:.0%}); "
                           f"optimistic {lo:.4g} > (1+{spec.margin:g}) x frontier's pessimistic {u_star:.4g} "
                           f"({_describe(frontier)})")
            severity[k] = min(severity.get(k, math.inf), lo / u_star)
    return here_dom


def _drop_dominated(decision: RungDecision, dominated: dict[ConfigId, list[str]], severity: dict[ConfigId, float],
                    protected: set[ConfigId], spec: AdaptiveSpec) -> None:
    """Drop the unprotected dominated configurations, most clearly dominated first, while more than ``keep_min``
    stay alive; a note names the ones spared for ``keep_min``."""
    order = sorted((k for k in dominated if k not in protected), key=lambda k: (-severity[k], k))
    room = max(0, len(decision.alive) - spec.keep_min)
    for k in order[:room]:
        decision.dropped[k] = "; ".join(dominated[k])
    spared = order[room:]
    if spared:
        decision.notes.append(f"kept {len(spared)} dominated configuration(s) to keep keep_min={spec.keep_min} "
                              f"alive: {', '.join(_describe(k) for k in spared)}")


# ------------------------------------------------------------------------------------------------------
# The live sweep's account
# ------------------------------------------------------------------------------------------------------
@dataclass
class AdaptiveReport:
    """What an adaptive :func:`~embrecipe.sweep.run_sweep` did (FLOPs here are the cells' nominal budgets)."""

    spec: AdaptiveSpec
    targets: tuple[float, ...]
    decisions: list[RungDecision] = field(default_factory=list)
    cells_grid: int = 0
    cells_selected: int = 0
    flops_grid: float = 0.0
    flops_selected: float = 0.0
    complete: bool = False  # every rung finished (otherwise rerun to go on)
    selected_keys: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.flops_selected / self.flops_grid if self.flops_grid else math.nan

    @property
    def dropped(self) -> dict[ConfigId, str]:
        return {c: why for d in self.decisions for c, why in d.dropped.items()}

    def summary(self) -> str:
        state = "" if self.complete else " so far (stopped early: rerun to go on)"
        return (f"adaptive{state}: {self.cells_selected} of {self.cells_grid} cells, {self.flops_selected:.3g} of "
                f"{self.flops_grid:.3g} planned grid FLOPs ({100 * self.fraction:.1f}%); "
                f"{len(self.dropped)} configuration(s) dropped for target(s) "
                f"{', '.join(f'{t:.3g}' for t in self.targets)}")


# ------------------------------------------------------------------------------------------------------
# Offline replay on a full-grid store
# ------------------------------------------------------------------------------------------------------
@dataclass
class Recommendation:
    """The planner's optimum at a budget, fitted on a set of runs."""

    model: str
    variant: str
    loss: float
    tokens: float
    steps: int
    runner_up: str | None = None

    @property
    def config(self) -> tuple[str, str]:
        return self.model, self.variant

    def describe(self) -> str:
        return f"{self.variant} on {self.model} (predicted loss {self.loss:.4g}, {self.tokens:.3g} tokens)"


def recommend(records: Iterable[RunRecord | Mapping[str, Any]], target: float, *, seed: int = 0) -> Recommendation:
    """Fit the laws on ``records`` and plan at ``target``: the optimum (point predictions; the bootstrap does
    not change which option ranks first)."""
    from .laws import fit_laws
    from .plan import plan

    laws = fit_laws(_sorted_records(records), bootstrap=0, seed=seed, validate=False)
    p = plan(float(target), laws)
    b, r = p.best, p.runner_up
    return Recommendation(model=b.model, variant=b.variant, loss=b.loss, tokens=b.tokens, steps=b.steps,
                          runner_up=None if r is None else f"{r.variant} on {r.model}")


@dataclass
class ReplayResult:
    """The adaptive policy replayed on completed runs (FLOPs are the runs' model FLOPs)."""

    target: float
    spec: AdaptiveSpec
    decisions: list[RungDecision]
    rungs: list[float]
    runs_grid: int
    runs_adaptive: int
    flops_grid: float
    flops_adaptive: float
    grid_best: Recommendation
    adaptive_best: Recommendation
    adaptive_keys: list[str]
    synthetic: bool = False

    @property
    def fraction(self) -> float:
        return self.flops_adaptive / self.flops_grid if self.flops_grid else math.nan

    @property
    def same_recommendation(self) -> bool:
        return self.grid_best.config == self.adaptive_best.config

    def format(self) -> str:
        tag = " — SYNTHETIC runs (fake trainer), not measurements" if self.synthetic else ""
        s = self.spec
        lines = [f"adaptive replay{tag}: {self.runs_grid} completed runs, {len(self.rungs)} rungs "
                 f"({self.rungs[0]:.3g} … {self.rungs[-1]:.3g} FLOPs); decisions for "
                 f"{', '.join(f'{t:.3g}' for t in (s.targets or (self.target,)))} "
                 f"(level {s.level:g}, margin {s.margin:g}, keep_min {s.keep_min}, min_rungs {s.min_rungs}, "
                 f"bootstrap {s.bootstrap})"]
        for d in self.decisions:
            lines += d.lines()
        same = "yes" if self.same_recommendation else "NO"
        lines += [
            f"adaptive sweep: {self.runs_adaptive} of {self.runs_grid} runs, {self.flops_adaptive:.3g} of "
            f"{self.flops_grid:.3g} model FLOPs = {100 * self.fraction:.1f}% of the grid",
            f"recommendation at {self.target:.3g} from the full grid: {self.grid_best.describe()}",
            f"recommendation at {self.target:.3g} from the adaptive runs: {self.adaptive_best.describe()}",
            f"same recommendation: {same}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "spec": self.spec.to_dict(), "rungs": self.rungs,
            "runs_grid": self.runs_grid, "runs_adaptive": self.runs_adaptive,
            "flops_grid": self.flops_grid, "flops_adaptive": self.flops_adaptive, "fraction": self.fraction,
            "same_recommendation": self.same_recommendation,
            "grid_best": dataclasses.asdict(self.grid_best), "adaptive_best": dataclasses.asdict(self.adaptive_best),
            "decisions": [d.to_dict() for d in self.decisions], "adaptive_keys": self.adaptive_keys,
            "synthetic": self.synthetic,
        }


def replay_adaptive(records: Iterable[RunRecord | Mapping[str, Any]], *, target: float | None = None,
                    spec: AdaptiveSpec | None = None,
                    log: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay the adaptive policy on the completed runs of a full grid, training nothing.

    Rung by rung (the runs' distinct budgets, smallest first) it selects the runs of the configurations
    still alive and applies :func:`decide` exactly as a live adaptive sweep does. Returns the model FLOPs
    the adaptive sweep would have spent, the grid's, their ratio, and whether the planner's optimum at
    ``target`` (default: the largest budget) fitted on the adaptive runs equals the one fitted on all runs.
    The decisions are for ``spec.targets`` when set, else for ``target``.
    """
    spec = spec or AdaptiveSpec()
    recs = [r for r in _sorted_records(records) if r.completed]
    if not recs:
        raise InputError("no completed runs to replay the adaptive sweep on")
    rungs = sorted({_budget(r) for r in recs})
    target = float(target) if target is not None else rungs[-1]
    check_budget(target, "target budget", InputError)
    targets = spec.targets or (target,)
    ids = [config_id(r) for r in recs]
    alive = set(ids)
    selected: list[RunRecord] = []
    decisions: list[RungDecision] = []
    for k, b in enumerate(rungs, 1):
        selected += [r for r, cid in zip(recs, ids, strict=True) if cid in alive and _same(_budget(r), b)]
        if k == len(rungs):
            break
        d = decide(selected, alive, rung=k, budget=b, targets=targets, spec=spec)
        decisions.append(d)
        if log:
            for line in d.lines():
                log(line)
        alive -= set(d.dropped)
    return ReplayResult(
        target=target, spec=spec, decisions=decisions, rungs=rungs,
        runs_grid=len(recs), runs_adaptive=len(selected),
        flops_grid=sum(record_flops(r) for r in recs), flops_adaptive=sum(record_flops(r) for r in selected),
        grid_best=recommend(recs, target, seed=spec.seed), adaptive_best=recommend(selected, target, seed=spec.seed),
        adaptive_keys=[str(r.key or "") for r in selected],
        synthetic=any(r.synthetic for r in recs),
    )
