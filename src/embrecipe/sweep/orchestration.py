r"""Sweeps: a grid YAML → cells (model × method × hyper-parameters × budget) → runs in the store.

Step 1–2 of the algorithm (docs/design.md). This module holds the orchestration: :func:`run_sweep` expands the
grid (:mod:`embrecipe.sweep.grid` parses it; :mod:`embrecipe.sweep.cells` turns it into budget-exact cells and skips, with a
printed reason, those that cannot spend their budget sensibly), registers the cells in the store, and hands the
ones not completed to an executor (:mod:`embrecipe.sweep.executors`: sequential, process pool or Ray). It keeps the
tally (:class:`SweepResult`), the progress bar, and the LR-search and adaptive protocols.

A run only starts after :meth:`~embrecipe.runs.store.RunStore.claim` succeeds, so a rerun after ``kill -9`` trains
exactly the cells that are not ``completed`` (a killed run's claim is stale because its process is gone).
Only the driver process writes to the store; workers just train and return records.

With ``adaptive`` (grid key or :func:`run_sweep` argument; :func:`run_adaptive_sweep` for drivers) the cells
become options of the experimental design (:mod:`embrecipe.sweep.design`): after every batch of finished runs it
chooses the next cells by value per FLOP, prints one line (what runs, what is deferred, the recipe, its
P(optimal) and expected regret), writes its trace beside the store, and stops when the recipe is known.

The grid format is documented in ``docs/sweep.md``. Example::

    from embrecipe.sweep.grid import load_grid
    from embrecipe.sweep.orchestration import run_sweep
    grid = load_grid("grid.yaml")
    result = run_sweep(grid, store="runs.sqlite", executor="local")
    print(result.summary())
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError, OutOfDiskSpace
from embrecipe.sweep.adaptive import AdaptiveReport, AdaptiveSpec
from embrecipe.sweep.cells import WAITS_FOR_LR, Cell, DataStats, Skipped, data_stats, expand
from embrecipe.sweep.executors import ExecutorSettings, TrainFn, make_executor, resolve_train_fn, start_ray
from embrecipe.sweep.grid import Grid


def check_cells(cells: list[Cell], fn: TrainFn, source: str) -> None:
    """The checks the real trainer makes on settings alone (types, ranges, required keys), on every cell, so that
    a dry run fails where the real run would and a real run fails before the first cell, not in every cell."""
    from embrecipe.training.config import config_from_dict
    from embrecipe.training.trainer import train_from_dict

    if fn is not train_from_dict:  # another trainer has its own settings: nothing to mirror
        return
    seen: set[str] = set()
    for cell in cells:
        sig = repr(sorted((k, repr(v)) for k, v in cell.config.items() if k not in ("model", "budget", "out")))
        if sig in seen:
            continue
        seen.add(sig)
        config_from_dict(cell.config, source=f"{source} ({cell.variant} on {cell.model})")


@dataclass
class SweepResult:
    total: int
    skipped: list[Skipped]
    already_done: int
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # claimed by another live worker
    flops_planned: float = 0.0
    flops_spent: float = 0.0
    elapsed_s: float = 0.0
    adaptive: AdaptiveReport | None = None  # what the adaptive policy did (adaptive sweeps only)
    # model FLOPs spent ÷ (elapsed × measured matmul peak × devices); None when not measured (synthetic runs)
    utilization: float | None = None
    peak: dict[str, Any] | None = None

    def summary(self) -> str:
        text = (f"{self.total} cells: {self.already_done} already completed, {len(self.ran)} ran now, "
                f"{len(self.failed)} failed, {len(self.busy)} held by other workers, {len(self.skipped)} skipped; "
                f"{self.flops_spent:.3g} of {self.flops_planned:.3g} planned FLOPs spent this session "
                f"in {self.elapsed_s:.1f} s")
        if self.utilization is not None and self.peak:
            text += (f"\nsweep-level utilization {self.utilization:.1%}: {self.flops_spent:.3g} model FLOPs ÷ "
                     f"({self.elapsed_s:.1f} s × {self.peak['flops_per_s']:.3g} FLOP/s measured {self.peak['dtype']} "
                     f"matmul peak × {self.peak['devices']} {self.peak['device']} device(s))")
        if self.adaptive is not None:
            text += "\n" + self.adaptive.summary()
        return text


class _Progress:
    """Cells done, FLOPs spent / planned, and an ETA from the FLOP rate (cells differ 100x in cost)."""

    def __init__(self, total: int, done: int, flops_total: float, flops_done: float, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, unit="cell", disable=not enabled, dynamic_ncols=True,
                        desc="sweep", file=sys.stderr)
        self.flops_total, self.flops_done, self.flops_session = flops_total, flops_done, 0.0
        self.t0 = time.time()
        self._post()

    def _post(self) -> None:
        remaining = self.flops_total - self.flops_done
        eta = ""
        if self.flops_session > 0 and remaining > 0:
            secs = (time.time() - self.t0) * remaining / self.flops_session
            eta = f", ETA {secs / 60:.1f} min" if secs >= 60 else f", ETA {secs:.0f} s"
        self.bar.set_postfix_str(f"FLOPs {self.flops_done:.3g}/{self.flops_total:.3g}{eta}")

    def update(self, flops: float) -> None:
        self.flops_done += flops
        self.flops_session += flops
        self.bar.update(1)
        self._post()

    def reused(self, cells: int, flops: float) -> None:
        """Cells found completed (adaptive rungs): counted as done, but not in the FLOP rate for the ETA."""
        self.flops_done += flops
        self.bar.update(cells)
        self._post()

    def shrink(self, cells: int, flops: float) -> None:
        """Cells the adaptive policy will not run leave the totals."""
        self.bar.total = max(0, (self.bar.total or 0) - cells)
        self.flops_total -= flops
        self.bar.refresh()
        self._post()

    def close(self) -> None:
        self.bar.close()


@dataclass
class _SweepContext:
    """What every phase of one sweep shares, instead of a dozen positional parameters."""

    store: Any  # the RunStore only this driver process writes to
    train_fn: TrainFn
    grid: Grid
    executor: ExecutorSettings
    log: Callable[[str], None]
    progress: bool  # show the progress bar
    location: str  # the store's path, for the log


def run_sweep(
    grid: Grid,
    *,
    store: str | os.PathLike[str] | None = None,
    executor: str = "local",
    workers: int = 1,
    train_fn: str | TrainFn | None = None,
    ray_address: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    adaptive: bool | Mapping[str, Any] | AdaptiveSpec | None = None,
    deadline: float | None = None,
) -> SweepResult:
    """Expand the grid, register the cells, and train the ones not completed yet (see the module docstring).

    ``adaptive``: None follows the grid's ``adaptive`` key; True turns the adaptive policy on (the grid's
    settings, else the defaults); False runs the full grid; a mapping or :class:`AdaptiveSpec` gives the
    settings. Adaptive sweeps run the experimental design of :mod:`embrecipe.sweep.design` (with the grid's LR search
    inside it) and stop when the recipe's expected regret is below the threshold or the experiment budget is
    spent. ``deadline``: adaptive sweeps start no new batch after this ``time.time()``.
    """
    from embrecipe.runs.store import RunStore

    if executor not in ("local", "ray"):
        raise InputError(f"unknown executor {executor!r}; expected local or ray")
    if workers < 1:
        raise InputError("workers must be >= 1")
    spec = resolve_adaptive(adaptive, grid)
    location = str(store or grid.store or (grid.base_dir / f"{grid.name}.sqlite"))
    fn = resolve_train_fn(train_fn or grid.trainer)
    stats = data_stats(grid)
    cells, skipped = expand(grid, stats)
    for s in skipped:
        log(str(s))
    if not cells:
        raise InputError("every cell of the grid was skipped (see the reasons above)")
    check_cells(cells, fn, grid.source)
    for line in fit_shortfalls(cells, waiting=[s for s in skipped if s.reason == WAITS_FOR_LR]):
        log(line)  # before a single run is paid for (dry run and real start alike)
    t0 = time.time()
    if dry_run and not Path(location).exists():
        location = ":memory:"  # a dry run reports; it must not create the store
    # A claim is stale after 3 missed heartbeats of this grid (never by age when heartbeats are off).
    from embrecipe.runs.store import STALE_AFTER_BEATS

    stale_after = STALE_AFTER_BEATS * grid.heartbeat_s if grid.heartbeat_s > 0 else 6 * 3600.0
    st = RunStore(location, stale_after=stale_after)
    if not dry_run:  # a dry run writes nothing: it lists such runs as to run
        adopt_legacy_runs(st, design_cells(grid, stats, cells), log)
    ctx = _SweepContext(store=st, train_fn=fn, grid=grid, log=log, progress=progress, location=location,
                        executor=ExecutorSettings(kind=executor, workers=workers, ray_address=ray_address))
    try:
        if (grid.lr_search is not None or spec is not None) and not dry_run:
            peak = _measure_peak(fn)
            if spec is not None:  # the design runs the LR search itself (cheapest rungs, then transfer)
                result = _run_adaptive(ctx, stats, cells, skipped, spec, deadline)
            else:
                result = _run_lr_search(ctx, stats, cells, skipped)
            result.elapsed_s = time.time() - t0
            _attach_utilization(result, peak)
            log(result.summary())
            return result
        if dry_run and spec is not None:
            return _adaptive_status(ctx, stats, cells, skipped, spec)
        return _run_grid(ctx, cells, skipped, spec=spec, dry_run=dry_run, t0=t0)
    finally:
        st.close()


def adopt_legacy_runs(store: Any, cells: Sequence[Cell], log: Callable[[str], None] | None = None) -> int:
    """Move the completed runs a store holds under the cells' legacy keys (val_data named by path) to their
    keys (val_data named by content): a store written by an older embrecipe resumes without training them
    again. Returns how many moved."""
    # a read first: most cells have nothing under their legacy key, and a rekey is a write transaction
    moved = sum(store.rekey(c.legacy_key, c.key, c.key_config) for c in cells
                if c.legacy_key and store.status(c.legacy_key) == "completed")
    if moved and log is not None:
        log(f"{moved} completed run(s) of this store moved to their new keys (the validation data now enters "
            f"a run's key by content, not path); nothing is retrained")
    return moved


# What `fit`, `plan --laws STORE`, `report` and `check` need per variant (embrecipe.laws: ScalingLaw's checks).
FIT_MIN_RUNS = 6
FIT_MIN_SIZES = 2


def fit_shortfalls(cells: Sequence[Cell], min_runs: int = FIT_MIN_RUNS, min_sizes: int = FIT_MIN_SIZES, *,
                   waiting: Sequence[Skipped] = ()) -> list[str]:
    """Warnings, one line each, for the variants whose cells, all completed, still cannot be fitted: fewer than
    ``min_runs`` runs, fewer than ``min_sizes`` model sizes, or one budget only. LR candidates of one (model,
    budget, seed) count once: only the chosen LR's runs are fitted. ``waiting``: the upper-rung cells that wait
    for the LR search (they will run, at the chosen LR). Empty when every variant can be fitted."""
    runs: dict[str, set[tuple[int, float, Any]]] = {}
    for c in cells:
        runs.setdefault(c.variant, set()).add((c.n_params, c.budget, c.config.get("seed")))
    n_of = {c.model: c.n_params for c in cells}
    for w in waiting:
        if w.model in n_of:  # a waiting cell's model has its search cells among ``cells``
            runs.setdefault(w.variant, set()).add((n_of[w.model], w.budget, None))
    short = {}
    for variant, points in runs.items():
        sizes, budgets = {n for n, _, _ in points}, {b for _, b, _ in points}
        lacks = [f"{len(points)} run(s), need {min_runs}" if len(points) < min_runs else "",
                 f"{len(sizes)} model size(s), need {min_sizes}" if len(sizes) < min_sizes else "",
                 "one budget, need 2" if len(budgets) < 2 else ""]
        if any(lacks):
            short[variant] = ", ".join(x for x in lacks if x)
    if not short:
        return []
    head = ("WARNING: this grid cannot produce a fittable law" if len(short) == len(runs) else
            f"WARNING: {len(short)} of {len(runs)} variants of this grid cannot be fitted")
    return [f"{head}: `fit`, `plan --laws`, `report` and `check` need at least {min_runs} runs from "
            f"{min_sizes} model sizes (and 2 budgets) per variant; add budgets or models before training",
            *(f"  {v}: {why}" for v, why in sorted(short.items()))]


def _run_grid(ctx: _SweepContext, cells: list[Cell], skipped: list[Skipped], *, spec: AdaptiveSpec | None,
              dry_run: bool, t0: float) -> SweepResult:
    """The whole grid in one go (or, with ``dry_run``, the list of what it would run)."""
    st, log = ctx.store, ctx.log
    if not dry_run:
        st.add_pending(c.key_config for c in cells)
    status = {c.key: st.status(c.key) for c in cells}
    done = [c for c in cells if status[c.key] == "completed"]
    # Cheapest budgets first: a partial sweep then already covers every model and method for a first fit.
    todo = sorted((c for c in cells if status[c.key] != "completed"), key=lambda c: (c.budget, c.n_params))
    result = SweepResult(total=len(cells), skipped=skipped, already_done=len(done),
                         flops_planned=sum(c.budget for c in cells))
    log(f"sweep {ctx.grid.name}: {len(cells)} cells ({len(done)} completed, {len(todo)} to run), "
        f"{len(skipped)} skipped; store {ctx.location}")
    if dry_run:
        if spec is not None:
            log("adaptive: rungs after the first run only for the configurations still in the race, so "
                "this list is an upper bound")
        for c in todo:
            steps = "?" if c.planned_steps is None else c.planned_steps
            log(f"  would run {c.variant:<14} {c.model:<24} budget {c.budget:.3g}  "
                f"tokens {c.planned_tokens:.3g}  steps {steps}  key {c.key}")
        return result
    bar = _Progress(len(cells), len(done), result.flops_planned, sum(c.budget for c in done), ctx.progress)
    peak = _measure_peak(ctx.train_fn) if todo else None
    t_run = time.time()
    try:
        _run_cells(ctx, todo, result, bar)
    finally:
        bar.close()
    result.elapsed_s = time.time() - t0
    _attach_utilization(result, peak, time.time() - t_run)
    log(result.summary())
    return result


def lr_choice_from_store(st: Any, cells: list[Cell]) -> dict[tuple[str, str], float]:
    """The LR protocol's choice per (model path, variant) from the search cells' stored runs."""
    from embrecipe.recipe import select_lrs

    runs = []
    for c in cells:
        status = st.status(c.key)
        loss = st.record(c.key).final_val_loss if status == "completed" else None
        if status == "failed" or loss is not None:
            runs.append((str(c.config["model"]), c.variant, c.budget, c.config.get("lr"), loss))
    return select_lrs(runs)


def _run_lr_search(ctx: _SweepContext, stats: DataStats, cells: list[Cell], skipped: list[Skipped]) -> SweepResult:
    """Phase 1: every LR at the search rungs. Phase 2: the upper rungs at each (model, variant)'s best LR."""
    st, grid, log = ctx.store, ctx.grid, ctx.log
    assert grid.lr_search is not None
    search = list(cells)  # before the choice, expand() yields only the search rungs' cells
    waiting = [s for s in skipped if s.reason == WAITS_FOR_LR]
    result = SweepResult(total=len(search) + len(waiting), skipped=[s for s in skipped if s.reason != WAITS_FOR_LR],
                         already_done=0, flops_planned=sum(c.budget for c in search) + sum(s.budget for s in waiting))
    log(f"sweep {grid.name} (LR search at {', '.join(f'{b:.3g}' for b in grid.budgets[:grid.lr_search.rungs])}"
        f" FLOPs): {len(search)} search cells, {len(waiting)} upper-rung cells after the choice; store {ctx.location}")
    bar = _Progress(result.total, 0, result.flops_planned, 0.0, ctx.progress)
    try:
        st.add_pending(c.key_config for c in search)
        todo = [c for c in search if st.status(c.key) != "completed"]
        result.already_done += len(search) - len(todo)
        bar.reused(len(search) - len(todo), sum(c.budget for c in search if c not in todo))
        _run_cells(ctx, sorted(todo, key=lambda c: (c.budget, c.n_params)), result, bar)
        if any(st.status(c.key) not in ("completed", "failed") for c in search):
            log("LR search: some cells are held by other workers; rerun to choose the LRs and go on")
            return result
        choice = lr_choice_from_store(st, search)
        for (model, variant), lr in sorted(choice.items()):
            # every search cell carries its LR (expand sets it from the search grid)
            lrs = sorted({float(c.config["lr"]) for c in search if c.config["model"] == model and c.variant == variant})
            log(f"LR search: {variant} on {Path(model).name}: lr {lr:.3g} (of {', '.join(f'{x:.3g}' for x in lrs)})")
        upper, _ = expand(grid, stats, lr_choice=choice)
        upper = [c for c in upper if c.budget not in set(grid.budgets[:grid.lr_search.rungs])]
        missing = {(s.model, s.variant) for s in waiting} - {(c.model, c.variant) for c in upper}
        for model, variant in sorted(missing):
            log(f"LR search: no LR for {variant} on {model} (every search run failed): its upper rungs are skipped")
        st.add_pending(c.key_config for c in upper)
        todo = [c for c in upper if st.status(c.key) != "completed"]
        result.total = len(search) + len(upper)
        result.already_done += len(upper) - len(todo)
        bar.reused(len(upper) - len(todo), sum(c.budget for c in upper if c not in todo))
        _run_cells(ctx, sorted(todo, key=lambda c: (c.budget, c.n_params)), result, bar)
        return result
    finally:
        bar.close()


