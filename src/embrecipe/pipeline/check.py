r"""A recipe check that can fail: train what the laws recommend at a held-out budget, and what they do not.

At a budget :math:`C` that no fitted run used, :func:`recipe_check`

1. fits the laws on the store's runs at every other budget (the LR protocol's runs included: only each
   (model, variant)'s chosen LR is fitted);
2. plans at :math:`C` and takes the best configuration (model × variant) of **every** variant by the laws —
   the plan's optimum and each other method's champion — and the **naive rule**: the configuration that was
   best *measured* at the largest fitted budget (what one would pick without laws);
3. trains each at :math:`C` with the card's LR and batch size, the two with the lowest predicted loss with
   ``seeds`` seeds (default 2), the others with one;
4. reports, against the best measured mean loss :math:`L^*`, the regret of the plan and of the naive rule,
   :math:`(\bar L_c - L^*)/L^*`, and for every run whether its configuration's interval covered it.

The optimum is thus compared with the best configuration of every *other method*, so a law that prefers the
wrong method shows up as positive regret (the earlier check compared the plan only with its own ranks 2-3,
which were often the same method). Hand-written: it orchestrates our planner and trainer; no library does it.

Check runs go to their own store (default ``<store>-check.sqlite``), keyed like sweep cells, so an interrupted
check resumes and a rerun trains nothing; runs at :math:`C` in the fitted store are never fitted.

Example::

    >>> from embrecipe.pipeline.check import recipe_check                                  # doctest: +SKIP
    >>> rep = recipe_check(records, 1e15, train_fn="synthetic")                   # doctest: +SKIP
    >>> rep.plan_regret, rep.naive_regret, rep.coverage                           # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.flops import check_budget
from embrecipe.jsonio import write_text_atomic
from embrecipe.models.refs import portable
from embrecipe.runs.records import NON_IDENTITY_KEYS, RunRecord, legacy_run_key, run_identity

if TYPE_CHECKING:
    from embrecipe.sweep.cells import Cell
    from embrecipe.sweep.executors import TrainFn

# Settings of a stored run that describe how it ran, not what it is (the run key's operational settings, and a
# simulated kill): dropped from a check run's template, so a check run neither writes nor logs where it did.
_OPERATIONAL = NON_IDENTITY_KEYS | {"stop_after_steps"}


def check_interval(laws: Any, variant: str, n_params: float, tokens: float,
                   level: float) -> tuple[float, float] | None:
    """The interval one check *run* is judged against: the one place to change what "covered" means.

    A check run is one seed, so it is judged against the law's *single-run* prediction interval
    (:meth:`ScalingLaw.interval` with ``kind="run"``: the mean-law bootstrap combined with the run-to-run noise,
    measured from repeated seeds or, without them, the fit's labelled residual scatter), not the narrower
    interval of the mean law.
    """
    law = laws[variant]
    if law.samples_ is None:
        return None
    lo, hi = law.interval(n_params, tokens, level, kind="run")
    return float(lo), float(hi)


@dataclass
class CheckedConfig:
    model: str
    path: str
    variant: str
    roles: list[str]
    predicted: float
    interval: tuple[float, float] | None
    lr: float | None
    rank: int  # in the plan at the check budget
    seeds: list[int]
    losses: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None


@dataclass
class CheckReport:
    budget: float
    level: float
    fitted_budgets: list[float]
    configs: list[CheckedConfig]
    naive_from_budget: float
    provenance: str = ""
    notes: list[str] = field(default_factory=list)

    def _by_role(self, role: str) -> CheckedConfig:
        return next(c for c in self.configs if role in c.roles)

    @property
    def best_measured(self) -> CheckedConfig | None:
        done = [c for c in self.configs if c.mean is not None]
        return min(done, key=lambda c: float(c.mean or 0.0)) if done else None  # every mean is set

    def regret(self, role: str) -> float | None:
        best, c = self.best_measured, self._by_role(role)
        if best is None or best.mean is None or c.mean is None:
            return None
        return (c.mean - best.mean) / best.mean

    @property
    def plan_regret(self) -> float | None:
        return self.regret("plan")

    @property
    def naive_regret(self) -> float | None:
        return self.regret("naive")

    @property
    def coverage(self) -> tuple[int, int]:
        """(runs inside their interval, runs with an interval)."""
        flags = [f for c in self.configs for f in c.covered]
        return sum(flags), len(flags)

    def to_dict(self) -> dict[str, Any]:
        inside, total = self.coverage
        best = self.best_measured
        return {
            "budget": self.budget, "interval_level": self.level, "fitted_budgets": self.fitted_budgets,
            "naive_rule_from_budget": self.naive_from_budget, "provenance": self.provenance,
            "best_measured": None if best is None else {"model": best.model, "variant": best.variant,
                                                       "mean_loss": best.mean},
            "plan_regret": self.plan_regret, "naive_regret": self.naive_regret,
            "coverage": {"inside": inside, "runs": total,
                         "interval": "law bootstrap interval of the mean (check_interval)"},
            "configs": [{**asdict(c), "mean": c.mean} for c in self.configs],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        pct = f"{self.level:.0%}"
        lines = [f"Recipe check at {self.budget:.3g} FLOPs (held out; laws fitted at "
                 f"{', '.join(f'{b:.3g}' for b in self.fitted_budgets)}) — {self.provenance}", ""]
        head = (f"{'role':<22} {'variant':<14} {'model':<16} {'lr':>8} {'pred':>8} {pct + ' interval':>19} "
                f"{'measured (per seed)':<26} {'mean':>8} covered")
        lines += [head, "-" * len(head)]
        for c in self.configs:
            iv = "" if c.interval is None else f"[{c.interval[0]:.4g}, {c.interval[1]:.4g}]"
            runs = ", ".join(f"{x:.4g}" for x in c.losses) + (" FAILED" if c.failed else "")
            cov = "".join("y" if f else "n" for f in c.covered) or "-"
            lr = "?" if c.lr is None else f"{c.lr:.3g}"
            mean = "" if c.mean is None else f"{c.mean:.4g}"
            lines.append(f"{'+'.join(c.roles)[:22]:<22} {c.variant:<14} {c.model[:16]:<16} {lr:>8} "
                         f"{c.predicted:>8.4g} {iv:>19} {runs[:26]:<26} {mean:>8} {cov}")
        best = self.best_measured
        lines.append("")
        if best is not None:
            lines.append(f"best measured mean: {best.variant} on {best.model} ({best.mean:.4g})")
        for role, name in (("plan", "plan"), ("naive", f"naive rule (best measured at {self.naive_from_budget:.3g})")):
            r = self.regret(role)
            c = self._by_role(role)
            lines.append(f"regret of the {name}: " + ("n/a" if r is None else f"{r:+.2%}")
                         + f"  [{c.variant} on {c.model}]")
        inside, total = self.coverage
        lines.append(f"interval coverage: {inside}/{total} runs inside their {pct} interval "
                     "(single-run prediction intervals: the mean-law bootstrap plus run-to-run noise)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _template(records: Sequence[RunRecord], points: Sequence[Any], model: str,
              variant: str) -> dict[str, Any]:
    """A fitted run's training config to copy for (model, variant): same model and variant if one ran (at the
    chosen LR), else the same variant on another model, else any run (model and method replaced)."""
    by_key = {str(r.key): r for r in records}
    # the card names models portably (a testbed name), the store's runs as they were trained (maybe by path)
    ranked = sorted(points, key=lambda p: (portable(p.model) != portable(model), p.variant != variant, -p.budget))
    for p in ranked:
        rec = by_key.get(p.key)
        cfg = rec.config.to_dict() if rec and rec.config else None
        if cfg:
            return {k: v for k, v in cfg.items() if k not in _OPERATIONAL}
    raise InputError("no fitted run records its training config (record['config']); cannot train the check")


def _naive_choice(points: Sequence[Any]) -> tuple[str, str, float]:
    top = max(p.budget for p in points)
    best = min((p for p in points if p.budget == top), key=lambda p: p.loss)
    return best.model, best.variant, top


def recipe_check(
    records: Sequence[RunRecord | Mapping[str, Any]],
    budget: float,
    *,
    train_fn: str | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    seeds: int = 2,
    level: float = 0.9,
    bootstrap: int = 200,
    seed: int = 0,
    check_store: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    min_runs: int = 6,
    workers: int = 1,
    export: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> CheckReport:
    """See the module docstring. ``records``: completed run records (``RunStore.records()``). ``out_dir`` gets
    ``check.json``; with ``export`` also every trained model (``out_dir/<run key>``)."""
    from embrecipe.laws import finite_records
    from embrecipe.planning.planner import plan
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.executors import resolve_train_fn

    check_budget(budget, "check budget", InputError)
    if seeds < 1:
        raise InputError(f"seeds must be >= 1, got {seeds}")
    fit = _fit_without_budget(finite_records(records)[0], budget, bootstrap=bootstrap, seed=seed,
                              min_runs=min_runs)
    p = plan(budget, fit.laws, level=level)
    chosen, naive_from_budget = _choose_configs(p, fit, seeds, level)
    configs = [c for c, _ in chosen]
    report = CheckReport(budget=float(budget), level=level, fitted_budgets=fit.budgets, configs=configs,
                         naive_from_budget=naive_from_budget, provenance=fit.laws.provenance,
                         notes=_fit_notes(fit, budget))
    if dry_run:
        for c in configs:
            log(f"would train {c.variant} on {c.model} at {budget:.3g} (lr {c.lr}, seeds {c.seeds}): "
                f"{'+'.join(c.roles)}")
        return report

    fn = resolve_train_fn(train_fn or ("synthetic" if fit.synthetic else None))
    with RunStore(str(check_store) if check_store else ":memory:") as st:
        jobs = _check_jobs(chosen, fit, float(budget), p.batch_size, fn, out_dir if export else None)
        _train_missing(st, jobs, fn, workers, float(budget), log)
        _score(st, jobs)
    if out_dir is not None:
        _write_report(report, Path(out_dir))
    return report


@dataclass
class _FitWithoutBudget:
    """The laws fitted on every run not at the check budget, and what the later phases read from that fit."""

    laws: Any
    records: list[RunRecord]  # the fitted runs
    points: list[Any]  # their run points, only each (model, variant)'s selected LR
    budgets: list[float]  # the fitted budgets, ascending
    held: int  # stored runs at the check budget, left out
    synthetic: bool  # the fitted runs come from the fake trainer


def _fit_without_budget(runs: list[RunRecord], budget: float, *, bootstrap: int, seed: int,
                        min_runs: int) -> _FitWithoutBudget:
    """Phase 1: fit the laws on the runs at every budget but the check's (the LR protocol's runs included)."""
    from embrecipe.laws import fit_laws, run_point
    from embrecipe.recipe import keep_selected_lr

    held = [r for r in runs if _same_budget(run_point(r).budget, budget)]
    fit_records = [r for r in runs if not _same_budget(run_point(r).budget, budget)]
    if not fit_records:
        raise InputError(f"every run in the store is at the check budget {budget:.3g}: nothing to fit")
    synthetic = any(r.synthetic for r in fit_records)
    laws = fit_laws(fit_records, bootstrap=bootstrap, seed=seed, min_runs=min_runs,
                    provenance="recipe check: fitted without the check budget")
    points, _ = keep_selected_lr([run_point(r) for r in fit_records])
    return _FitWithoutBudget(laws=laws, records=fit_records, points=points,
                             budgets=sorted({p.budget for p in points}), held=len(held), synthetic=synthetic)


def _fit_notes(fit: _FitWithoutBudget, budget: float) -> list[str]:
    notes = []
    if fit.held:
        notes.append(f"{fit.held} stored run(s) at the check budget were left out of the fit")
    if fit.budgets[0] < budget < fit.budgets[-1]:
        notes.append("the check budget lies inside the fitted range: an interpolation check")
    return notes


def _choose_configs(p: Any, fit: _FitWithoutBudget, seeds: int,
                    level: float) -> tuple[list[tuple[CheckedConfig, Any]], float]:
    """Phase 2: every variant's champion by the laws, in the plan's order (the first is the plan's optimum; the
    first two get ``seeds`` seeds), then the naive rule, each with its plan candidate; and the budget the naive
    rule was read at."""
    champions, seen = [], set()
    for cand in p.candidates:
        if cand.feasible and cand.variant not in seen:
            seen.add(cand.variant)
            champions.append(cand)
    naive, naive_from_budget = _naive_candidate(p, fit.points)
    chosen = [(_checked(cand, (["plan"] if i == 0 else []) + [f"best {cand.variant}"],
                        list(range(seeds if i < 2 else 1)), fit.laws, level), cand)
              for i, cand in enumerate(champions)]
    match = next((c for c, _ in chosen if c.path == naive.path and c.variant == naive.variant), None)
    if match is not None:
        match.roles.append("naive")
    else:
        chosen.append((_checked(naive, ["naive"], [0], fit.laws, level), naive))
    return chosen, naive_from_budget


def _naive_candidate(p: Any, points: Sequence[Any]) -> tuple[Any, float]:
    """The plan's option for the configuration best measured at the largest fitted budget, and that budget."""
    nm, nv, n_budget = _naive_choice(points)
    naive = next((c for c in p.candidates if c.variant == nv and (c.path in (nm, portable(nm)) or c.model == nm
                                                                   or c.path.endswith("/" + nm))), None)
    if naive is None:
        raise InputError(f"the naive configuration ({nv} on {nm}) is not among the plan's options")
    return naive, n_budget


