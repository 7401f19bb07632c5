r"""Sweep grids: the grid YAML's keys, validated, as a :class:`Grid` (models, methods × hyper-parameters, budgets).

One responsibility: parse and check what the user wrote (paths resolved against the grid file's folder, methods
expanded through the method registry, the LR-search protocol :class:`LRSearch`). Nothing here trains, measures
or touches the store; :mod:`embrecipe.sweep.cells` turns a grid into cells and :mod:`embrecipe.sweep.orchestration` runs them.
The format is documented in ``docs/sweep.md``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape, is_budget
from embrecipe.jsonio import read_mapping
from embrecipe.models.methods import canonical_method_name, method_names, method_to_dict, parse_method
from embrecipe.sweep.adaptive import AdaptiveSpec

DEFAULT_TRAIN_FN = "embrecipe.training.trainer:train_from_dict"
SYNTHETIC_TRAIN_FN = "embrecipe.sweep.synthetic:synthetic_train"
# The names grid files used before the package had stage folders; they keep working.
LEGACY_TRAIN_FNS = {"embrecipe.trainer:train_from_dict": DEFAULT_TRAIN_FN,
                    "embrecipe.synthetic:synthetic_train": SYNTHETIC_TRAIN_FN,
                    "synthetic": SYNTHETIC_TRAIN_FN}
_GRID_KEYS = {"name", "models", "family", "methods", "budgets", "train", "min_steps", "allow_repeat",
              "tokens_per_pair", "dataset_pairs", "store", "out", "trainer", "executor", "workers",
              "ray", "heartbeat_s", "adaptive", "gpu", "lr_search"}



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
    # GPU filling (embrecipe.sweep.placement): pack (several cells per GPU, bounded by memory; default on),
    # gpus_per_cell (> 1: whole GPUs under torchrun), headroom (share of free memory to fill, 0.9)
    gpu: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    adaptive: AdaptiveSpec | None = None  # set: run the adaptive experimental design (embrecipe.sweep.design)
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
        from embrecipe.recipe import log_spaced_lrs

        if self.lrs is not None:
            return sorted(self.lrs)
        if base_lr is None:
            from embrecipe.training.config import default_lr

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


def _expand(value: str, source: str = "grid") -> Path:
    """``value`` with ``$VARS`` and ``~`` expanded; an unset variable is an error, not a literal folder name."""
    expanded = os.path.expandvars(value)
    if "$" in value and "$" in expanded:
        unset = sorted(set(re.findall(r"\$\{?(\w+)", expanded)))
        if unset:
            raise InputError(f"{source}: path {value!r} uses the unset environment variable(s) {', '.join(unset)}")
    return Path(expanded).expanduser()


def _resolve(base: Path, value: Any, source: str = "grid") -> Any:
    """A path the grid names: ``$VARS`` and ``~`` expanded, then relative to the grid file's folder when that
    exists there (a hub id or a testbed name is returned as written)."""
    if not isinstance(value, str) or not value:
        return value
    p = _expand(value, source)
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
    models = _grid_models(raw, base, source)
    methods = expand_methods(raw.get("methods"))
    try:
        budgets = sorted(float(b) for b in _as_list(raw.get("budgets") or []))
    except (TypeError, ValueError):
        raise InputError(f"{source}: budgets must be numbers of FLOPs (e.g. 1e13)") from None
    if not budgets or not all(is_budget(b) for b in budgets):
        raise InputError(f"{source}: 'budgets' must be a non-empty list of positive FLOP counts")
    train = dict(raw.get("train") or {})
    for k in ("model", "method", "budget", "out"):
        if k in train:
            raise InputError(f"{source}: train.{k} is set per cell by the sweep; remove it from 'train'")
    for k in ("data", "val_data"):
        if k in train:
            train[k] = _resolve(base, train[k], source)
    trainer = str(raw.get("trainer") or DEFAULT_TRAIN_FN)
    trainer = LEGACY_TRAIN_FNS.get(trainer, trainer)
    name = str(raw.get("name") or "sweep")
    check_name(name, f"{source}: name")
    return Grid(
        models=models, methods=methods, budgets=budgets, train=train,
        name=name,
        min_steps=int(raw.get("min_steps", 10)),
        allow_repeat=bool(raw.get("allow_repeat", False)),
        tokens_per_pair=None if raw.get("tokens_per_pair") is None else float(raw["tokens_per_pair"]),
        dataset_pairs=None if raw.get("dataset_pairs") is None else int(raw["dataset_pairs"]),
        store=None if raw.get("store") is None else str(base / _expand(str(raw["store"]), source)),
        out=None if raw.get("out") is None else str(base / _expand(str(raw["out"]), source)),
        trainer=trainer,
        heartbeat_s=float(raw.get("heartbeat_s", 60.0)),
        ray=dict(raw.get("ray") or {}),
        gpu=_gpu_settings(raw.get("gpu"), source),
        base_dir=base,
        adaptive=AdaptiveSpec.from_value(raw.get("adaptive"), source=source),
        source=source,
        lr_search=LRSearch.from_value(raw.get("lr_search"), source=source),
    )


def _grid_models(raw: Mapping[str, Any], base: Path, source: str) -> list[dict[str, Any]]:
    """The grid's models: a family file's members, then the ``models`` list (paths/hub ids or mappings)."""
    models: list[dict[str, Any]] = []
    if raw.get("family"):
        from embrecipe.models.family import Family

        for m in Family.load(_resolve(base, raw["family"], source)).members:
            models.append({"name": m.name, "path": m.path, "shape": m.shape})
    for i, m in enumerate(_as_list(raw.get("models") or [])):
        if isinstance(m, str):
            models.append({"name": Path(m).name or m, "path": _resolve(base, m, source), "shape": None})
        elif isinstance(m, Mapping) and "path" in m:
            if m.get("name") is not None:
                check_name(str(m["name"]), f"{source}: models[{i}].name")
            try:
                shape = ModelShape.from_dict(m["shape"]) if m.get("shape") else None
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise InputError(f"{source}: models[{i}].shape is malformed ({type(exc).__name__}: {exc})") from None
            models.append({"name": str(m.get("name") or Path(str(m["path"])).name), "path": _resolve(base, m["path"], source),
                           "shape": shape})
        else:
            raise InputError(f"{source}: models[{i}] must be a path/hub id or {{path: ..., shape: ...}}")
    if not models:
        raise InputError(f"{source}: no models (give 'models: [...]' or 'family: file.json')")
    return models


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