def resolve_adaptive(adaptive: bool | Mapping[str, Any] | AdaptiveSpec | None, grid: Grid) -> AdaptiveSpec | None:
    """The adaptive settings a sweep runs with (see :func:`run_sweep`), or None for the full grid."""
    if adaptive is None:
        return grid.adaptive
    if adaptive is True:
        return grid.adaptive or AdaptiveSpec()
    return AdaptiveSpec.from_value(adaptive, source="adaptive")


def _measure_peak(fn: TrainFn) -> dict[str, Any] | None:
    """The utilization denominator, measured on this host (skipped for the synthetic trainer, whose FLOPs
    are not executed)."""
    if getattr(fn, "__module__", "") == "embrecipe.sweep.synthetic":
        return None
    from embrecipe.sweep.placement import measure_peak_flops, visible_gpus_free_mib

    try:
        peak = measure_peak_flops()
    except Exception:  # no torch, or a device error: the sweep still runs, utilization is just not reported
        return None
    peak["devices"] = max(1, len(visible_gpus_free_mib()))
    return peak


def _attach_utilization(result: SweepResult, peak: dict[str, Any] | None, wall: float | None = None) -> None:
    from embrecipe.sweep.placement import sweep_utilization

    if peak is None or not result.ran:
        return
    result.peak = peak
    result.utilization = sweep_utilization(result.flops_spent, wall or result.elapsed_s, peak["flops_per_s"],
                                           peak["devices"])