def _checked(cand: Any, roles: list[str], seeds: list[int], laws: Any, level: float) -> CheckedConfig:
    return CheckedConfig(model=cand.model, path=cand.path, variant=cand.variant, roles=roles, predicted=cand.loss,
                         interval=check_interval(laws, cand.variant, cand.n_params,
                                                 cand.effective_tokens or cand.tokens, level),
                         lr=cand.lr, rank=cand.rank, seeds=seeds)


@dataclass
class _CheckJob:
    """One check run: a chosen configuration at one seed, as the sweep's executors run it (a cell)."""

    entry: CheckedConfig
    seed: int
    cell: Cell


def _check_jobs(chosen: Sequence[tuple[CheckedConfig, Any]], fit: _FitWithoutBudget, budget: float,
                batch_size: int, fn: Callable[..., Any], export_dir: str | os.PathLike[str] | None) -> list[_CheckJob]:
    """Phase 3a: each chosen configuration's runs, one per seed: a fitted run's training config with the model,
    method, budget, seed, the card's batch size and LR; keyed like a sweep cell (data fingerprint and version
    instead of the data path and output), so an interrupted check resumes."""
    from embrecipe.sweep.cells import Cell

    jobs = []
    for c, cand in chosen:
        base = _template(fit.records, fit.points, c.path, c.variant)
        for s in c.seeds:
            # the store's own name for this model where its runs used it (so a rerun finds the same run keys)
            model = base["model"] if portable(str(base.get("model"))) == portable(c.path) else c.path
            config = {**base, "model": model, "method": dict(fit.laws.methods[c.variant]), "budget": budget,
                      "seed": s, "batch_size": batch_size}
            if c.lr is not None:
                config["lr"] = c.lr
            if "progress" in _config_keys(fn):
                config["progress"] = False
            key_config, key = run_identity(config, fit.laws.data_fingerprint, _val_fingerprint(config))
            legacy = legacy_run_key(config, fit.laws.data_fingerprint)
            if export_dir is not None:  # a trained model per run: only when asked (100s of MB)
                config["out"] = str(Path(export_dir) / key)
            cell = Cell(model=c.model, path=c.path, method=config["method"], variant=c.variant, budget=budget,
                        n_params=cand.n_params, n_trainable=cand.n_trainable,
                        flops_per_token=cand.flops_per_token, planned_tokens=cand.tokens,
                        planned_steps=cand.steps, config=config, key_config=key_config, key=key,
                        legacy_key=legacy if legacy != key else None)
            jobs.append(_CheckJob(entry=c, seed=s, cell=cell))
    return jobs


