r"""Adaptive sweeps: the grid's cells become options of an experimental design that stops when the recipe is known.

The design itself — posterior from bootstrap particles, value of a run per FLOP, P(optimal), expected regret,
minimum evidence, the LR search inside it, the stopping rule — is :mod:`embrecipe.sweep.design` (pure and seeded).
This module connects it to run records and stores:

- :class:`AdaptiveSpec`: the settings (grid key ``adaptive:``, CLI ``--adaptive ...``);
- :func:`runs_of` / :func:`options_of_records`: completed run records → the design's runs and options;
- :func:`replay_adaptive`: the design replayed on a completed full-grid store (it "trains" a cell by looking
  up its record), with the fraction of the grid's FLOPs, whether it reaches the grid's recommendation, and
  the design's stated expected regret;
- :func:`write_trace` / :func:`read_trace`: the decisions' trace (FLOPs spent vs expected regret), a JSON
  sidecar written atomically beside the store, which the report draws.

The live sweep (:func:`embrecipe.sweep.orchestration.run_sweep` with ``adaptive``) asks :func:`embrecipe.sweep.design.next_step`
what to run after every batch of finished runs; since the step is a pure function of the store's completed
runs, a sweep killed at any point and rerun takes the same decisions.

Example (on a completed full-grid store)::

    from embrecipe.sweep.adaptive import AdaptiveSpec, replay_adaptive
    from embrecipe.runs.store import RunStore
    result = replay_adaptive(RunStore("runs.sqlite").records(), target=1e17, spec=AdaptiveSpec())
    print(result.format())          # one line per decision, FLOP fraction, same recommendation, stated regret
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.flops import check_budget, is_budget
from embrecipe.sweep.design import DesignResult, DesignSpec, Option, Run, Step, run_design

if TYPE_CHECKING:
    from embrecipe.runs.records import RunRecord

ConfigId = tuple[str, str]  # (model as the runs name it, variant)

_SPEC_KEYS = ("target", "threshold", "experiment_budget", "min_sizes", "min_budgets", "draws", "p_drop",
              "verify", "batch", "lr_rungs", "seed")


# ------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptiveSpec:
    """Settings of the adaptive design (grid key ``adaptive:``; the maths in :mod:`embrecipe.sweep.design`).

    ``targets``: the budget the recipe is for (the first; empty = the grid's largest budget);
    ``threshold``: stop when the recipe's expected relative regret is at most this (default 0.005);
    ``experiment_budget``: model FLOPs the design may spend in all (None: the grid's); ``min_sizes`` /
    ``min_budgets``: the minimum evidence before a variant's law counts; ``draws``: bootstrap particles;
    ``p_drop``: deprioritise configurations with P(optimal) below this; ``verify``: how many configurations (the recipe and its
    closest rivals by expected regret) need a run at the target's rung before stopping; ``batch``: runs started per decision; ``lr_rungs``: the LR search's
    budgets (the smallest ones; larger cells transfer the LR); ``seed``: bootstrap seed.
    """

    targets: tuple[float, ...] = ()
    threshold: float = 0.005
    experiment_budget: float | None = None
    min_sizes: int = 2
    min_budgets: int = 3
    draws: int = 40
    p_drop: float = 0.02
    verify: int = 3
    batch: int = 1
    lr_rungs: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not all(is_budget(t) for t in self.targets):
            raise InputError("adaptive: target budgets must be positive numbers of FLOPs")
        if self.experiment_budget is not None:
            check_budget(self.experiment_budget, "adaptive: experiment_budget", InputError)
        self.design()  # the design's own checks (one-line errors)

    def design(self) -> DesignSpec:
        return DesignSpec(threshold=self.threshold, min_sizes=self.min_sizes, min_budgets=self.min_budgets,
                          draws=self.draws, p_drop=self.p_drop, verify=self.verify, batch=self.batch,
                          lr_rungs=self.lr_rungs, seed=self.seed)

    @classmethod
    def from_value(cls, value: Any, *, source: str = "grid") -> AdaptiveSpec | None:
        """``None``/``False`` → off; ``True`` → defaults; a mapping of the keys above (``target``: a budget)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, AdaptiveSpec):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: 'adaptive' must be true/false or a mapping of {', '.join(_SPEC_KEYS)}")
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
                elif k in ("threshold", "p_drop", "experiment_budget"):
                    kw[k] = float(v)
                else:
                    kw[k] = int(v)
            except (TypeError, ValueError):
                raise InputError(f"adaptive: {k} must be a number, "
                                 f"got {v!r}") from None
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


# ------------------------------------------------------------------------------------------------------
# Records → the design's runs and options
# ------------------------------------------------------------------------------------------------------
def config_id(record: RunRecord | Mapping[str, Any]) -> ConfigId:
    """(model, variant) of a run record; the model as the sweep passed it to the trainer (its path)."""
    from embrecipe.laws import run_point
    from embrecipe.runs.records import as_record

    rec = as_record(record)
    model = None if rec.config is None else rec.config.get("model")
    if not isinstance(model, str):  # records from elsewhere: the record's model name
        model = str(rec.model)
    return model, run_point(rec).variant


def record_flops(record: RunRecord | Mapping[str, Any]) -> float:
    """Model FLOPs a run spent (its nominal budget when the record does not say)."""
    from embrecipe.runs.records import as_record

    rec = as_record(record)
    spent = rec.model_flops if rec.model_flops is not None else rec.budget
    if spent is None:
        raise InputError(f"run {rec.key}: record has neither model_flops nor budget")
    return float(spent)


def _run_of(record: RunRecord) -> Run:
    from embrecipe.laws import run_point

    p = run_point(record)
    model, variant = config_id(record)
    return Run(model=model, variant=variant, budget=p.budget, N=p.N, D=p.D,
               flops=record_flops(record), loss=p.loss, lr=p.lr, key=str(record.key or ""))


def runs_of(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[Run]:
    """The completed records as the design's runs."""
    from embrecipe.runs.records import as_record

    return [_run_of(r) for r in (as_record(x) for x in records) if r.completed]


def options_of_records(runs: Iterable[Run]) -> list[Option]:
    """Every cell a completed grid ran, as an option (for replays)."""
    return [Option(model=r.model, variant=r.variant, budget=r.budget, N=r.N, D=r.D, flops=r.flops, lr=r.lr,
                   key=r.key) for r in runs]


# ------------------------------------------------------------------------------------------------------
# The trace sidecar (FLOPs spent vs expected regret)
# ------------------------------------------------------------------------------------------------------
def trace_path(store: str | os.PathLike[str]) -> Path | None:
    """``<store>.adaptive.json`` beside the store's file (None for an in-memory store)."""
    text = os.fspath(store)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    if text in ("", ":memory:"):
        return None
    return Path(f"{text}.adaptive.json")


def write_trace(store: str | os.PathLike[str], trace: Mapping[str, Any]) -> Path | None:
    """Write the design's trace atomically (tmp file + rename: a kill never leaves half a file)."""
    path = trace_path(store)
    if path is None:
        return None
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(trace, indent=1))
    os.replace(tmp, path)
    return path


def read_trace(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = trace_path(store)
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable adaptive trace ({exc})") from None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------------------
# The live sweep's account
# ------------------------------------------------------------------------------------------------------
@dataclass
class AdaptiveReport:
    """What an adaptive :func:`~embrecipe.sweep.orchestration.run_sweep` did (FLOPs here are the runs' model FLOPs)."""

    spec: AdaptiveSpec
    target: float
    steps: list[Step] = field(default_factory=list)
    cells_grid: int = 0
    flops_grid: float = 0.0
    flops_spent: float = 0.0
    runs: int = 0
    stop: str | None = None  # why the design stopped (None: interrupted, rerun to go on)
    lr_cost: float = 0.0

    @property
    def fraction(self) -> float:
        return self.flops_spent / self.flops_grid if self.flops_grid else math.nan

    @property
    def complete(self) -> bool:
        return self.stop is not None

    def summary(self) -> str:
        last = self.steps[-1] if self.steps else None
        state = f"stopped: {self.stop}" if self.stop else "interrupted (rerun to go on)"
        rec = "none yet" if last is None or last.recipe is None else f"{last.recipe[1]} on {last.recipe[0]}"
        sure = ("" if last is None or last.expected_regret is None or last.p_optimal is None else
                f", P(optimal) {last.p_optimal:.2f}, expected regret {100 * last.expected_regret:.2f}%")
        return (f"adaptive ({state}): {self.runs} runs, {self.flops_spent:.3g} of {self.flops_grid:.3g} grid "
                f"model FLOPs ({100 * self.fraction:.1f}%), of which the LR choice {self.lr_cost:.3g}; "
                f"recipe at {self.target:.3g}: {rec}{sure}")


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


def _sorted_records(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[RunRecord]:
    from embrecipe.laws import run_point
    from embrecipe.runs.records import as_record

    return sorted((as_record(r) for r in records),
                  key=lambda r: (run_point(r).budget, *config_id(r), str(r.key or "")))


def recommend(records: Iterable[RunRecord | Mapping[str, Any]], target: float, *, seed: int = 0) -> Recommendation:
    """Fit the laws on ``records`` and plan at ``target``: the optimum (point predictions)."""
    from embrecipe.laws import fit_laws
    from embrecipe.planning.planner import plan

    laws = fit_laws(_sorted_records(records), bootstrap=0, seed=seed, validate=False)
    p = plan(float(target), laws)
    b, r = p.best, p.runner_up
    return Recommendation(model=b.model, variant=b.variant, loss=b.loss, tokens=b.tokens, steps=b.steps,
                          runner_up=None if r is None else f"{r.variant} on {r.model}")


def _short(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class ReplayResult:
    """The adaptive design replayed on completed runs (FLOPs are the runs' model FLOPs)."""

    target: float
    spec: AdaptiveSpec
    design: DesignResult
    runs_grid: int
    flops_grid: float
    grid_best: Recommendation
    synthetic: bool = False

    @property
    def runs_adaptive(self) -> int:
        return len(self.design.runs)

    @property
    def flops_adaptive(self) -> float:
        return self.design.flops

    @property
    def fraction(self) -> float:
        return self.flops_adaptive / self.flops_grid if self.flops_grid else math.nan

    @property
    def adaptive_recipe(self) -> ConfigId | None:
        return self.design.recipe

    @property
    def same_recommendation(self) -> bool:
        rec = self.design.recipe
        return rec is not None and (_short(rec[0]), rec[1]) == (_short(self.grid_best.model), self.grid_best.variant)

    def format(self) -> str:
        tag = " — SYNTHETIC runs (fake trainer), not measurements" if self.synthetic else ""
        s = self.spec
        lines = [f"adaptive replay{tag}: {self.runs_grid} completed runs; recipe for {self.target:.3g} FLOPs "
                 f"(threshold {100 * s.threshold:g}%, min_sizes {s.min_sizes}, min_budgets {s.min_budgets}, "
                 f"draws {s.draws}, p_drop {s.p_drop:g}, verify {s.verify})"]
        lines += [st.line() for st in self.design.steps]
        rec = self.design.recipe
        same = "yes" if self.same_recommendation else "NO"
        er = self.design.expected_regret
        lines += [
            f"adaptive design: {self.runs_adaptive} of {self.runs_grid} runs, {self.flops_adaptive:.3g} of "
            f"{self.flops_grid:.3g} model FLOPs = {100 * self.fraction:.1f}% of the grid "
            f"(stopped: {self.design.stop})",
            f"recommendation at {self.target:.3g} from the full grid: {self.grid_best.describe()}",
            f"recommendation at {self.target:.3g} from the adaptive design: "
            + ("none" if rec is None else f"{rec[1]} on {_short(rec[0])}")
            + ("" if er is None or self.design.p_optimal is None else
               f" (P(optimal) {self.design.p_optimal:.2f}, stated expected regret {100 * er:.2f}%)"),
            f"same recommendation: {same}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        rec = self.design.recipe
        return {
            "target": self.target, "spec": self.spec.to_dict(),
            "runs_grid": self.runs_grid, "runs_adaptive": self.runs_adaptive,
            "flops_grid": self.flops_grid, "flops_adaptive": self.flops_adaptive, "fraction": self.fraction,
            "same_recommendation": self.same_recommendation,
            "grid_best": dataclasses.asdict(self.grid_best),
            "adaptive_best": None if rec is None else {"model": rec[0], "variant": rec[1]},
            "p_optimal": self.design.p_optimal, "expected_regret": self.design.expected_regret,
            "stop": self.design.stop, "lr_cost_flops": self.design.lr_cost(),
            "steps": [s.to_dict() for s in self.design.steps], "trace": self.design.trace(),
            "adaptive_keys": [r.key for r in self.design.runs], "synthetic": self.synthetic,
        }


def replay_adaptive(records: Iterable[RunRecord | Mapping[str, Any]], *, target: float | None = None,
                    spec: AdaptiveSpec | None = None,
                    log: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay the adaptive design on the completed runs of a full grid, training nothing.

    The design's options are the grid's completed cells; "training" one looks up its record. Returns the
    model FLOPs the design spent, the grid's, their ratio, whether its recipe at ``target`` (default: the
    largest budget) equals the planner's optimum fitted on all runs, and the design's stated expected regret.
    """
    spec = spec or AdaptiveSpec()
    recs = [r for r in _sorted_records(records) if r.completed]
    if not recs:
        raise InputError("no completed runs to replay the adaptive sweep on")
    runs = runs_of(recs)
    target = float(target) if target is not None else (spec.targets[0] if spec.targets else
                                                        max(r.budget for r in runs))
    check_budget(target, "target budget", InputError)
    by_cell: dict[tuple[Any, ...], Run] = {}
    for r in runs:  # repeated seeds of one cell: the replay sees the first (in the canonical order)
        by_cell.setdefault((r.model, r.variant, r.budget, r.lr), r)
    cells = list(by_cell.values())

    def oracle(o: Option) -> Run | None:
        return by_cell.get((o.model, o.variant, o.budget, o.lr))

    design = run_design(options_of_records(cells), oracle, target=target, spec=spec.design(),
                        experiment_budget=spec.experiment_budget, log=log)
    return ReplayResult(target=target, spec=spec, design=design, runs_grid=len(recs),
                        flops_grid=sum(record_flops(r) for r in recs),
                        grid_best=recommend(recs, target, seed=spec.seed),
                        synthetic=any(r.synthetic for r in recs))
