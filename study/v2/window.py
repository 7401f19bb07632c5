"""One GPU window of study v2 (issue 19): benchmark (once per card), fast-path smoke, then the study until a deadline.

    python study/v2/window.py --assets .window --out $OUT --deadline-s 540     # what study/v2/window.sh runs

A window is one call of the device tool on a bare machine (docs/gpu_window.md). Everything it measures is written
to ``--out`` as it goes, so a window cut short still returns what it did:

- ``window.json``   what ran, when, on what card, the smoke's verdicts, the study's progress (rewritten each phase);
- ``study.sqlite``  a consistent copy of the run store, refreshed every ``--backup-every`` seconds and at the end:
                    commit it as ``study/v2/study.sqlite``; the next window starts from the committed copy;
- ``study.sqlite.adaptive.json``  the adaptive design's trace, every window's decisions (commit it beside the
                    store; its one-line decisions are also in ``window.json``);
- ``results.json`` / ``results.md``  the GPU benchmark (benchmarks/results.*), on the first window of a card;
- ``logs.tar.gz``   every subprocess's log.

Parts, in order, each bounded by the deadline:

1. **assets**: the carried GGUF → the testbed ladder (``embrecipe testbed models --gguf``), the carried corpus →
   ``{home}/corpus`` (skipped when ``--home`` already has them, as in the CPU rehearsal);
2. **benchmark** (issue 11's GPU section, ``benchmarks/run.py --device cuda --quick``), at most ``--bench-s``
   seconds, only when the committed ``benchmarks/results.json`` has no GPU section for this card;
3. **smoke** of the CUDA fast paths (packing, torch.compile, CUDA graphs), each a few steps in a subprocess with a
   timeout; a failing path is recorded with its error and the study runs without it;
4. **study**: the design named in the spec (``design: adaptive``, the fallback ``plain``, or ``--design``) in a
   subprocess; at the deadline it gets SIGINT (the executor hands running cells back), then SIGKILL; any claim
   left is released, so an interrupted cell is ``pending``, never ``completed``, and the next window trains it
   from the start.

The device tool returns at most 8 files: a GPU window's ``all`` call fills them exactly (the five above with
both results files, ``install.log`` and ``window.log`` of window.sh), so anything new goes into ``window.json``
or ``logs.tar.gz``.

The study store's run keys do the resuming: a cell whose key is ``completed`` in the carried store is never
trained again. The fast-path choice goes into each cell's trainer config, not into its key (packing and compile
change how a step runs, not what it computes), so windows with different verdicts share the same cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SPEC = HERE / "spec.yaml"
DEFAULT_STORE = HERE / "study.sqlite"
DEFAULT_HOME = "/tmp/embrecipe-v2"  # fixed: model paths are part of the run keys
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST_PATHS = {  # trainer overrides of each fast path (docs/performance.md "On a GPU")
    "packing": {"packing": "on"},
    "compile": {"packing": "on", "compile": "default"},
    "cudagraphs": {"packing": "on", "compile": "cudagraphs"},
}
DESIGNS = ("plain", "adaptive")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- small pieces
def backup_store(src: Path, dst: Path) -> bool:
    """A consistent copy of a WAL-mode SQLite store (the file alone could miss the WAL); atomic at ``dst``."""
    if not src.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with sqlite3.connect(src) as a, sqlite3.connect(tmp) as b:
        a.backup(b)
    b.close()
    a.close()
    tmp.replace(dst)
    return True


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unxz(parts: list[Path], dst: Path) -> None:
    """Decompress the concatenation of ``parts`` (one xz stream, split to fit the carry limit) to ``dst``,
    atomically; Python's lzma, so the window needs no xz binary on the GPU image."""
    import lzma

    tmp = dst.with_name(dst.name + ".tmp")
    dec = lzma.LZMADecompressor()
    with tmp.open("wb") as out:
        for part in parts:
            with Path(part).open("rb") as f:
                for block in iter(functools.partial(f.read, 1 << 22), b""):
                    out.write(dec.decompress(block))
    if not dec.eof:
        raise SystemExit(f"{parts[-1]}: the xz stream ends early (a part is missing or cut)")
    tmp.replace(dst)


def card_measured(results_json: Path, device: str) -> bool:
    """True when the committed benchmark results already hold a GPU section measured on this card."""
    if not results_json.is_file():
        return False
    try:
        data = json.loads(results_json.read_text())
    except ValueError:
        return False
    runs = data.get("runs", [data]) if isinstance(data, dict) else data
    for run in runs if isinstance(runs, list) else []:
        if isinstance(run, dict) and run.get("kind") == "gpu" and not run.get("smoke") and run.get("training") \
                and device and device in str(run.get("device", "")):
            return True
    return False


def fast_path_overrides(verdicts: dict[str, dict[str, Any]], use_compile: bool) -> dict[str, Any]:
    """The trainer overrides the study runs with, from the smoke's verdicts: packing when it passed, the padded
    path when it failed, the trainer's default (``auto``: packed on a GPU) when it was not tried; compile/CUDA
    graphs only when asked for (``--study-compile``) and passed."""
    over: dict[str, Any] = {}
    packing = verdicts.get("packing", {})
    if packing.get("ok"):
        over["packing"] = "on"
    elif packing.get("tried", True) and packing:
        over["packing"] = "off"
    if use_compile:
        for name in ("cudagraphs", "compile"):
            if verdicts.get(name, {}).get("ok"):
                over.update(FAST_PATHS[name])
                break
    return over


def load_spec(path: Path, home: str) -> dict[str, Any]:
    """The study spec with ``{home}`` filled in."""
    import yaml

    text = Path(path).read_text().replace("{home}", home)
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise SystemExit(f"{path}: not a mapping")
    return spec