def _run_cells(ctx: _SweepContext, todo: list[Cell], result: SweepResult, bar: _Progress) -> None:
    """Train ``todo`` on the sweep's executor; each record is stored and tallied as it comes back."""

    def on_result(cell: Cell, record: dict[str, Any]) -> None:
        _finish(ctx.store, cell, record, result, bar, ctx.log)

    executor = make_executor(ctx.executor, ctx.store, ctx.train_fn, ctx.grid, ctx.log)
    executor.run(todo, on_result=on_result, on_busy=lambda cell: result.busy.append(cell.key))


def _config_of(cell: Cell) -> tuple[str, str]:
    # The same (model, variant) identity adaptive.config_id reads back from the cell's record.
    return str(cell.config["model"]), cell.variant


def full_grid_flops(cells: list[Cell], skipped: list[Skipped]) -> float:
    """The model FLOPs of the whole grid the design is measured against: every cell, and with an LR search the
    upper-rung cells that wait for the LR chosen at the search rungs (one run each, at that LR)."""
    return sum(c.budget for c in cells) + sum(s.budget for s in skipped if s.reason == WAITS_FOR_LR)


def design_cells(grid: Grid, stats: DataStats, cells: list[Cell]) -> list[Cell]:
    """Every cell the adaptive design may choose: with an LR search, each upper-rung cell at every LR of the
    search grid (the design trains it at the LR chosen or transferred for its configuration only)."""
    if grid.lr_search is None:
        return cells
    out = {c.key: c for c in cells}
    lrs_of: dict[tuple[str, str], list[float]] = {}
    for c in cells:
        if c.config.get("lr") is not None:
            lrs_of.setdefault(_config_of(c), [])
            if float(c.config["lr"]) not in lrs_of[_config_of(c)]:
                lrs_of[_config_of(c)].append(float(c.config["lr"]))
    width = max((len(v) for v in lrs_of.values()), default=0)
    model_paths = [str(m["path"]) for m in grid.models]
    variants = sorted({c.variant for c in cells})
    for i in range(width):
        # Configurations without a search cell (their cheapest budget is above the search rungs) take the
        # grid's LRs for their model from the search grid itself.
        choice = {}
        for path in model_paths:
            grid_lrs = sorted(grid.lr_search.grid_for(path, grid.train.get("lr")))
            for v in variants:
                lrs = sorted(lrs_of.get((path, v), grid_lrs))
                choice[(path, v)] = lrs[min(i, len(lrs) - 1)]
        upper, _ = expand(grid, stats, lr_choice=choice)
        for c in upper:
            out.setdefault(c.key, c)
    return list(out.values())