def _val_fingerprint(config: Mapping[str, Any]) -> str | None:
    """The content fingerprint of a run's validation file (it enters the run key instead of the path); None
    when the run has none, or the file is not here (the run key then keeps the path, as before)."""
    path = config.get("val_data")
    if not isinstance(path, str) or not Path(path).exists():
        return None
    st = os.stat(path)
    return _file_fingerprint(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _file_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    """Read once per check, not once per (configuration, seed) job; an edited file is read again."""
    from embrecipe.data.pairs import load_pairs

    return load_pairs(path).fingerprint()


def _train_missing(st: Any, jobs: list[_CheckJob], fn: TrainFn, workers: int, budget: float,
                   log: Callable[[str], None]) -> None:
    """Phase 3b: register every job in the check store and train those not completed yet."""
    from embrecipe.sweep.orchestration import adopt_legacy_runs

    adopt_legacy_runs(st, [j.cell for j in jobs], log)
    st.add_pending(j.cell.key_config for j in jobs)
    todo = [j for j in jobs if st.status(j.cell.key) != "completed"]
    for j in todo:
        log(f"check: training {j.entry.variant} on {j.entry.model} at {budget:.3g}, seed {j.seed}")
    _train_jobs(st, [j.cell for j in todo], fn, workers, log)


def _train_jobs(st: Any, todo: list[Cell], fn: TrainFn, workers: int, log: Callable[[str], None]) -> None:
    """Train the check's runs on the sweep's executors (in ``workers`` spawned processes when > 1 and more than
    one run is left), recording each in the store; a run another live worker holds is left to it."""
    from embrecipe.sweep.executors import ExecutorSettings, make_executor
    from embrecipe.sweep.grid import Grid

    def finish(cell: Cell, record: dict[str, Any]) -> None:
        try:
            if record.get("status", "completed") != "completed":
                st.fail(cell.key, str(record.get("error") or record.get("failure") or record.get("status")))
            else:
                record.setdefault("key", cell.key)
                st.complete(cell.key, record)
        except BaseException:
            st.release(cell.key)
            raise

    # The check's runs are placed as before: no GPU packing by memory (a grid's `gpu:` setting, which the check
    # has no file for); claims are kept alive by the sweep's heartbeat.
    grid = Grid(models=[], methods=[], budgets=[], train={}, name="check", gpu={"pack": False})
    settings = ExecutorSettings(workers=workers if len(todo) > 1 else 1)
    make_executor(settings, st, fn, grid, log).run(todo, on_result=finish, on_busy=lambda cell: None)


def _score(st: Any, jobs: list[_CheckJob]) -> None:
    """Phase 4: each run's held-out loss from the check store, and whether its configuration's interval covers
    it; a run that failed, is still held by another worker, or has no validation loss is listed as failed."""
    for j in jobs:
        c, key = j.entry, j.cell.key
        row = st.get(key)
        assert row is not None  # every job's key was added as pending above
        if row["status"] != "completed":
            c.failed.append(f"seed {j.seed}: {row.get('error') or row['status']}")
            continue
        rec = st.record(key)
        loss = None if rec is None else rec.final_val_loss
        if loss is None or not math.isfinite(float(loss)):
            c.failed.append(f"seed {j.seed}: no validation loss")
            continue
        c.keys.append(key)
        c.losses.append(float(loss))
        if c.interval is not None:
            c.covered.append(c.interval[0] <= float(loss) <= c.interval[1])


def _write_report(report: CheckReport, out_dir: Path) -> None:
    """Phase 5: ``check.json`` in ``out_dir``, written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "check.json", json.dumps(report.to_dict(), indent=1) + "\n")


def _same_budget(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def _config_keys(fn: Callable[..., Any]) -> set[str]:
    """Settings the trainer accepts by name (the real trainer rejects unknown ones; the fake ignores them)."""
    import dataclasses

    if getattr(fn, "__name__", "") == "train_from_dict":
        from embrecipe.training.config import TrainConfig

        return {f.name for f in dataclasses.fields(TrainConfig)}
    return set()