# --------------------------------------------------------------------------------------------- the study
def study_grid(spec: dict[str, Any], base_dir: Path) -> Any:
    """The spec as an embrecipe Grid (the whole grid; the design cuts it into per-(model, variant) grids)."""
    from embrecipe.sweep.grid import grid_from_dict

    keys = ("name", "models", "methods", "budgets", "train", "min_steps", "allow_repeat", "tokens_per_pair",
            "dataset_pairs", "trainer", "lr_search", "heartbeat_s", "gpu")
    return grid_from_dict({k: spec[k] for k in keys if k in spec}, base_dir=base_dir, source=str(base_dir))


def kept_budgets(grid: Any, stats: Any) -> dict[tuple[str, str], list[float]]:
    """Per (model name, variant): the budgets whose cell is kept (>= min_steps, method applicable)."""
    from embrecipe.sweep.cells import expand

    plain = dataclasses.replace(grid, lr_search=None)
    cells, _ = expand(plain, stats)
    kept: dict[tuple[str, str], list[float]] = {}
    for c in cells:
        kept.setdefault((c.model, c.variant), []).append(c.budget)
    return {k: sorted(v) for k, v in kept.items()}


def pair_grid(grid: Any, model: str, variant: str, budgets: list[float], seed: int | None = None) -> Any:
    """The grid of one (model, variant) over ``budgets``; its LR search (if any) at ``budgets[0]``."""
    from embrecipe.models.methods import method_from_dict

    models = [m for m in grid.models if m["name"] == model]
    methods = [m for m in grid.methods if method_from_dict(m).key == variant]
    train = dict(grid.train) if seed is None else {**grid.train, "seed": seed}
    return dataclasses.replace(grid, models=models, methods=methods, budgets=list(budgets), train=train)


def lr_choice(store: Any, cells: Iterable[Any]) -> dict[tuple[str, str], float]:
    """The LR protocol's choice per (model path, variant) from the search cells in the store
    (:func:`embrecipe.recipe.select_lrs`, the rule ``embrecipe fit`` re-applies)."""
    from embrecipe.recipe import select_lrs

    runs = []
    for c in cells:
        status = store.status(c.key)
        rec = store.record(c.key) if status == "completed" else None
        loss = rec.final_val_loss if rec is not None else None
        if status == "failed" or loss is not None:
            runs.append((str(c.config["model"]), c.variant, c.budget, c.config.get("lr"), loss))
    return select_lrs(runs)


def rung_cells(grid: Any, stats: Any, store: Any, kept: dict[tuple[str, str], list[float]], budget: float,
               seeds: dict[str, Any], log: Callable[[str], None]) -> list[Any]:
    """Every cell of the plain design at one budget: the LR search of the pairs whose lowest kept budget it is,
    the chosen-LR cell of the pairs searched below it, and the extra seeds where the spec asks for them."""
    from embrecipe.sweep.cells import expand

    out: list[Any] = []
    seed_cells = {tuple(x) for x in seeds.get("cells", [])}
    for (model, variant), budgets in sorted(kept.items()):
        if not any(math.isclose(budget, b, rel_tol=1e-9) for b in budgets):
            continue
        low = budgets[0]
        if grid.lr_search is None:
            out += expand(pair_grid(grid, model, variant, [budget]), stats)[0]
            continue
        if math.isclose(budget, low, rel_tol=1e-9):
            out += expand(pair_grid(grid, model, variant, [low]), stats)[0]  # the search: one cell per LR
            continue
        search = expand(pair_grid(grid, model, variant, [low]), stats)[0]
        choice = lr_choice(store, search)
        if not choice:
            log(f"  {variant} on {model}: no LR chosen yet (search at {low:.3g} not finished): waits")
            continue
        upper = [c for c in expand(pair_grid(grid, model, variant, [low, budget]), stats, lr_choice=choice)[0]
                 if math.isclose(c.budget, budget, rel_tol=1e-9)]
        out += upper
        if (model, variant) in seed_cells and math.isclose(budget, float(seeds.get("budget", -1)), rel_tol=1e-9):
            out += extra_seed_cells(grid, stats, model, variant, low, budget, choice, seeds.get("extra", []))
    return out


def extra_seed_cells(grid: Any, stats: Any, model: str, variant: str, low: float, budget: float,
                     choice: dict[tuple[str, str], float] | None, extra: Iterable[Any]) -> list[Any]:
    """The noise term's cells of one (model, variant) at ``budget``: one per extra seed, at the chosen LR (the
    same keys whichever design asks: the plain rung and the adaptive design's epilogue)."""
    from embrecipe.sweep.cells import expand

    out: list[Any] = []
    for s in extra:
        g = pair_grid(grid, model, variant, [low, budget], seed=int(s))
        out += [c for c in expand(g, stats, lr_choice=choice)[0] if math.isclose(c.budget, budget, rel_tol=1e-9)]
    return out


