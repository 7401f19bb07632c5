r"""Sweeps: a grid YAML → cells (model × method × hyper-parameters × budget) → runs in the store.

Step 1–2 of the algorithm (docs/design.md): for each cell the trainer spends exactly the cell's budget
:math:`C` of model FLOPs, i.e. :math:`D = C / \mathrm{cost}_{method}(N, N_t)` tokens, which at
``tokens_per_pair`` tokens per pair and ``batch_size`` pairs per step is

.. math::

    \text{steps} = \Big\lfloor \frac{C}{\mathrm{cost} \cdot \text{tokens\_per\_pair} \cdot \text{batch\_size}} \Big\rfloor .

Cells that cannot spend their budget sensibly are skipped *with a printed reason* before anything runs:
fewer than ``min_steps`` steps, more tokens than the training data holds (unless ``allow_repeat: true``),
or a method the model cannot take (bias-only without biases).

Every cell has an identity config (the training settings, the data *content* fingerprint instead of its
path, and the embrecipe version) whose :func:`~embrecipe.store.run_key` is its row in the store. A run
only starts after :meth:`~embrecipe.store.RunStore.claim` succeeds, so a rerun after ``kill -9`` trains
exactly the cells that are not ``completed`` (a killed run's claim is stale because its process is gone).
Only the driver process writes to the store; workers (a local process pool or Ray tasks) just train and
return records, so the SQLite file never needs to be shared between machines.

With ``adaptive`` (grid key or :func:`run_sweep` argument) the budgets run as rungs, smallest first, and after
each rung :func:`embrecipe.adaptive.decide` drops the configurations (model × variant) that the laws fitted
so far predict to be confidently worse at the target budget; their later cells are never registered.

The grid format is documented in ``docs/sweep.md``. Example::

    from embrecipe.sweep import load_grid, run_sweep
    grid = load_grid("grid.yaml")
    result = run_sweep(grid, store="runs.sqlite", executor="local")
    print(result.summary())
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adaptive import AdaptiveReport, AdaptiveSpec
from .errors import EmbrecipeError, InputError, OutOfDiskSpace, is_disk_full
from .flops import ModelShape
from .jsonio import read_mapping
from .methods import canonical_method_name, method_class, method_names, method_to_dict, parse_method
from .records import RunRecord

TrainFn = Callable[[dict[str, Any]], "RunRecord | dict[str, Any]"]
DEFAULT_TRAIN_FN = "embrecipe.trainer:train_from_dict"
SYNTHETIC_TRAIN_FN = "embrecipe.synthetic:synthetic_train"
_GRID_KEYS = {"name", "models", "family", "methods", "budgets", "train", "min_steps", "allow_repeat",
              "tokens_per_pair", "dataset_pairs", "store", "out", "trainer", "executor", "workers",
              "ray", "heartbeat_s", "adaptive", "gpu", "lr_search"}


# ------------------------------------------------------------------------------------------------------
# Grid
# ------------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """A parsed grid file (paths already resolved against the file's directory)."""

    models: list[dict[str, Any]]  # {"name", "path", "shape": ModelShape | None}
    methods: list[dict[str, Any]]  # method_to_dict dicts
    budgets: list[float]
    train: dict[str, Any]
    name: str = "sweep"
    min_steps: int = 10
    allow_repeat: bool = False
    tokens_per_pair: float | None = None
    dataset_pairs: int | None = None
    store: str | None = None
    out: str | None = None
    trainer: str = DEFAULT_TRAIN_FN
    heartbeat_s: float = 60.0
    ray: dict[str, Any] = field(default_factory=dict)
    # GPU filling (embrecipe.gpu_schedule): pack (several cells per GPU, bounded by memory; default on),
    # gpus_per_cell (> 1: whole GPUs under torchrun), headroom (share of free memory to fill, 0.9)
    gpu: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    adaptive: AdaptiveSpec | None = None  # set: run rung by rung and drop dominated configurations
    lr_search: LRSearch | None = None  # set: LR grid at the lowest rung(s), the best LR above
    source: str = "grid"  # the grid file, for error messages


# Half-decade steps around the base LR: wide enough to bracket an optimum that moves ~3x between methods and
# sizes, and the paper's App. E.1 LR grids are of this spacing.
DEFAULT_LR_FACTORS = (10 ** -0.5, 1.0, 10 ** 0.5)


@dataclass(frozen=True)
class LRSearch:
    """The sweep's LR-selection protocol (grid key ``lr_search``; see docs/sweep.md).

    Per (model, variant) every LR of the grid runs at the ``rungs`` lowest budgets; the LR with the lowest mean
    log held-out loss there (:func:`embrecipe.recipe.select_lrs`) is the only one the upper budgets train at.
    The grid is ``lrs`` when given, else ``factors`` × the base LR (``train.lr``, else the trainer's default
    rule for the model: one tenth of its pre-training peak).
    """

    factors: tuple[float, ...] = DEFAULT_LR_FACTORS
    lrs: tuple[float, ...] | None = None
    rungs: int = 1

    @classmethod
    def from_value(cls, value: Any, *, source: str = "grid") -> LRSearch | None:
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: lr_search must be true or a mapping {{factors|lrs, rungs}}")
        unknown = set(value) - {"factors", "lrs", "rungs"}
        if unknown:
            raise InputError(f"{source}: lr_search: unknown key(s) {', '.join(sorted(unknown))}; "
                             "allowed: factors, lrs, rungs")
        try:
            factors = tuple(float(x) for x in _as_list(value.get("factors", DEFAULT_LR_FACTORS)))
            lrs = None if value.get("lrs") is None else tuple(float(x) for x in _as_list(value["lrs"]))
            rungs = int(value.get("rungs", 1))
        except (TypeError, ValueError):
            raise InputError(f"{source}: lr_search: factors and lrs must be numbers, rungs an integer") from None
        grid = lrs if lrs is not None else factors
        if len(set(grid)) < 3 or any(not (math.isfinite(x) and x > 0) for x in grid):
            raise InputError(f"{source}: lr_search needs at least 3 distinct positive "
                             f"{'lrs' if lrs is not None else 'factors'} (got {list(grid)})")
        if rungs < 1:
            raise InputError(f"{source}: lr_search.rungs must be >= 1, got {rungs}")
        return cls(factors=factors, lrs=lrs, rungs=rungs)

    def grid_for(self, model_path: str, base_lr: float | None) -> list[float]:
        from .recipe import log_spaced_lrs

        if self.lrs is not None:
            return sorted(self.lrs)
        if base_lr is None:
            from .train_config import default_lr

            base_lr = default_lr(model_path)
        return log_spaced_lrs(float(base_lr), self.factors)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_methods(spec: Any) -> list[dict[str, Any]]:
    """``{"lora": {"rank": [8, 32]}, "full": {}}`` → one method dict per hyper-parameter combination."""
    if isinstance(spec, (list, tuple)):  # [full, {lora: {rank: [8]}}]
        out = []
        for item in spec:
            out += expand_methods(item if isinstance(item, Mapping) else {item: {}})
        return out
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("grid: 'methods' must map method names to hyper-parameter lists, e.g. "
                         "{full: {}, lora: {rank: [8, 32]}}")
    out = []
    for name, hparams in spec.items():
        canonical = canonical_method_name(str(name))
        if canonical is None:
            raise InputError(f"grid: unknown method {name!r}; expected one of {', '.join(method_names())}")
        hparams = dict(hparams or {})
        keys = sorted(hparams)
        for combo in itertools.product(*(_as_list(hparams[k]) for k in keys)):
            out.append(method_to_dict(parse_method(canonical, **dict(zip(keys, combo, strict=True)))))
    return out


def _resolve(base: Path, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    cand = base / p
    return str(cand.resolve()) if cand.exists() else value


def load_grid(path: str | os.PathLike[str]) -> Grid:
    """Parse and validate a grid YAML (see ``docs/sweep.md``)."""
    path = Path(path)
    raw = read_mapping(path, "grid file", yaml_always=True)
    return grid_from_dict(raw, base_dir=path.parent.resolve(), source=str(path))


def grid_from_dict(raw: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".",
                   source: str = "grid") -> Grid:
    base = Path(base_dir)
    unknown = set(raw) - _GRID_KEYS
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(sorted(_GRID_KEYS))}")
    models: list[dict[str, Any]] = []
    if raw.get("family"):
        from .family import Family

        for m in Family.load(_resolve(base, raw["family"])).members:
            models.append({"name": m.name, "path": m.path, "shape": m.shape})
    for i, m in enumerate(_as_list(raw.get("models") or [])):
        if isinstance(m, str):
            models.append({"name": Path(m).name or m, "path": _resolve(base, m), "shape": None})
        elif isinstance(m, Mapping) and "path" in m:
            if m.get("name") is not None:
                check_name(str(m["name"]), f"{source}: models[{i}].name")
            shape = ModelShape.from_dict(m["shape"]) if m.get("shape") else None
            models.append({"name": str(m.get("name") or Path(str(m["path"])).name), "path": _resolve(base, m["path"]),
                           "shape": shape})
        else:
            raise InputError(f"{source}: models[{i}] must be a path/hub id or {{path: ..., shape: ...}}")
    if not models:
        raise InputError(f"{source}: no models (give 'models: [...]' or 'family: file.json')")
    methods = expand_methods(raw.get("methods"))
    try:
        budgets = sorted(float(b) for b in _as_list(raw.get("budgets") or []))
    except (TypeError, ValueError):
        raise InputError(f"{source}: budgets must be numbers of FLOPs (e.g. 1e13)") from None
    if not budgets or any(not (math.isfinite(b) and b > 0) for b in budgets):
        raise InputError(f"{source}: 'budgets' must be a non-empty list of positive FLOP counts")
    train = dict(raw.get("train") or {})
    for k in ("model", "method", "budget", "out"):
        if k in train:
            raise InputError(f"{source}: train.{k} is set per cell by the sweep; remove it from 'train'")
    for k in ("data", "val_data"):
        if k in train:
            train[k] = _resolve(base, train[k])
    trainer = str(raw.get("trainer") or DEFAULT_TRAIN_FN)
    if trainer == "synthetic":
        trainer = SYNTHETIC_TRAIN_FN
    name = str(raw.get("name") or "sweep")
    check_name(name, f"{source}: name")
    return Grid(
        models=models, methods=methods, budgets=budgets, train=train,
        name=name,
        min_steps=int(raw.get("min_steps", 10)),
        allow_repeat=bool(raw.get("allow_repeat", False)),
        tokens_per_pair=None if raw.get("tokens_per_pair") is None else float(raw["tokens_per_pair"]),
        dataset_pairs=None if raw.get("dataset_pairs") is None else int(raw["dataset_pairs"]),
        store=None if raw.get("store") is None else str(base / str(raw["store"])),
        out=None if raw.get("out") is None else str(base / str(raw["out"])),
        trainer=trainer,
        heartbeat_s=float(raw.get("heartbeat_s", 60.0)),
        ray=dict(raw.get("ray") or {}),
        gpu=_gpu_settings(raw.get("gpu"), source),
        base_dir=base,
        adaptive=AdaptiveSpec.from_value(raw.get("adaptive"), source=source),
        source=source,
        lr_search=LRSearch.from_value(raw.get("lr_search"), source=source),
    )


def check_name(name: str, what: str) -> None:
    """Refuse a name that would become a path outside its folder (``a/b``, ``..``, a leading dot or ``~``)."""
    if not name or "/" in name or "\\" in name or name.startswith((".", "~")) or "\0" in name:
        raise InputError(f"{what} {name!r} must be a plain name (no path separators, no leading '.' or '~')")


def _gpu_settings(raw: Any, source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or set(raw) - {"pack", "gpus_per_cell", "headroom"}:
        raise InputError(f"{source}: 'gpu' takes pack (true/false), gpus_per_cell (int) and headroom (0..1)")
    out = dict(raw)
    if int(out.get("gpus_per_cell", 1)) < 1 or not 0 < float(out.get("headroom", 0.9)) <= 1:
        raise InputError(f"{source}: gpu.gpus_per_cell must be >= 1 and gpu.headroom in (0, 1]")
    return out


# ------------------------------------------------------------------------------------------------------
# Data statistics and model shapes (measured only when the grid does not state them)
# ------------------------------------------------------------------------------------------------------
@dataclass
class DataStats:
    fingerprint: str
    pairs: int | None
    tokens_per_pair: float | None


def data_stats(grid: Grid) -> DataStats:
    """Fingerprint, train pairs and mean tokens per pair of the grid's data (grid values win)."""
    data_path = grid.train.get("data")
    pairs, tpp = grid.dataset_pairs, grid.tokens_per_pair
    if not data_path:
        return DataStats(fingerprint="none", pairs=pairs, tokens_per_pair=tpp)
    if not Path(str(data_path)).exists():
        raise InputError(f"grid: data {data_path} does not exist")
    from .data import load_pairs

    data = load_pairs(data_path)
    fingerprint = data.fingerprint()
    train_pairs = len(data)
    val_fraction = float(grid.train.get("val_fraction") or 0.0)
    if val_fraction and not grid.train.get("val_data"):
        train_pairs -= max(1, round(val_fraction * len(data)))
    if pairs is None:
        pairs = train_pairs
    if tpp is None:
        tpp = _measure_tokens_per_pair(data, grid.models[0]["path"], int(grid.train.get("max_seq_length", 75)),
                                       int(grid.train.get("hard_negatives", 0)))
    return DataStats(fingerprint=fingerprint, pairs=pairs, tokens_per_pair=tpp)


def _measure_tokens_per_pair(data: Any, model_path: str, max_len: int, hard_negatives: int,
                             sample: int = 2000) -> float:
    # The family shares one tokenizer; a sample of 2000 pairs pins the mean to well under 1 % -- if it is spread
    # over the file: files are often sorted (by source, by length), and the first 2000 pairs of the testbed's
    # train split average 41.7 tokens against 49.5 overall, which made the study's planned steps 16 % too many.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    cols = data.columns(hard_negatives)
    n = min(sample, len(data))
    idx = [i * len(data) // n for i in range(n)]
    total = 0
    for col in cols:
        enc = tok([col[i] for i in idx], truncation=True, max_length=max_len, padding=False)
        total += sum(len(x) for x in enc["input_ids"])
    return total / n


def model_shape(model: Mapping[str, Any]) -> ModelShape:
    """A grid model's shape: given, a synthetic toy name, or read from the checkpoint's config."""
    if model.get("shape") is not None:
        return model["shape"]
    from .synthetic import toy_shape_from_name

    toy = toy_shape_from_name(str(model["path"]))
    if toy is not None:
        return toy
    from .family import shape_of_checkpoint

    return shape_of_checkpoint(str(model["path"]), name=str(model["name"]))


# ------------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    model: str
    path: str
    method: dict[str, Any]
    variant: str
    budget: float
    n_params: int
    n_trainable: int
    flops_per_token: int
    planned_tokens: float
    planned_steps: int | None
    config: dict[str, Any]  # what the trainer receives
    key_config: dict[str, Any]  # what identifies the run
    key: str


WAITS_FOR_LR = "waits for the LR search at the lowest rung(s) (trains at the LR chosen there)"


@dataclass
class Skipped:
    model: str
    variant: str
    budget: float
    reason: str

    def __str__(self) -> str:
        return f"skip {self.variant} on {self.model} at {self.budget:.3g} FLOPs: {self.reason}"


def expand(grid: Grid, stats: DataStats | None = None,
           lr_choice: Mapping[tuple[str, str], float] | None = None) -> tuple[list[Cell], list[Skipped]]:
    """All cells of the grid, and the ones skipped with their reasons.

    With ``grid.lr_search`` the lowest ``rungs`` budgets get one cell per LR of the search grid; the upper
    budgets get one cell at ``lr_choice[(model path, variant)]`` — or, before the search has finished, are
    listed in ``skipped`` with the reason "waits for the LR search" (:data:`WAITS_FOR_LR`)."""
    from . import __version__
    from .records import run_key

    stats = stats or data_stats(grid)
    batch = int(grid.train.get("batch_size", 1024))
    tpp = stats.tokens_per_pair
    data_tokens = stats.pairs * tpp if (stats.pairs is not None and tpp) else None
    out_root = Path(grid.out) if grid.out else None
    search_rungs = set(grid.budgets[: grid.lr_search.rungs]) if grid.lr_search is not None else set()
    cells, skipped = [], []
    for model in grid.models:
        shape = model_shape(model)
        n = shape.non_embedding_params
        for mdict in grid.methods:
            from .methods import method_from_dict

            method = method_from_dict(mdict)
            for budget in grid.budgets:
                try:
                    n_t = method.trainable_params(shape)
                    cost = method.flops_per_token(shape)
                except EmbrecipeError as exc:
                    skipped.append(Skipped(model["name"], method.key, budget, str(exc)))
                    continue
                tokens = budget / cost
                steps = int(tokens // (tpp * batch)) if tpp else None
                if steps is not None and steps < grid.min_steps:
                    skipped.append(Skipped(model["name"], method.key, budget,
                                           f"affords {steps} steps of {batch} pairs (< min_steps {grid.min_steps})"))
                    continue
                if data_tokens is not None and tokens > data_tokens and not grid.allow_repeat:
                    skipped.append(Skipped(
                        model["name"], method.key, budget,
                        f"needs {tokens:.3g} tokens but the training data holds {data_tokens:.3g} "
                        f"({tokens / data_tokens:.2g} epochs); set allow_repeat: true to repeat data"))
                    continue
                lrs: list[float | None] = [None]
                if grid.lr_search is not None:
                    if budget in search_rungs:
                        lrs = list(grid.lr_search.grid_for(str(model["path"]), grid.train.get("lr")))
                    elif lr_choice is not None and (str(model["path"]), method.key) in lr_choice:
                        lrs = [lr_choice[(str(model["path"]), method.key)]]
                    else:
                        skipped.append(Skipped(model["name"], method.key, budget, WAITS_FOR_LR))
                        continue
                for lr in lrs:
                    config = {**grid.train, "model": model["path"], "method": mdict, "budget": budget}
                    if lr is not None:
                        config["lr"] = lr
                    key_config = {k: v for k, v in config.items() if k not in ("data", "out", "report_to")}
                    key_config["data_fingerprint"] = stats.fingerprint
                    key_config["code_version"] = __version__
                    key = run_key(key_config)
                    if out_root is not None:
                        config["out"] = str(out_root / key)
                        # A retried cell (failed, or killed before its export) reuses its own folder.
                        config["overwrite"] = True
                    config.update(_tracking_settings(grid, model["name"], method.key, budget, key))
                    cells.append(Cell(model=model["name"], path=str(model["path"]), method=mdict,
                                      variant=method.key, budget=budget, n_params=n, n_trainable=n_t,
                                      flops_per_token=cost, planned_tokens=tokens, planned_steps=steps,
                                      config=config, key_config=key_config, key=key))
    return cells, skipped


def _tracking_settings(grid: Grid, model_name: str, variant: str, budget: float, key: str) -> dict[str, Any]:
    """One tracked run per cell, grouped by sweep: logs in ``<out or grid dir>/runs/<sweep>/<cell key>``, the
    sweep's name as the W&B group / MLflow experiment. Added after the run key is computed: where a run logs
    is an operational setting, not part of what the run is."""
    root = Path(grid.out) if grid.out else grid.base_dir
    return {"tracking_dir": str(root / "runs" / grid.name / key), "tracking_group": grid.name,
            "run_name": f"{model_name}-{variant}-{budget:.3g}"}


# ------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------
def resolve_train_fn(ref: str | TrainFn | None) -> TrainFn:
    """A callable, ``"module:function"``, ``"synthetic"`` (the fake trainer) or None (the real trainer)."""
    if callable(ref):
        return ref
    ref = ref or DEFAULT_TRAIN_FN
    if ref == "synthetic":
        ref = SYNTHETIC_TRAIN_FN
    module, _, name = str(ref).partition(":")
    if not name:
        raise InputError(f"train function {ref!r} must be written module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import train function {ref!r}: {exc}") from None


def _call_train(train_fn: TrainFn, config: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker): returns the record, or {"status": "failed", "error": ...}.

    ``"disk_full": True`` marks a failure from a full disk, which stops the sweep (every later cell would hit it).
    """
    try:
        record = train_fn(dict(config))
    except Exception as exc:  # one bad cell must not end the sweep
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8), "disk_full": is_disk_full(exc)}
    if isinstance(record, RunRecord):
        return record.to_dict()  # a plain dict crosses process boundaries (spawn, Ray, torchrun) as it is
    if not isinstance(record, Mapping):
        return {"status": "failed", "error": f"train function returned {type(record).__name__}, not a record"}
    return dict(record)


def check_cells(cells: list[Cell], fn: TrainFn, source: str) -> None:
    """The checks the real trainer makes on settings alone (types, ranges, required keys), on every cell, so that
    a dry run fails where the real run would and a real run fails before the first cell, not in every cell."""
    from .train_config import config_from_dict
    from .trainer import train_from_dict

    if fn is not train_from_dict:  # another trainer has its own settings: nothing to mirror
        return
    seen: set[str] = set()
    for cell in cells:
        sig = repr(sorted((k, repr(v)) for k, v in cell.config.items() if k not in ("model", "budget", "out")))
        if sig in seen:
            continue
        seen.add(sig)
        config_from_dict(cell.config, source=f"{source} ({cell.variant} on {cell.model})")


class _Heartbeat:
    """Refresh a claim while a long run trains, so other hosts do not take it over as stale."""

    def __init__(self, location: str, keys: set[str], every: float) -> None:
        self.location, self.keys, self.every = location, keys, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.every > 0 and self.location != ":memory:":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from .store import RunStore

        store = RunStore(self.location)  # its own connection: sqlite connections are not shared across threads
        while not self._stop.wait(self.every):
            for key in list(self.keys):
                try:
                    store.heartbeat(key)
                except Exception:  # a busy store must not kill the sweep; the next beat retries
                    pass
        store.close()


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
) -> SweepResult:
    """Expand the grid, register the cells, and train the ones not completed yet (see the module docstring).

    ``adaptive``: None follows the grid's ``adaptive`` key; True turns the adaptive policy on (the grid's
    settings, else the defaults); False runs the full grid; a mapping or :class:`AdaptiveSpec` gives the
    settings. Adaptive sweeps run rung by rung and drop dominated configurations (:mod:`embrecipe.adaptive`).
    """
    from .store import RunStore

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
    t0 = time.time()
    if dry_run and not Path(location).exists():
        location = ":memory:"  # a dry run reports; it must not create the store
    # A claim is stale after 3 missed heartbeats of this grid (never by age when heartbeats are off).
    from .store import STALE_AFTER_BEATS

    stale_after = STALE_AFTER_BEATS * grid.heartbeat_s if grid.heartbeat_s > 0 else 6 * 3600.0
    st = RunStore(location, stale_after=stale_after)
    try:
        if (grid.lr_search is not None or spec is not None) and not dry_run:
            if grid.lr_search is not None and spec is not None:
                raise InputError("lr_search and an adaptive sweep cannot be combined (yet): run the LR "
                                 "search with --no-adaptive")
            peak = _measure_peak(fn)
            if grid.lr_search is not None:
                result = _run_lr_search(st, grid, stats, cells, skipped, fn, executor, workers, ray_address,
                                        progress, log, location)
            else:
                result = _run_adaptive(st, cells, skipped, spec, fn, grid, executor, workers, ray_address,
                                       progress, log, location)
            result.elapsed_s = time.time() - t0
            _attach_utilization(result, peak)
            log(result.summary())
            return result
        if not dry_run:
            st.add_pending(c.key_config for c in cells)
        status = {c.key: st.status(c.key) for c in cells}
        done = [c for c in cells if status[c.key] == "completed"]
        # Cheapest budgets first: a partial sweep then already covers every model and method for a first fit.
        todo = sorted((c for c in cells if status[c.key] != "completed"), key=lambda c: (c.budget, c.n_params))
        result = SweepResult(total=len(cells), skipped=skipped, already_done=len(done),
                             flops_planned=sum(c.budget for c in cells))
        log(f"sweep {grid.name}: {len(cells)} cells ({len(done)} completed, {len(todo)} to run), "
            f"{len(skipped)} skipped; store {location}")
        if dry_run:
            if spec is not None:
                log("adaptive: rungs after the first run only for the configurations still in the race, so "
                    "this list is an upper bound")
            for c in todo:
                steps = "?" if c.planned_steps is None else c.planned_steps
                log(f"  would run {c.variant:<14} {c.model:<24} budget {c.budget:.3g}  "
                    f"tokens {c.planned_tokens:.3g}  steps {steps}  key {c.key}")
            return result
        bar = _Progress(len(cells), len(done), result.flops_planned, sum(c.budget for c in done), progress)
        peak = _measure_peak(fn) if todo else None
        t_run = time.time()
        try:
            _run_cells(st, todo, fn, result, bar, grid, executor, workers, ray_address, log)
        finally:
            bar.close()
        result.elapsed_s = time.time() - t0
        _attach_utilization(result, peak, time.time() - t_run)
        log(result.summary())
        return result
    finally:
        st.close()


def lr_choice_from_store(st: Any, cells: list[Cell]) -> dict[tuple[str, str], float]:
    """The LR protocol's choice per (model path, variant) from the search cells' stored runs."""
    from .recipe import select_lrs

    runs = []
    for c in cells:
        status = st.status(c.key)
        loss = st.record(c.key).final_val_loss if status == "completed" else None
        if status == "failed" or loss is not None:
            runs.append((str(c.config["model"]), c.variant, c.budget, c.config.get("lr"), loss))
    return select_lrs(runs)


def _run_lr_search(st, grid, stats, cells, skipped, fn, executor, workers, ray_address, progress, log,
                   location) -> SweepResult:
    """Phase 1: every LR at the search rungs. Phase 2: the upper rungs at each (model, variant)'s best LR."""
    search = list(cells)  # before the choice, expand() yields only the search rungs' cells
    waiting = [s for s in skipped if s.reason == WAITS_FOR_LR]
    result = SweepResult(total=len(search) + len(waiting), skipped=[s for s in skipped if s.reason != WAITS_FOR_LR],
                         already_done=0, flops_planned=sum(c.budget for c in search) + sum(s.budget for s in waiting))
    log(f"sweep {grid.name} (LR search at {', '.join(f'{b:.3g}' for b in grid.budgets[:grid.lr_search.rungs])}"
        f" FLOPs): {len(search)} search cells, {len(waiting)} upper-rung cells after the choice; store {location}")
    bar = _Progress(result.total, 0, result.flops_planned, 0.0, progress)
    try:
        st.add_pending(c.key_config for c in search)
        todo = [c for c in search if st.status(c.key) != "completed"]
        result.already_done += len(search) - len(todo)
        bar.reused(len(search) - len(todo), sum(c.budget for c in search if c not in todo))
        _run_cells(st, sorted(todo, key=lambda c: (c.budget, c.n_params)), fn, result, bar, grid, executor,
                   workers, ray_address, log)
        if any(st.status(c.key) not in ("completed", "failed") for c in search):
            log("LR search: some cells are held by other workers; rerun to choose the LRs and go on")
            return result
        choice = lr_choice_from_store(st, search)
        for (model, variant), lr in sorted(choice.items()):
            lrs = sorted({c.config.get("lr") for c in search if c.config["model"] == model and c.variant == variant})
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
        _run_cells(st, sorted(todo, key=lambda c: (c.budget, c.n_params)), fn, result, bar, grid, executor,
                   workers, ray_address, log)
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
    if getattr(fn, "__module__", "") == "embrecipe.synthetic":
        return None
    from .gpu_schedule import measure_peak_flops, visible_gpus_free_mib

    try:
        peak = measure_peak_flops()
    except Exception:  # no torch, or a device error: the sweep still runs, utilization is just not reported
        return None
    peak["devices"] = max(1, len(visible_gpus_free_mib()))
    return peak


def _attach_utilization(result: SweepResult, peak: dict[str, Any] | None, wall: float | None = None) -> None:
    from .gpu_schedule import sweep_utilization

    if peak is None or not result.ran:
        return
    result.peak = peak
    result.utilization = sweep_utilization(result.flops_spent, wall or result.elapsed_s, peak["flops_per_s"],
                                           peak["devices"])


def _run_cells(st, todo, fn, result, bar, grid, executor, workers, ray_address, log) -> None:
    if executor == "ray":
        _run_ray(st, todo, fn, result, bar, grid, workers, ray_address, log)
    elif workers > 1:
        _run_pool(st, todo, fn, result, bar, grid, workers, log)
    else:
        _run_sequential(st, todo, fn, result, bar, grid, log)


def _config_of(cell: Cell) -> tuple[str, str]:
    # The same (model, variant) identity adaptive.config_id reads back from the cell's record.
    return str(cell.config["model"]), cell.variant


def _run_adaptive(st, cells, skipped, spec, fn, grid, executor, workers, ray_address, progress, log,
                  location) -> SweepResult:
    """Rung by rung, smallest budget first: run the alive configurations' cells, then let
    :func:`embrecipe.adaptive.decide` drop the dominated ones. Cells are registered in the store only when
    their rung comes, so dropped configurations leave no pending rows behind."""
    from .adaptive import decide

    rungs = sorted({c.budget for c in cells})
    targets = spec.targets or (max(grid.budgets),)
    report = AdaptiveReport(spec=spec, targets=tuple(targets), cells_grid=len(cells),
                            flops_grid=sum(c.budget for c in cells))
    result = SweepResult(total=len(cells), skipped=skipped, already_done=0, flops_planned=report.flops_grid,
                         adaptive=report)
    alive = {_config_of(c) for c in cells}
    # One Ray session for all rungs (otherwise each rung would start and stop a local instance).
    ray_started = executor == "ray" and _start_ray(workers, ray_address)
    log(f"sweep {grid.name} (adaptive, {len(rungs)} rungs, decisions for "
        f"{', '.join(f'{t:.3g}' for t in targets)}): {len(cells)} grid cells, {len(skipped)} skipped; "
        f"store {location}")
    bar = _Progress(len(cells), 0, report.flops_grid, 0.0, progress)
    try:
        for k, budget in enumerate(rungs, 1):
            rung = sorted((c for c in cells if c.budget == budget and _config_of(c) in alive),
                          key=lambda c: c.n_params)
            st.add_pending(c.key_config for c in rung)
            done = [c for c in rung if st.status(c.key) == "completed"]
            todo = [c for c in rung if st.status(c.key) != "completed"]
            result.already_done += len(done)
            bar.reused(len(done), sum(c.budget for c in done))
            log(f"rung {k}/{len(rungs)} ({budget:.3g} FLOPs): {len(rung)} cells of {len(alive)} configurations "
                f"({len(done)} completed, {len(todo)} to run)")
            _run_cells(st, todo, fn, result, bar, grid, executor, workers, ray_address, log)
            report.cells_selected += len(rung)
            report.flops_selected += sum(c.budget for c in rung)
            report.selected_keys += [c.key for c in rung]
            missing = [c for c in rung if st.status(c.key) != "completed"]
            if missing:
                # A decision on a partial rung would differ from the one a complete rerun takes; stop here.
                log(f"adaptive: rung {k} has {len(missing)} cell(s) not completed (failed or held by another "
                    "worker); stopping before deciding — rerun the sweep to retry and go on")
                return result
            if k == len(rungs):
                break
            records = [st.record(key) for key in report.selected_keys]
            decision = decide(records, alive, rung=k, budget=budget, targets=targets, spec=spec)
            report.decisions.append(decision)
            for line in decision.lines():
                log(line)
            if decision.dropped:
                alive -= set(decision.dropped)
                gone = [c for c in cells if c.budget > budget and _config_of(c) in decision.dropped]
                bar.shrink(len(gone), sum(c.budget for c in gone))
        report.complete = True
        return result
    finally:
        bar.close()
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


def _run_sequential(st, todo, fn, result, bar, grid, log) -> None:
    for cell in todo:
        if not st.claim(cell.key, cell.key_config):
            result.busy.append(cell.key)
            continue
        try:
            with _Heartbeat(st.location, {cell.key}, grid.heartbeat_s):
                record = _call_train(fn, cell.config)
        except BaseException:  # Ctrl-C: hand the cell back so the next run starts it at once
            st.release(cell.key)
            raise
        _finish(st, cell, record, result, bar, log)


def _run_pool(st, todo, fn, result, bar, grid, workers, log) -> None:
    import multiprocessing as mp
    import pickle
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    try:  # pool workers receive the function by pickle: say so up front instead of failing mid-sweep
        pickle.dumps(fn)
    except Exception:
        raise InputError("--workers > 1 needs a module-level train function (module:function), "
                         f"not {fn!r}") from None
    # spawn: a forked copy of a process that holds SQLite connections and threads is not safe.
    ctx = mp.get_context("spawn")
    running: dict[Any, Cell] = {}
    queue = list(todo)
    placer = _GpuPlacer.for_grid(grid, log)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, \
            _Heartbeat(st.location, set(), grid.heartbeat_s) as beat:
        try:
            while queue or running:
                while queue and len(running) < workers:
                    where = placer.place(queue[0]) if placer else None
                    if placer and where is None:
                        break  # no GPU has room for the next cell: wait for one to finish
                    cell = queue.pop(0)
                    if not st.claim(cell.key, cell.key_config):
                        result.busy.append(cell.key)
                        if placer:
                            placer.release(cell, where)
                        continue
                    beat.keys.add(cell.key)
                    if placer:
                        fut = pool.submit(_call_train_on_gpus, fn, cell.config, where, grid.trainer)
                        placer.running[cell.key] = where
                    else:
                        fut = pool.submit(_call_train, fn, cell.config)
                    running[fut] = cell
                if not running:
                    if queue and placer:  # all GPUs idle and still no room: only a multi-GPU cell can do that
                        raise InputError(f"gpu.gpus_per_cell {placer.per_cell} is more than the "
                                         f"{len(placer.slots.capacity)} GPU(s) visible here")
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    cell = running.pop(fut)
                    beat.keys.discard(cell.key)
                    try:
                        record = fut.result()
                    except Exception as exc:  # the worker process died
                        record = {"status": "failed", "error": f"worker crashed: {exc}"}
                    if placer:
                        placer.finished(cell, record)
                    _finish(st, cell, record, result, bar, log)
        except BaseException:
            for cell in running.values():
                st.release(cell.key)
            raise


class _GpuPlacer:
    """Which GPU(s) each pool cell runs on, bounded by memory (embrecipe.gpu_schedule). Cells of the same
    model, method and batch size that already ran replace the estimate by their measured peak (+10 %)."""

    def __init__(self, grid: Grid, free_mib: list[float], log: Callable[[str], None]) -> None:
        from .gpu_schedule import GpuSlots

        self.grid, self.log = grid, log
        self.slots = GpuSlots(free_mib, headroom=float(grid.gpu.get("headroom", 0.9)))
        self.per_cell = int(grid.gpu.get("gpus_per_cell", 1))
        self.measured: dict[tuple[str, str, Any], float] = {}
        self.running: dict[str, Any] = {}
        self.need: dict[str, float] = {}

    @classmethod
    def for_grid(cls, grid: Grid, log: Callable[[str], None], free_mib: list[float] | None = None) -> _GpuPlacer | None:
        from .gpu_schedule import visible_gpus_free_mib

        if not grid.gpu.get("pack", True):
            return None
        free = visible_gpus_free_mib() if free_mib is None else free_mib
        if not free:
            return None
        placer = cls(grid, free, log)
        log(f"GPU packing: {len(free)} GPU(s), {', '.join(f'{f:.0f}' for f in free)} MiB free; "
            + ("whole GPUs per cell under torchrun" if placer.per_cell > 1 else "several cells per GPU by memory"))
        return placer

    def _signature(self, cell: Cell) -> tuple[str, str, Any]:
        return cell.model, cell.variant, cell.config.get("mini_batch_size") or cell.config.get("batch_size", 1024)

    def cell_mib(self, cell: Cell) -> float:
        from .gpu_schedule import estimate_cell_mib

        if self._signature(cell) in self.measured:
            return self.measured[self._signature(cell)] * 1.1
        model = next((m for m in self.grid.models if m["name"] == cell.model), None)
        shape = model_shape(model) if model is not None else None
        layers = shape.num_blocks if shape else 32
        hidden = shape.hidden_size if shape and shape.hidden_size else 4096
        total = cell.n_params + (shape.embedding_params if shape else 0)
        batch = int(cell.config.get("mini_batch_size") or cell.config.get("batch_size", 1024))
        per_pair = (cell.planned_tokens / cell.planned_steps / int(cell.config.get("batch_size", 1024))
                    if cell.planned_steps else 2.0 * float(cell.config.get("max_seq_length", 75)))
        trainable = total if method_class(cell.method["name"]).trains_everything else cell.n_trainable
        return estimate_cell_mib(total, trainable, layers, hidden, per_pair * batch)

    def place(self, cell: Cell) -> Any:
        if self.per_cell > 1:
            return self.slots.place_whole(self.per_cell)
        need = self.cell_mib(cell)
        gpu = self.slots.place(need)
        if gpu is not None:
            self.need[cell.key] = need
        return gpu

    def release(self, cell: Cell, where: Any) -> None:
        if isinstance(where, list):
            self.slots.release_whole(where)
        elif where is not None:
            self.slots.release(where, self.need.pop(cell.key))

    def finished(self, cell: Cell, record: Mapping[str, Any]) -> None:
        self.release(cell, self.running.pop(cell.key, None))
        if record.get("peak_gpu_mib"):
            self.measured[self._signature(cell)] = float(record["peak_gpu_mib"])


def _call_train_on_gpus(train_fn: TrainFn, config: dict[str, Any], where: Any, train_ref: str) -> dict[str, Any]:
    """Run one cell on the GPU (an int) or GPUs (a list: torchrun, one rank per GPU) the placer chose."""
    if isinstance(where, list):
        return _call_torchrun(train_ref, config, where)
    os.environ["EMBRECIPE_CUDA_DEVICE"] = str(where)
    try:
        return _call_train(train_fn, config)
    finally:
        try:  # hand the cached blocks back: the next cell on this worker may run on another GPU, or a smaller one
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _call_torchrun(train_ref: str, config: dict[str, Any], gpus: list[int]) -> dict[str, Any]:
    import json
    import subprocess
    import tempfile

    from .gpu_schedule import torchrun_command

    with tempfile.TemporaryDirectory() as tmp:
        cfg, rec = Path(tmp) / "config.json", Path(tmp) / "record.json"
        cfg.write_text(json.dumps({"train_fn": train_ref, "config": config}, default=str))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
        proc = subprocess.run(torchrun_command(len(gpus), str(cfg), str(rec), sys.executable), env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not rec.exists():
            return {"status": "failed", "error": f"torchrun exited {proc.returncode}: {proc.stderr[-500:]}"}
        return json.loads(rec.read_text())


def _start_ray(workers: int, ray_address: str | None) -> bool:
    """Connect to (or start) Ray unless it is up; True when this call started it (and must shut it down)."""
    if not ray_address:
        # Ray turns 127.0.0.1 into the machine's network address (and its servers listen on every interface)
        # unless it believes clusters are off, which this variable says; its child processes read it too.
        os.environ.setdefault(_RAY_LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise EmbrecipeError("the ray executor needs Ray: pip install 'embrecipe[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(**ray_init_kwargs(workers, ray_address))
    return True


_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init_kwargs(workers: int, ray_address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments: connect to ``ray_address``, else start a local instance that listens on 127.0.0.1
    only (a grid's trainer runs code, so the local cluster must not accept work from the network)."""
    if ray_address:
        return {"address": ray_address, "log_to_driver": False}
    return {"num_cpus": workers, "include_dashboard": False, "log_to_driver": False,
            "_node_ip_address": "127.0.0.1"}


def ray_gpu_fraction(cell_mib: float, gpu_mib: float) -> float:
    """The GPU share a Ray task declares for a cell (``ray: {num_gpus: auto}``): its memory share, in 1/100ths,
    at most one whole GPU."""
    return min(1.0, max(0.01, math.ceil(100 * cell_mib / gpu_mib) / 100))


def _run_ray(st, todo, fn, result, bar, grid, workers, ray_address, log) -> None:
    started = _start_ray(workers, ray_address)
    import ray
    opts = {"num_cpus": float(grid.ray.get("num_cpus", 1)),
            "num_gpus": 0.0 if str(grid.ray.get("num_gpus", 0)) == "auto" else float(grid.ray.get("num_gpus", 0)),
            "max_retries": int(grid.ray.get("max_retries", 0))}
    auto_gpus = str(grid.ray.get("num_gpus", 0)) == "auto"
    if auto_gpus:  # a fraction of a GPU per cell from its memory estimate: Ray then packs cells onto GPUs
        opts["num_gpus"] = 1.0
        placer = _GpuPlacer(grid, [float(grid.ray.get("gpu_mib", 80 * 1024))], log)
    remote = ray.remote(**opts)(_call_train)
    pending: dict[Any, Cell] = {}
    max_in_flight = int(grid.ray.get("max_in_flight", max(workers, 1) * 2))
    queue = list(todo)
    try:
        with _Heartbeat(st.location, set(), grid.heartbeat_s) as beat:
            while queue or pending:
                while queue and len(pending) < max_in_flight:
                    cell = queue.pop(0)
                    if not st.claim(cell.key, cell.key_config):
                        result.busy.append(cell.key)
                        continue
                    beat.keys.add(cell.key)
                    task = remote.options(num_gpus=ray_gpu_fraction(placer.cell_mib(cell), placer.slots.capacity[0])) \
                        if auto_gpus else remote
                    pending[task.remote(fn, cell.config)] = cell
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    beat.keys.discard(cell.key)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # task or node failure
                        record = {"status": "failed", "error": f"ray task failed: {exc}"}
                    _finish(st, cell, record, result, bar, log)
    except BaseException:
        for cell in pending.values():
            st.release(cell.key)
        raise
    finally:
        if started:
            ray.shutdown()