def _option(cell: Cell) -> Any:
    from embrecipe.sweep.design import Option

    lr = cell.config.get("lr")
    return Option(model=str(cell.config["model"]), variant=cell.variant, budget=cell.budget,
                  N=float(cell.n_params), D=float(cell.planned_tokens), flops=cell.budget,
                  lr=None if lr is None else float(lr), key=cell.key)


def run_adaptive_sweep(grid: Grid, store: str | os.PathLike[str] | None = None, *,
                       experiment_budget: float | None = None, deadline: float | None = None,
                       adaptive: bool | Mapping[str, Any] | AdaptiveSpec | None = True, **kwargs: Any) -> SweepResult:
    """The adaptive design on ``grid`` (the entry point for drivers such as a GPU-window runner).

    ``experiment_budget``: model FLOPs the design may spend in all (over every session on this store);
    ``deadline``: a ``time.time()`` after which no new batch starts (the runs in flight finish; rerun later
    to go on: the design resumes exactly, its decisions being a function of the store's completed runs).
    Other keyword arguments go to :func:`run_sweep`."""
    spec = resolve_adaptive(adaptive, grid) or AdaptiveSpec()
    if experiment_budget is not None:
        spec = spec.with_overrides(experiment_budget=experiment_budget)
    return run_sweep(grid, store=store, adaptive=spec, deadline=deadline, **kwargs)