def run_cells(store: Any, grid: Any, train_fn: Any, cells: list[Any], workers: int, overrides: dict[str, Any],
              log: Callable[[str], None]) -> dict[str, int]:
    """Register ``cells``, train those not completed through embrecipe's executors (claims, heartbeats, Ctrl-C
    hands the running ones back), store each record as it comes back."""
    from embrecipe.sweep.executors import ExecutorSettings, make_executor

    store.add_pending(c.key_config for c in cells)
    todo = [c for c in cells if store.status(c.key) != "completed"]
    for c in todo:  # how a step runs, not what it computes: into the trainer's config, never into the key
        c.config.update(overrides)
    tally = {"done_before": len(cells) - len(todo), "completed": 0, "failed": 0, "busy": 0}

    def on_result(cell: Any, record: dict[str, Any]) -> None:
        status = record.get("status", "completed")
        if status != "completed":
            err = str(record.get("error") or record.get("failure") or f"trainer returned status {status!r}")
            store.fail(cell.key, err)
            tally["failed"] += 1
            log(f"  FAILED {cell.variant} on {cell.model} at {cell.budget:.3g}: {err[:200]}")
            return
        record.setdefault("key", cell.key)
        store.complete(cell.key, record)
        tally["completed"] += 1
        log(f"  done {cell.variant} on {cell.model} at {cell.budget:.3g} lr {cell.config.get('lr')} "
            f"seed {cell.config.get('seed')}: loss {record.get('final_val_loss')}")

    def on_busy(cell: Any) -> None:
        tally["busy"] += 1

    if todo:
        executor = make_executor(ExecutorSettings(workers=workers), store, train_fn, grid, log)
        executor.run(sorted(todo, key=lambda c: (c.budget, -c.n_params)), on_result=on_result, on_busy=on_busy)
    return tally


class WithOverrides:
    """A trainer with the fast-path overrides merged into each cell's config at call time: after the run key
    is computed (how a step runs, not what it computes), for the design that builds its cells inside
    ``embrecipe.sweep.orchestration``. A module-level class so that the process pool can pickle it."""

    def __init__(self, fn: Any, overrides: dict[str, Any]) -> None:
        self.fn, self.overrides = fn, dict(overrides)

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.fn({**config, **self.overrides})


def design_setup(args: argparse.Namespace, spec: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """What both designs start from: the grid, its data stats, the trainer and the fast-path overrides."""
    from embrecipe.sweep.cells import data_stats
    from embrecipe.sweep.executors import resolve_train_fn

    grid = study_grid(spec, Path(args.spec).parent)
    stats = data_stats(grid)
    overrides = json.loads(args.overrides or "{}")
    train_fn = resolve_train_fn(spec.get("trainer"))
    if getattr(train_fn, "__module__", "") == "embrecipe.sweep.synthetic":
        overrides = {}  # the synthetic trainer computes nothing: no fast paths
    return grid, stats, train_fn, overrides


def plain_design(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    """The plain grid, rung by rung, cheapest first (so every window adds whole rungs)."""
    from embrecipe.runs.store import RunStore

    grid, stats, train_fn, overrides = design_setup(args, spec)
    kept = kept_budgets(grid, stats)
    progress: list[dict[str, Any]] = []
    with RunStore(args.store) as st:
        for budget in sorted(grid.budgets):
            if time.time() > args.until:
                log(f"deadline: rung {budget:.3g} not started")
                break
            cells = rung_cells(grid, stats, st, kept, budget, spec.get("seeds") or {}, log)
            log(f"rung {budget:.3g}: {len(cells)} cells")
            t0 = time.time()
            tally = run_cells(st, grid, train_fn, cells, args.workers, overrides, log)
            progress.append({"budget": budget, "cells": len(cells), **tally, "seconds": time.time() - t0})
            log(f"rung {budget:.3g}: {tally}")
            Path(args.progress).write_text(json.dumps(progress, indent=1) + "\n")
    return 0


def plan_summary(spec: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """What the plain design trains, before anything runs: per rung the cells (LR searches x the LRs, the
    chosen-LR cells, the extra seeds) and their model FLOPs (``window.py plan``)."""
    from embrecipe.sweep.cells import data_stats

    grid = study_grid(spec, base_dir)
    stats = data_stats(grid)
    kept = kept_budgets(grid, stats)
    n_lrs = len(grid.lr_search.grid_for("smollm2", None)) if grid.lr_search is not None else 1
    seeds = spec.get("seeds") or {}
    seed_cells = {tuple(x) for x in seeds.get("cells", [])}
    rungs = []
    for budget in sorted(grid.budgets):
        search = sum(1 for b in kept.values() if math.isclose(b[0], budget, rel_tol=1e-9))
        upper = sum(1 for b in kept.values() if b[0] < budget and any(math.isclose(budget, x, rel_tol=1e-9) for x in b))
        extra = len(seeds.get("extra", [])) * sum(
            1 for pair, b in kept.items() if pair in seed_cells
            and math.isclose(budget, float(seeds.get("budget", -1)), rel_tol=1e-9) and b[0] < budget)
        cells = search * n_lrs + upper + extra
        rungs.append({"budget": budget, "lr_search_pairs": search, "chosen_lr_cells": upper, "extra_seeds": extra,
                      "cells": cells, "model_flops": cells * budget})
    ignored = [list(p) for p in seed_cells if p not in kept or not kept[p][0] < float(seeds.get("budget", -1))]
    dropped = [f"{m} {v}" for m in (x["name"] for x in grid.models) for v in
               sorted({k[1] for k in kept}) if (m, v) not in kept]
    return {"tokens_per_pair": stats.tokens_per_pair, "pairs": stats.pairs, "kept_pairs": len(kept),
            "never_kept": dropped, "seed_cells_without_a_chosen_lr": ignored, "rungs": rungs, "cells": sum(r["cells"] for r in rungs),
            "model_flops": sum(r["model_flops"] for r in rungs)}


def adaptive_settings(spec: dict[str, Any], spec_path: Path, workers: int, plain_flops: float | None = None) -> Any:
    """The spec's ``adaptive:`` settings as an :class:`embrecipe.sweep.adaptive.AdaptiveSpec`, with the study's
    defaults: the recipe for the held-out check budget (the largest budget, which ``window.py check`` runs),
    an experiment budget of the plain grid's model FLOPs (``experiment_budget: plain``: the design never costs
    more than the plain study would), and ``batch`` = the window's ``--workers`` (one decision fills the GPU)."""
    from embrecipe.errors import EmbrecipeError
    from embrecipe.sweep.adaptive import AdaptiveSpec

    raw = dict(spec.get("adaptive") or {})
    if raw.get("experiment_budget", "plain") == "plain":
        raw["experiment_budget"] = plain_flops or plan_summary(spec, spec_path.parent)["model_flops"]
    raw.setdefault("target", max(float(b) for b in spec["budgets"]))
    raw.setdefault("batch", workers)
    try:
        settings = AdaptiveSpec.from_value(raw, source=str(spec_path))
    except (EmbrecipeError, TypeError, ValueError) as exc:  # the design's one-line input errors, as the spec's
        raise SystemExit(f"{spec_path}: adaptive: {exc}") from None
    assert settings is not None
    return settings


def uses_real_trainer(spec: dict[str, Any]) -> bool:
    """Whether the spec trains with the real trainer (old and current names alike), not the synthetic one."""
    from embrecipe.sweep.grid import DEFAULT_TRAIN_FN, LEGACY_TRAIN_FNS

    name = str(spec.get("trainer") or DEFAULT_TRAIN_FN)
    return LEGACY_TRAIN_FNS.get(name, name) == DEFAULT_TRAIN_FN


def adaptive_design(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    """Issue 20's design on the whole study grid (:func:`embrecipe.sweep.orchestration.run_adaptive_sweep`, its LR search
    inside), resumed from the store (its decisions are a function of the completed runs and the seed), no new
    batch after ``--until``. Once it stops, the spec's extra seeds of the cells it ran at ``seeds.budget``
    (the noise term), while the experiment budget and the deadline allow."""
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.orchestration import run_adaptive_sweep

    grid, stats, train_fn, overrides = design_setup(args, spec)
    plain_flops = plan_summary(spec, Path(args.spec).parent)["model_flops"]  # reading the corpus: once
    settings = adaptive_settings(spec, Path(args.spec), args.workers, plain_flops)
    fn = WithOverrides(train_fn, overrides) if overrides else train_fn
    decisions: list[str] = []

    def log_decision(msg: str) -> None:
        log(msg)
        if msg.startswith("adaptive step"):  # a window cut mid-batch still says where the design stood
            decisions.append(msg)
            Path(args.progress).write_text(json.dumps({"design": "adaptive", "stop": None, "decisions": len(decisions),
                                                       "last": msg}, indent=1) + "\n")

    result = run_adaptive_sweep(grid, str(args.store), experiment_budget=settings.experiment_budget,
                                deadline=args.until, adaptive=settings, train_fn=fn, workers=args.workers,
                                progress=False, log=log_decision)
    report = result.adaptive
    last = report.steps[-1] if report is not None and report.steps else None
    progress: dict[str, Any] = {"design": "adaptive", "target": settings.targets[0],
                                "experiment_budget": settings.experiment_budget, "plain_grid_flops": plain_flops,
                                "fraction_of_plain": None if report is None else report.flops_spent / plain_flops,
                                "stop": None if report is None else report.stop, "ran": len(result.ran),
                                "failed": len(result.failed), "decisions": 0 if report is None else len(report.steps),
                                "flops_spent": None if report is None else report.flops_spent,
                                "recipe": None if last is None else last.to_dict().get("recipe"),
                                "expected_regret": None if last is None else last.expected_regret,
                                "last": decisions[-1] if decisions else None}
    Path(args.progress).write_text(json.dumps(progress, indent=1, default=str) + "\n")
    if report is None or not report.stop or time.time() > args.until:
        return 0
    seeds = spec.get("seeds") or {}
    with RunStore(args.store) as st:
        cells = adaptive_seed_cells(grid, stats, st, seeds, budget_left=settings.experiment_budget - report.flops_spent)
        log(f"adaptive design stopped ({report.stop}); extra seeds of the cells it ran at "
            f"{float(seeds.get('budget', 0)):.3g}: {len(cells)} cells")
        if cells:
            progress["extra_seeds"] = run_cells(st, grid, train_fn, cells, args.workers, overrides, log)
    Path(args.progress).write_text(json.dumps(progress, indent=1, default=str) + "\n")
    return 0


def adaptive_seed_cells(grid: Any, stats: Any, store: Any, seeds: dict[str, Any], budget_left: float) -> list[Any]:
    """The spec's extra-seed cells whose seed-0 cell the adaptive design completed, at the LR that cell ran at
    (chosen by its own search or transferred), as many as the experiment budget still affords."""
    if not seeds.get("extra"):
        return []
    budget = float(seeds["budget"])
    kept = kept_budgets(grid, stats)
    paths = {m["name"]: str(m["path"]) for m in grid.models}
    out: list[Any] = []
    for model, variant in (tuple(x) for x in seeds.get("cells", [])):
        budgets = kept.get((model, variant), [])
        if not any(math.isclose(budget, b, rel_tol=1e-9) for b in budgets) or not budgets[0] < budget:
            continue  # no cell at seeds.budget, or it is the pair's LR search rung (no single LR)
        lrs = grid.lr_search.grid_for(paths[model], grid.train.get("lr")) if grid.lr_search is not None else [None]
        for lr in lrs:  # the LR the design ran this cell at: its seed-0 key is completed at that LR only
            choice = None if lr is None else {(paths[model], variant): lr}
            seed0 = extra_seed_cells(grid, stats, model, variant, budgets[0], budget, choice, [grid.train.get("seed", 0)])
            if seed0 and store.status(seed0[0].key) == "completed":
                for c in extra_seed_cells(grid, stats, model, variant, budgets[0], budget, choice, seeds["extra"]):
                    if store.status(c.key) == "completed":
                        budget_left -= c.budget  # paid in an earlier window: still counts against the budget
                    elif c.budget <= budget_left:
                        out.append(c)
                        budget_left -= c.budget
                break
    return out


def study_main(args: argparse.Namespace) -> int:
    spec = load_spec(Path(args.spec), args.home)
    design = args.design or spec.get("design", "plain")
    if design not in DESIGNS:
        raise SystemExit(f"{args.spec}: design must be one of {', '.join(DESIGNS)}, got {design!r}")
    return {"plain": plain_design, "adaptive": adaptive_design}[design](args, spec)


# --------------------------------------------------------------------------------------------- the window
class Window:
    """The window's bookkeeping: deadline, ``window.json`` in --out, subprocess logs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.until = self.t0 + args.deadline_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # logs live beside the work store and travel as one logs.tar.gz ($OUT returns at most 8 files)
        self.logs = Path(args.work) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {"started": self.t0, "deadline_s": args.deadline_s, "argv": sys.argv,
                                     "home": args.home, "parts": {}}

    def left(self) -> float:
        return self.until - time.time()

    def save(self) -> None:
        self.info["elapsed_s"] = time.time() - self.t0
        tmp = self.out / "window.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=1, default=str) + "\n")
        tmp.replace(self.out / "window.json")

    def pack_logs(self) -> None:
        tmp = self.out / "logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
        tmp.replace(self.out / "logs.tar.gz")

    def env(self) -> dict[str, str]:
        src = str(REPO / "src")
        path = os.environ.get("PYTHONPATH", "")
        return {**os.environ, "EMBRECIPE_HOME": self.args.home, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{path}:{src}" if path else src}

    def run(self, name: str, cmd: list[str], timeout: float, stop: str = "kill", grace: float = 10.0
            ) -> dict[str, Any]:
        """A subprocess (own process group) with its log in logs/<name>.log, ended at ``timeout`` seconds:
        ``stop="int"`` sends SIGINT first (the executor hands its running cells back), SIGKILL ``grace`` s later."""
        t = time.time()
        with (self.logs / f"{name}.log").open("w") as lf:
            p = subprocess.Popen(cmd, env=self.env(), stdout=lf, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=str(REPO))
            try:
                rc: int | None = p.wait(timeout=max(1.0, timeout))
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                if stop == "int":
                    os.killpg(p.pid, signal.SIGINT)
                    try:
                        p.wait(timeout=grace)
                    except subprocess.TimeoutExpired:
                        pass
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                rc = p.wait()
        return {"returncode": rc, "timed_out": timed_out, "seconds": round(time.time() - t, 1)}


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        import importlib.metadata as md

        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        for pkg in ("transformers", "sentence-transformers", "peft", "datasets", "gguf"):
            try:
                info[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                info[pkg] = None
    except Exception as exc:  # recorded: the window goes on and the study subprocess says what is wrong
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def join_gguf(w: Window) -> Path | None:
    """The GGUF from its two carried halves: part 1 stashed in --work by the stage call, part 2 carried now
    (the whole file is over the carry limit: docs/gpu_window.md). None when this window carries no GGUF."""
    assets = Path(w.args.assets) if w.args.assets else None
    if assets is None or not (assets / "manifest.json").is_file():
        return None
    manifest = json.loads((assets / "manifest.json").read_text())
    if "gguf_sha256" not in manifest:
        return None
    parts = [Path(w.args.work) / "gguf.xz.part1", assets / "gguf.xz.part2"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: the stage call (window.sh stage) must run first, on the "
                         "same machine, less than 30 s before this call (the machine goes back when idle)")
    gguf = Path(w.args.work) / GGUF_NAME
    t = time.time()
    unxz(parts, gguf)
    got = sha256_file(gguf)
    w.info["parts"]["gguf"] = {"seconds": round(time.time() - t, 1), "sha256_ok": got == manifest["gguf_sha256"]}
    if got != manifest["gguf_sha256"]:
        raise SystemExit(f"{gguf}: sha256 {got} is not the carried {manifest['gguf_sha256']}")
    return gguf


def prepare_assets(w: Window) -> None:
    """The carried GGUF → the ladder, the carried corpus → {home}/corpus (each only when missing: the CPU
    rehearsal gives its own models)."""
    home, assets = Path(w.args.home), Path(w.args.assets) if w.args.assets else None
    corpus = home / "corpus" / "embrecipe-corpus-v1"
    if not (corpus / "train.jsonl").is_file() and assets is not None and (assets / "corpus").is_dir():
        corpus.mkdir(parents=True, exist_ok=True)
        t = time.time()
        unxz([assets / "corpus" / "train.jsonl.xz"], corpus / "train.jsonl")
        for f in (assets / "corpus").iterdir():
            if not f.name.endswith(".xz"):
                shutil.copy2(f, corpus / f.name)
        manifest = json.loads((assets / "manifest.json").read_text()) if (assets / "manifest.json").is_file() else {}
        ok = manifest.get("train_jsonl_sha256") in (None, sha256_file(corpus / "train.jsonl"))
        w.info["parts"]["corpus"] = {"seconds": round(time.time() - t, 1), "sha256_ok": ok}
        if not ok:
            raise SystemExit(f"{corpus / 'train.jsonl'}: sha256 differs from the carried manifest's")
    family = home / "testbed" / "smollm2-family.json"
    if not family.is_file():
        gguf = join_gguf(w)
        if gguf is not None:
            w.info["parts"]["ladder"] = w.run("ladder", [sys.executable, "-m", "embrecipe.cli", "testbed", "models",
                                                         "--gguf", str(gguf)], timeout=min(240.0, w.left()))
    w.save()


def benchmark(w: Window, device: str) -> None:
    results = REPO / "benchmarks" / "results.json"
    if w.args.bench == "skip" or (w.args.bench == "auto" and (device == "cpu" or card_measured(results, device))):
        why = "--bench skip" if w.args.bench == "skip" else ("no GPU" if device == "cpu" else "card already measured")
        w.info["parts"]["benchmark"] = {"skipped": why}
        w.save()
        return
    seconds = min(w.args.bench_s, w.left() - 60)
    if seconds < 60:
        w.info["parts"]["benchmark"] = {"skipped": f"only {w.left():.0f} s left"}
        w.save()
        return
    stem = REPO / "benchmarks" / "results"
    cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--device", "cuda", "--quick", "--deadline-s",
           str(int(seconds - 20)), "--out", str(stem)]
    if w.args.assets and (Path(w.args.assets) / "bench" / "smollm2").is_dir():
        cmd += ["--assets", str(Path(w.args.assets) / "bench")]  # shape twins until the ladder is built
    if device == "cpu":
        cmd.append("--rehearsal")
    res = w.run("benchmark", cmd, timeout=seconds)
    for suffix in (".json", ".md"):  # partial results too: benchmarks/gpu.py writes them row by row
        if stem.with_suffix(suffix).is_file():
            shutil.copy2(stem.with_suffix(suffix), w.out / f"results{suffix}")
    w.info["parts"]["benchmark"] = res
    w.save()


SMOKE_CODE = r"""
import json, sys, time
from embrecipe.training.trainer import train_from_dict
cfg = json.loads(sys.argv[1])
t = time.time()
rec = train_from_dict(cfg)
rec = rec if isinstance(rec, dict) else rec.to_dict()
print("SMOKE", json.dumps({"steps": rec.get("steps"), "loss": rec.get("final_val_loss"),
      "status": rec.get("status", "completed"), "seconds": time.time() - t}))
"""


def smoke_model(w: Window, spec: dict[str, Any]) -> str:
    """The smoke's model: the spec's smallest when it exists (the rehearsal), else a 2-layer shape twin of the
    testbed (random weights, its config and tokenizer) from the carried bench assets: the stage call runs
    before the ladder is built."""
    first = str(spec["models"][0]["path"])
    if Path(first).is_dir():
        return first
    src = Path(w.args.assets or ".") / "bench" / "smollm2"
    out = Path(w.args.work) / "smoke-model"
    if not (out / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaModel

        cfg = LlamaConfig.from_pretrained(src)
        cfg.num_hidden_layers = 2
        for key, value in list(cfg.to_dict().items()):  # per-layer lists shrink with the depth
            if isinstance(value, list) and len(value) > 2 and key.endswith(("layer_types", "_layers")):
                setattr(cfg, key, value[:2])
        torch.manual_seed(0)
        LlamaModel(cfg).save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def smoke_data(w: Window, rows: int = 4096) -> str:
    """A small slice of the shipped docstring pairs (in the working tree: the corpus comes with the study call)."""
    import gzip

    src = REPO / "src" / "embrecipe" / "resources" / "pairs" / "train.jsonl.gz"
    dst = Path(w.args.work) / "smoke-pairs.jsonl"
    with gzip.open(src, "rt") as f, dst.open("w") as g:
        for i, line in enumerate(f):
            if i >= rows:
                break
            g.write(line)
    return str(dst)


def smoke(w: Window, model: str, data: str) -> dict[str, dict[str, Any]]:
    """Each fast path on a few steps of ``model``; ok only when the run completes with a finite loss."""
    verdicts: dict[str, dict[str, Any]] = {}
    for name in [p for p in w.args.smoke_paths.split(",") if p]:
        seconds = min(w.args.smoke_s, w.left() - 15)
        if seconds < 10:
            verdicts[name] = {"ok": False, "tried": False, "why": "deadline: not tried"}
            continue
        cfg = {"model": model, "data": data, "budget": w.args.smoke_budget, "batch_size": w.args.smoke_batch,
               "max_seq_length": 75, "progress": False, "seed": 0, "out": str(Path(w.args.work) / f"smoke-{name}"),
               "overwrite": True, "val_size_cap": 64, "val_data": data, **FAST_PATHS[name]}
        res = w.run(f"smoke-{name}", [sys.executable, "-c", SMOKE_CODE, json.dumps(cfg)], timeout=seconds)
        text = (w.logs / f"smoke-{name}.log").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("SMOKE ")), None)
        got = json.loads(line[6:]) if line else {}
        loss = got.get("loss")
        ok = res["returncode"] == 0 and got.get("status") == "completed" and loss is not None and math.isfinite(loss)
        why = None if ok else ("timed out" if res["timed_out"] else (text.strip().splitlines() or ["no output"])[-1][:300])
        verdicts[name] = {"ok": ok, **res, **got, **({"why": why} if why else {})}
        log(f"smoke {name}: {'ok' if ok else 'FAILED (' + str(why) + ')'}")
    return verdicts


def start(args: argparse.Namespace) -> tuple[Window, dict[str, Any], str]:
    w = Window(args)
    w.info["part"] = args.part
    w.info["device"] = device_info()
    device = str(w.info["device"].get("device", "cpu"))
    if w.info["device"].get("cuda"):
        from embrecipe.sweep.placement import measure_peak_flops

        w.info["peak"] = measure_peak_flops()  # the denominator of the study's utilization
        w.info["peak_flops_per_s"] = w.info["peak"]["flops_per_s"]
    log(f"window ({args.part}): {device}, deadline in {args.deadline_s:.0f} s")
    w.save()
    return w, load_spec(Path(args.spec), args.home), device


def stage_part(w: Window, spec: dict[str, Any], device: str) -> None:
    """Call 1 of a window: stash the GGUF's first half, the benchmark (first window of a card), the smoke."""
    assets = Path(w.args.assets) if w.args.assets else None
    if assets is not None and (assets / "gguf.xz.part1").is_file():
        shutil.copy2(assets / "gguf.xz.part1", Path(w.args.work) / "gguf.xz.part1")
        w.info["parts"]["stash"] = {"gguf.xz.part1": (assets / "gguf.xz.part1").stat().st_size}
    benchmark(w, device)
    real = uses_real_trainer(spec)
    wanted = real and any(p for p in w.args.smoke_paths.split(","))
    verdicts = smoke(w, smoke_model(w, spec), smoke_data(w)) if wanted else {}
    w.info["parts"]["smoke"] = verdicts
    (Path(w.args.work) / "smoke.json").write_text(json.dumps(verdicts, indent=1, default=str) + "\n")
    w.save()


def trace_of(store: Path) -> Path:
    """The adaptive design's trace beside a store (``embrecipe.sweep.adaptive.trace_path``: commit it with the store;
    ``embrecipe report`` draws FLOPs spent vs expected regret from it)."""
    return store.with_name(store.name + ".adaptive.json")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def merged_trace(earlier: dict[str, Any] | None, now: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trace of every window so far: the design rewrites its trace per session (it resumes from the
    store, not from the trace), so the earlier windows' decisions are kept in front of this window's."""
    if now is None:
        return earlier
    if not earlier:
        return now
    steps = list(earlier.get("steps", [])) + list(now.get("steps", []))
    return {**now, "steps": steps, "windows": int(earlier.get("windows", 1)) + 1}


def back_up_study(w: Window, store: Path, earlier: dict[str, Any] | None) -> None:
    """What the study part returns, refreshed while it runs and at its end: the store, the adaptive trace
    (every window's, as ``study.sqlite.adaptive.json``; absent for the plain design) and the logs."""
    backup_store(store, w.out / "study.sqlite")
    trace = merged_trace(earlier, read_json(trace_of(store)))
    if trace is not None:
        tmp = w.out / (trace_of(w.out / "study.sqlite").name + ".tmp")
        tmp.write_text(json.dumps(trace, indent=1) + "\n")
        tmp.replace(trace_of(w.out / "study.sqlite"))
    w.pack_logs()


def decision_lines(log_file: Path) -> list[str]:
    """The adaptive design's one line per decision and its summary, from the study's log."""
    if not log_file.is_file():
        return []
    lines = [ln.split("] ", 1)[1] if ln.startswith("[") and "] " in ln else ln  # log()'s time stamp
             for ln in log_file.read_text(errors="replace").splitlines()]
    return [ln.strip() for ln in lines if ln.startswith(("adaptive step", "adaptive (", "adaptive:", "sweep "))
            or "adaptive design stopped" in ln]


def study_part(w: Window, spec: dict[str, Any]) -> None:
    """Call 2 of a window: the ladder and the corpus, then the study from the committed store until the deadline."""
    from embrecipe.runs.store import RunStore

    prepare_assets(w)
    real = uses_real_trainer(spec)
    smoke_file = Path(w.args.work) / "smoke.json"
    verdicts = json.loads(smoke_file.read_text()) if smoke_file.is_file() else {}
    overrides = fast_path_overrides(verdicts, w.args.study_compile) if real else {}
    w.info["parts"]["smoke"] = verdicts
    w.info["study_overrides"] = overrides
    w.info["design"] = w.args.design or spec.get("design", "plain")
    w.save()

    # resume from the committed store; any claim in it is released (this window is the only worker)
    store = Path(w.args.work) / "study.sqlite"
    if not store.exists() and Path(w.args.store_from).is_file():
        backup_store(Path(w.args.store_from), store)
        trace_of(store).unlink(missing_ok=True)  # an older call's trace on this machine: the committed one rules
    with RunStore(store) as st:
        released = st.release_claims()
        w.info["study_before"] = {"counts": st.counts(), "released_at_start": released,
                                  "model_flops": sum(float(r.model_flops or 0) for r in st.records())}
    w.save()
    earlier = read_json(trace_of(Path(w.args.store_from)))  # the committed trace of the earlier windows
    stop = threading.Event()

    def backups() -> None:
        while not stop.wait(w.args.backup_every):
            try:
                back_up_study(w, store, earlier)
            except (sqlite3.Error, OSError) as exc:
                log(f"backup failed (next try in {w.args.backup_every} s): {exc}")

    thread = threading.Thread(target=backups, daemon=True)
    thread.start()
    progress = Path(w.args.work) / "progress.json"
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "design", "--spec", str(w.args.spec), "--home", w.args.home,
           "--store", str(store), "--workers", str(w.args.workers), "--until", str(w.until - w.args.reserve_s),
           "--overrides", json.dumps(overrides), "--progress", str(progress)]
    if w.args.design:
        cmd += ["--design", w.args.design]
    t = time.time()
    res = w.run("study", cmd, timeout=w.left() - w.args.reserve_s, stop="int", grace=max(2.0, w.args.reserve_s / 2))
    stop.set()
    thread.join(timeout=5)
    with RunStore(store) as st:
        released = st.release_claims()  # a cell cut by the deadline goes back to pending, never completed
        counts = st.counts()
        flops = sum(float(r.model_flops or 0) for r in st.records())
    back_up_study(w, store, earlier)
    spent = flops - float(w.info["study_before"]["model_flops"])
    done = read_json(progress)
    res.update({"counts": counts, "released_at_end": released, "model_flops_in_store": flops,
                "model_flops_this_window": spent})
    if w.info["design"] == "adaptive":
        res["adaptive"] = done or {}
        res["decisions"] = decision_lines(w.logs / "study.log")
    else:
        res["rungs"] = done or []
    if w.info.get("peak_flops_per_s"):
        res["utilization"] = spent / ((time.time() - t) * w.info["peak_flops_per_s"])
    w.info["parts"]["study"] = res
    log(f"study: {counts} in the store; released {len(released)} interrupted cell(s)")


def check_part(w: Window, spec: dict[str, Any]) -> None:
    """Call 2 of the window after the study is complete: ``embrecipe check`` at the held-out budget (the fit
    leaves that budget out), resumed from the committed check store, until the deadline (docs/gpu_window.md)."""
    prepare_assets(w)
    store, check = Path(w.args.work) / "study.sqlite", Path(w.args.work) / "check.sqlite"
    if not store.exists():
        backup_store(Path(w.args.store_from), store)
    if not check.exists() and Path(w.args.check_from).is_file():
        backup_store(Path(w.args.check_from), check)
    budget = w.args.check_budget or max(float(b) for b in spec["budgets"])
    cmd = [sys.executable, "-m", "embrecipe.cli", "check", str(store), "--budget", repr(budget), "--workers",
           str(w.args.workers), "--check-store", str(check), "--out", str(w.out / "check"), "--json"]
    res = w.run("check", cmd, timeout=w.left() - w.args.reserve_s, stop="int", grace=max(2.0, w.args.reserve_s / 2))
    from embrecipe.runs.store import RunStore

    with RunStore(check) as st:
        res["released_at_end"] = st.release_claims()
        res["counts"] = st.counts()
    backup_store(check, w.out / "check.sqlite")
    res["budget"] = budget
    w.info["parts"]["check"] = res


def window_main(args: argparse.Namespace) -> int:
    w, spec, device = start(args)
    try:
        if args.part in ("stage", "all"):
            stage_part(w, spec, device)
        if args.part in ("study", "all"):
            study_part(w, spec)
        if args.part == "check":
            check_part(w, spec)
    finally:
        w.info["finished"] = time.time()
        w.save()
        w.pack_logs()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["design"]:  # internal: the study design, in its own process (window.py study part starts it)
        s = argparse.ArgumentParser(prog="window.py design")
        s.add_argument("--spec", required=True)
        s.add_argument("--home", default=DEFAULT_HOME)
        s.add_argument("--store", required=True)
        s.add_argument("--workers", type=int, default=8)
        s.add_argument("--until", type=float, required=True)
        s.add_argument("--overrides", default="{}")
        s.add_argument("--progress", required=True)
        s.add_argument("--design", choices=DESIGNS, default=None)
        return study_main(s.parse_args(argv[1:]))
    if argv[:1] == ["plan"]:  # what the study would train (no GPU, no store): window.py plan [--spec] [--home]
        s = argparse.ArgumentParser(prog="window.py plan")
        s.add_argument("--spec", default=str(DEFAULT_SPEC))
        s.add_argument("--home", default=DEFAULT_HOME)
        a = s.parse_args(argv[1:])
        print(json.dumps(plan_summary(load_spec(Path(a.spec), a.home), Path(a.spec).parent), indent=1))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", nargs="?", choices=("stage", "study", "check", "all"), default="all",
                    help="stage = call 1 of a window (stash, benchmark, smoke); study = call 2; all = both; "
                         "check = call 2 once the study is complete (embrecipe check at the held-out budget)")
    ap.add_argument("--check-budget", type=float, default=None, help="check: the held-out budget (default: "
                    "the spec's largest)")
    ap.add_argument("--check-from", default=str(HERE / "check.sqlite"), help="check: the committed check store")
    ap.add_argument("--spec", default=str(DEFAULT_SPEC), help="the study spec (default study/v2/spec.yaml)")
    ap.add_argument("--assets", default=None, help="the carried folder (study/v2/build_carry.py)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/window-out"), help="what comes back ($OUT)")
    ap.add_argument("--home", default=DEFAULT_HOME, help="EMBRECIPE_HOME of the window (fixed: part of run keys)")
    ap.add_argument("--work", default="/tmp/window-work", help="kept between the two calls: GGUF half, smoke, store")
    ap.add_argument("--store-from", default=str(DEFAULT_STORE), help="the committed store to resume")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="this call's wall time (default 9 min)")
    ap.add_argument("--reserve-s", type=float, default=20.0, help="kept after the study for the last copy")
    ap.add_argument("--design", choices=DESIGNS, default=None, help="override the spec's design switch")
    ap.add_argument("--workers", type=int, default=8, help="cells at once (GPU-packed by memory)")
    ap.add_argument("--bench", choices=("auto", "run", "skip"), default="auto",
                    help="auto: only when benchmarks/results.json has no GPU section for this card")
    ap.add_argument("--bench-s", type=float, default=230.0, help="the benchmark's share (issue: < 4 minutes)")
    ap.add_argument("--smoke-paths", default="packing,compile,cudagraphs")
    ap.add_argument("--smoke-s", type=float, default=60.0, help="seconds per fast path's smoke run (compile included)")
    ap.add_argument("--smoke-budget", type=float, default=2e12)
    ap.add_argument("--smoke-batch", type=int, default=256)
    ap.add_argument("--study-compile", action="store_true",
                    help="run the study with torch.compile/CUDA graphs when their smoke passed (default: packing only)")
    ap.add_argument("--backup-every", type=float, default=20.0)
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    return window_main(args)


if __name__ == "__main__":
    sys.exit(main())