def _adaptive_status(ctx: _SweepContext, stats: DataStats, cells: list[Cell], skipped: list[Skipped],
                     spec: AdaptiveSpec) -> SweepResult:
    """``--adaptive --dry-run``: train nothing; print the design's decision on the store's completed runs now
    (the recipe it would give, P(optimal), expected regret, and what it would run next)."""
    from embrecipe.sweep.adaptive import runs_of
    from embrecipe.sweep.design import next_step

    pool = design_cells(ctx.grid, stats, cells)
    target = spec.targets[0] if spec.targets else max(c.budget for c in pool)
    done = [c.key for c in pool if ctx.store.status(c.key) == "completed"]
    runs = runs_of(ctx.store.record(k) for k in done)
    step = next_step(runs, [_option(c) for c in pool], target=target, spec=spec.design(),
                     spent=sum(r.flops for r in runs), experiment_budget=spec.experiment_budget)
    ctx.log(f"adaptive (dry run, nothing trained): {len(runs)} completed runs in {ctx.location}; "
            f"recipe for {target:.3g} FLOPs now:")
    ctx.log(step.line())
    report = AdaptiveReport(spec=spec, target=target, steps=[step], cells_grid=len(cells),
                            flops_grid=full_grid_flops(cells, skipped), runs=len(runs),
                            flops_spent=sum(r.flops for r in runs), stop=step.stop)
    return SweepResult(total=len(cells), skipped=skipped, already_done=len(done), adaptive=report,
                       flops_planned=report.flops_grid)


def _run_adaptive(ctx: _SweepContext, stats: DataStats, cells: list[Cell], skipped: list[Skipped],
                  spec: AdaptiveSpec, deadline: float | None = None) -> SweepResult:
    """The adaptive design (:mod:`embrecipe.sweep.design`): after every batch of finished runs, ask
    :func:`~embrecipe.sweep.design.next_step` what to run next, print its line, write the trace beside the store,
    and stop when it says so. A cell is registered in the store only when the design chooses it."""
    from embrecipe.sweep.adaptive import runs_of, write_trace
    from embrecipe.sweep.design import next_step

    st, grid, log = ctx.store, ctx.grid, ctx.log
    pool = design_cells(grid, stats, cells)
    by_key = {c.key: c for c in pool}
    options = [_option(c) for c in pool]
    target = spec.targets[0] if spec.targets else max(c.budget for c in pool)
    flops_grid = full_grid_flops(cells, skipped)
    report = AdaptiveReport(spec=spec, target=target, cells_grid=len(cells), flops_grid=flops_grid)
    result = SweepResult(total=0, skipped=[s for s in skipped if s.reason != WAITS_FOR_LR], already_done=0,
                         flops_planned=flops_grid, adaptive=report)
    ray_started = ctx.executor.kind == "ray" and start_ray(ctx.executor.workers, ctx.executor.ray_address)
    budget_txt = "" if spec.experiment_budget is None else f", experiment budget {spec.experiment_budget:.3g} FLOPs"
    log(f"sweep {grid.name} (adaptive design, recipe for {target:.3g} FLOPs, stop at expected regret "
        f"{100 * spec.threshold:g}%{budget_txt}): {len(pool)} candidate cells; store {ctx.location}")
    cache: dict[Any, Any] = {}
    design = spec.design()
    try:
        for index in range(100_000):
            done_keys = [c.key for c in pool if st.status(c.key) == "completed"]
            runs = runs_of(st.record(k) for k in done_keys)
            spent = sum(r.flops for r in runs)
            step = next_step(runs, options, target=target, spec=design, spent=spent,
                             experiment_budget=spec.experiment_budget, index=index, cache=cache)
            step.ran = list(report.steps[-1].run) if report.steps else []
            report.steps.append(step)
            report.runs, report.flops_spent = len(runs), spent
            from embrecipe.sweep.design import chosen_lrs

            picks = chosen_lrs(runs)
            report.lr_cost = sum(r.flops for r in runs if r.config in picks and r.lr is not None
                                 and not math.isclose(r.lr, picks[r.config]))
            log(step.line())
            write_trace(ctx.location, {"target": target, "spec": spec.to_dict(), "flops_grid": flops_grid,
                                       "stop": step.stop, "steps": [s.to_dict() for s in report.steps]})
            if step.stop:
                report.stop = step.stop
                return result
            if deadline is not None and time.time() >= deadline:
                log("adaptive: deadline reached; rerun to go on (the design resumes where it stopped)")
                return result
            todo = [by_key[o.key] for o in step.run]
            st.add_pending(c.key_config for c in todo)
            result.total += len(todo)
            bar = _Progress(len(todo), 0, sum(c.budget for c in todo), 0.0, ctx.progress)
            try:
                _run_cells(ctx, todo, result, bar)
            finally:
                bar.close()
            if any(st.status(c.key) != "completed" for c in todo):
                # A decision on missing runs would differ from the one a complete rerun takes; stop here.
                log("adaptive: some chosen cells did not complete (failed or held by another worker); "
                    "rerun the sweep to retry and go on")
                return result
        return result
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _finish(st: Any, cell: Cell, record: dict[str, Any], result: SweepResult, bar: _Progress,
            log: Callable[[str], None]) -> None:
    status = record.get("status", "completed")
    if status != "completed":
        err = str(record.get("error") or record.get("failure") or f"trainer returned status {status!r}")
        st.fail(cell.key, err)
        result.failed[cell.key] = err
        log(f"FAILED {cell.variant} on {cell.model} at {cell.budget:.3g}: {err}")
        bar.update(0.0)
        if record.get("disk_full"):
            raise OutOfDiskSpace(f"disk full while running {cell.variant} on {cell.model} ({err}); the sweep stops "
                                 "here instead of failing every remaining cell: free space and rerun it")
        return
    record.setdefault("key", cell.key)
    st.complete(cell.key, record)
    result.ran.append(cell.key)
    spent = float(record.get("model_flops") or cell.budget)
    result.flops_spent += spent
    bar.update(cell.budget)

