r"""The run record: what was asked (:class:`RunConfig`) and what one training run measured (:class:`RunRecord`).

One typed record for every producer (the trainer, the synthetic trainer) and every consumer (the store, the
law fit, the planner, the adaptive sweep, the report, the recipe check, the throughput table). It lives low in
the stack (no torch, no store) so that the maths modules can read runs without opening a store.

**The run key.** :func:`run_key` (= :meth:`RunConfig.key`) is the stable identity of a run: SHA-256 (first 20
hex digits) of the canonical JSON of its configuration, ignoring :data:`NON_IDENTITY_KEYS`. Key order,
``1e15`` vs ``1000000000000000`` and defaulted method hyper-parameters do not change it; the keys of stored runs
must never change, so the canonicalisation is pinned by tests.

**One layout.** :meth:`RunRecord.to_dict` writes schema :data:`RECORD_SCHEMA` (2): flat, ``model`` a name,
``method`` a dict, ``shape`` a dict, ``n_params``/``n_trainable``, and every further measurement
(``hardware_flops``, ``train_time_s``, ``wall_time_s``, ``tokens_per_s``, ``step_times_s``, ``versions``,
``device_name``, ...) as a top-level key of :attr:`RunRecord.details`. :meth:`RunRecord.from_dict` is the
only parser of run records: it reads schema 2 and the two legacy layouts (the trainer's nested schema 1 and the
synthetic trainer's flat one); a field it does not find on the record is looked up in the record's ``config``
(what the run was asked).

Example::

    >>> rec = RunRecord.from_dict({"config": {"model": "m", "method": {"name": "full"}, "budget": 1e15},
    ...                            "model": {"name": "m", "non_embedding_params": 1000, "trainable_params": 1000},
    ...                            "method": "full", "tokens": 5e9, "model_flops": 9.9e14,
    ...                            "final_val_loss": 1.25, "hardware_flops": 1.1e15})
    >>> rec.n_params, rec.variant, rec.budget, rec.loss()
    (1000, 'full', 1000000000000000.0, 1.25)
    >>> rec.details["hardware_flops"]
    1100000000000000.0
    >>> RunRecord.from_dict(rec.to_dict()) == rec
    True
    >>> rec.config.key() == run_key({"budget": 1e15, "method": {"name": "full"}, "model": "m"})
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.flops import ModelShape

RECORD_SCHEMA = 2
# Record schemas from_dict reads: None (the synthetic trainer's flat records had no number), 1 (the trainer's
# nested layout) and 2 (this module's).
READABLE_SCHEMAS = (None, 1, 2)

# Keys that name *where* a run writes or how it is watched, not *what* it computes: two configs that differ
# only in these are the same experiment and must share a row. Adding a key here never changes the key of a stored
# run whose config lacks it (the committed study stores hold none of the operational ones added later:
# tests/test_store.py recomputes their keys).
NON_IDENTITY_KEYS = frozenset({"out", "output_dir", "log_every", "progress", "resume", "store",
                               # operational settings: how often to checkpoint, how many workers, where to report
                               "checkpoint_every", "overwrite", "workers", "num_workers", "executor",
                               "heartbeat_s", "report_to", "push_to_hub", "hub_model_id",
                               "tracking_dir", "run_name", "tracking_group"})

# Loss fields in the order a fit looks for one when no --loss-key is given.
LOSS_KEYS = ("final_val_loss", "val_loss", "eval_loss")


def _canonical(value: Any) -> Any:
    """Normalise a config value so equal experiments serialise identically (1e15 == 1000000000000000)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"run config contains a non-finite number ({value!r})")
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalars
        return _canonical(value.item())
    raise InputError(f"run config value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _canonical_method(method: Any) -> Any:
    # A LoRA given as {"name": "lora", "rank": 8} and one with every default spelled out are the same run.
    if isinstance(method, Mapping):
        from embrecipe.models.methods import method_from_dict, method_to_dict

        return method_to_dict(method_from_dict(method))
    return method


def run_key(config: Mapping[str, Any]) -> str:
    """Stable identity of a run: SHA-256 (first 20 hex digits) of the canonical JSON of its config.

    Key order, ``1e15`` vs ``1000000000000000``, and defaulted method hyper-parameters do not change the
    key; keys in :data:`NON_IDENTITY_KEYS` (output directory, logging) are ignored.
    """
    if not isinstance(config, Mapping):
        raise InputError(f"run config must be a mapping, got {type(config).__name__}")
    ident = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    if "method" in ident:
        ident["method"] = _canonical_method(ident["method"])
    text = json.dumps(_canonical(ident), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# Settings of a trainer config that say where its data and outputs live: a run's identity names the data by its
# content fingerprint instead, and where it reports is operational.
_LOCATION_KEYS = ("data", "out", "report_to")


def run_identity(config: Mapping[str, Any], data_fingerprint: str,
                 val_fingerprint: str | None = None) -> tuple[dict[str, Any], str]:
    """The identity of a run the sweep or the recipe check trains (its store row) and its :func:`run_key`.

    The trainer config without where its data and outputs live, plus the data's *content* fingerprint (a moved
    or renamed file is the same run) and the embrecipe version (a new version is a new run). The one builder of
    a run's identity: the sweep's cells and the check's runs call it, so the same run gets the same row.

    ``val_fingerprint``: the content fingerprint of the config's ``val_data`` file, which then replaces its path
    (a validation file moved to another folder or machine is the same run). Without it the path stays, as in
    the identities of stores written before: :func:`legacy_run_key` is that older key, which
    :meth:`embrecipe.runs.store.RunStore.rekey` moves a stored run from.
    """
    from embrecipe import __version__

    ident = {k: v for k, v in config.items() if k not in _LOCATION_KEYS}
    ident["data_fingerprint"] = data_fingerprint
    if val_fingerprint is not None and isinstance(config.get("val_data"), str):
        del ident["val_data"]
        ident["val_data_fingerprint"] = val_fingerprint
    ident["code_version"] = __version__
    return ident, run_key(ident)


def legacy_run_key(config: Mapping[str, Any], data_fingerprint: str) -> str | None:
    """The key the same run had when a validation file entered its identity by path (before
    ``val_data_fingerprint``); None when the config has no validation file (its key never changed)."""
    if not isinstance(config.get("val_data"), str):
        return None
    return run_identity(config, data_fingerprint)[1]


def variant_of(method: Any) -> str | None:
    """The variant key of a method dict (``lora-r8``), its name when the dict is not a known method."""
    if not isinstance(method, Mapping):
        return None if method is None else str(method)
    try:
        from embrecipe.models.methods import method_from_dict

        return method_from_dict(method).key
    except EmbrecipeError:
        return str(method.get("name"))


_CONFIG_FIELDS = ("model", "method", "budget", "seed", "batch_size", "lr", "data_fingerprint")


@dataclass(frozen=True)
class RunConfig:
    """What a run was asked: the config dict the trainer or the sweep gave, with its common keys typed.

    ``extra`` holds every other key as given; ``given`` names the typed keys the dict had (a key absent from
    the dict and one set to None hash differently, so :meth:`to_dict` gives back exactly the dict it came from
    and :meth:`key` is the run key of that dict).
    """

    model: Any = None
    method: Any = None
    budget: Any = None
    seed: Any = None
    batch_size: Any = None
    lr: Any = None
    data_fingerprint: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        given = frozenset(k for k in d if k in _CONFIG_FIELDS)
        typed = {k: (dict(d[k]) if isinstance(d[k], Mapping) else d[k]) for k in given}
        return cls(**typed, extra={k: v for k, v in d.items() if k not in _CONFIG_FIELDS}, given=given)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _CONFIG_FIELDS if k in self.given}
        out.update(self.extra)
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in out.items()}

    def get(self, name: str, default: Any = None) -> Any:
        """The config value ``name`` (typed or extra), ``default`` when the config does not set it."""
        if name in _CONFIG_FIELDS:
            return getattr(self, name) if name in self.given else default
        return self.extra.get(name, default)

    def key(self) -> str:
        """The run key (:func:`run_key`) of this config."""
        return run_key(self.to_dict())


# Top-level fields of a schema-2 record, in to_dict order (details follow).
_RECORD_FIELDS = ("schema", "key", "status", "failure", "synthetic", "config", "model", "shape", "n_params",
                  "n_trainable", "method", "variant", "budget", "seed", "model_flops", "tokens", "steps",
                  "batch_size", "lr", "pairs", "tokens_per_pair", "unique_pairs", "data_fingerprint",
                  "final_train_loss", "final_val_loss", "loss_curve", "eval", "timings")
# Fields a record may leave to its config (a record field that is None is what the config says), with the older
# names each was written under.
_FROM_CONFIG: dict[str, tuple[str, ...]] = {
    "budget": ("budget",), "seed": ("seed",), "model_flops": ("model_flops",), "tokens": ("tokens",),
    "steps": ("steps",), "batch_size": ("batch_size",), "lr": ("lr",), "pairs": ("pairs", "train_pairs"),
    "tokens_per_pair": ("tokens_per_pair",), "unique_pairs": ("unique_pairs", "dataset_pairs"),
    "data_fingerprint": ("data_fingerprint",), "final_train_loss": ("final_train_loss",),
    "final_val_loss": ("final_val_loss",), "loss_curve": ("loss_curve",), "eval": ("eval",),
    "timings": ("timings",), "n_params": ("n_params", "non_embedding_params"),
    "n_trainable": ("n_trainable", "trainable_params"),
}
# The trainer's timings (details at the top level); RunRecord.all_timings gathers them when there is no ``timings``.
_TIMING_KEYS = ("train_time_s", "wall_time_s", "tokens_per_s")


@dataclass(frozen=True)
class RunRecord:
    """One training run: its config and what it measured (see the module docstring).

    ``n_params`` is N (non-embedding parameters), ``n_trainable`` N_t, ``model_flops`` the FLOPs spent under
    the budget convention of :mod:`embrecipe.flops`, ``tokens`` D. ``unique_pairs`` is the size of the data
    set the run drew from, ``pairs`` the pairs it processed. ``key`` is the store's row key when the record
    came from a store. ``details`` holds everything else the trainer measured.
    """

    config: RunConfig | None = None
    status: str | None = None
    failure: str | None = None
    synthetic: bool = False
    model: str | None = None
    shape: ModelShape | None = None
    n_params: float | None = None  # counts, but stores written by JSON may hold them as floats
    n_trainable: float | None = None
    method: Mapping[str, Any] | None = None
    variant: str | None = None
    budget: float | None = None
    seed: Any = None
    model_flops: float | None = None
    tokens: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    pairs: int | None = None
    tokens_per_pair: float | None = None
    unique_pairs: int | None = None
    data_fingerprint: str | None = None
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    loss_curve: Any = None
    eval: Mapping[str, Any] | None = None
    timings: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    schema: int = RECORD_SCHEMA

    def __post_init__(self) -> None:
        clash = sorted(set(self.details) & set(_RECORD_FIELDS))
        if clash:  # to_dict writes details beside the fields: one name must not mean two things
            raise InputError(f"run record details repeat the field(s) {', '.join(clash)}")
        if self.config is not None:  # what the record does not say, its config does (e.g. a grid's dataset_pairs)
            for name, aliases in _FROM_CONFIG.items():
                if getattr(self, name) is None:
                    value = next((v for a in aliases if (v := self.config.get(a)) is not None), None)
                    if value is not None:
                        object.__setattr__(self, name, float_or_none(value) if name == "lr" else value)

    @property
    def completed(self) -> bool:
        """True unless the record says otherwise (records of the synthetic layout carried no status)."""
        return (self.status or "completed") == "completed"

    @property
    def all_timings(self) -> Mapping[str, Any] | None:
        """``timings`` when the record has that dict, else the trainer's ``train_time_s``, ``wall_time_s`` and
        ``tokens_per_s`` details (None when there are none)."""
        if self.timings is not None:
            return self.timings
        return {k: self.details[k] for k in _TIMING_KEYS if k in self.details} or None

    def loss(self, key: str | None = None) -> float | None:
        """The loss a fit uses: the field (or detail, or config key) ``key``; by default the first of
        :data:`LOSS_KEYS` the record has. None when absent."""
        if key:
            return self._lookup(key)
        return next((x for x in (self._lookup(k) for k in LOSS_KEYS) if x is not None), None)

    def _lookup(self, name: str) -> Any:
        if name in _RECORD_FIELDS and name not in ("schema", "config"):
            value = getattr(self, name)
            if name == "shape" and value is not None:
                value = value.to_dict()
        else:
            value = self.details.get(name)
        if value is None and self.config is not None:
            value = self.config.get(name)
        return value

    def with_key(self, key: str | None) -> RunRecord:
        return dataclasses.replace(self, key=key)

    def to_dict(self) -> dict[str, Any]:
        """The schema-2 dict (plain JSON types; ``key`` only when known)."""
        out: dict[str, Any] = {}
        for name in _RECORD_FIELDS:
            value = getattr(self, name)
            if name == "key" and value is None:
                continue
            if name == "config":
                value = None if value is None else value.to_dict()
            elif name == "shape":
                value = None if value is None else value.to_dict()
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        out["schema"] = RECORD_SCHEMA
        for k, v in self.details.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "run record") -> RunRecord:
        """Parse a record of any known layout (schema 2, the trainer's nested schema 1, the flat synthetic one).

        ``where`` names the record in errors (e.g. the store and run key)."""
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: a run record must be a mapping, got {type(d).__name__}")
        schema = d.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise InputError(f"{where}: run record schema {schema!r} is not supported "
                             f"(this embrecipe reads schemas 1 and {RECORD_SCHEMA})")
        flat = _flatten_legacy(d)
        cfg_raw = flat.pop("config", None)
        config = RunConfig.from_dict(cfg_raw) if isinstance(cfg_raw, Mapping) else None
        cfg = cfg_raw if isinstance(cfg_raw, Mapping) else {}

        # Fields the record leaves unset are filled from its config by __post_init__ (_FROM_CONFIG); only model and
        # shape, which it does not fill, are looked up in the config here.
        def first(source: Mapping[str, Any], *names: str) -> Any:
            return next((source[name] for name in names if source.get(name) is not None), None)

        def look(*names: str) -> Any:
            return first(flat, *names)

        model = first(flat, "model") or first(cfg, "model")
        if isinstance(model, Mapping):
            model = model.get("name") or model.get("path")
        method = flat.get("method")
        if not isinstance(method, Mapping):
            method = cfg.get("method") if isinstance(cfg.get("method"), Mapping) else None
        method = dict(method) if isinstance(method, Mapping) else None
        shape = first(flat, "shape", "model_shape") or first(cfg, "shape", "model_shape")
        consumed = {*_RECORD_FIELDS, "model_shape", "non_embedding_params", "trainable_params", "train_pairs",
                    "dataset_pairs"}
        return cls(
            config=config,
            status=flat.get("status"),
            failure=flat.get("failure"),
            synthetic=bool(flat.get("synthetic", False)),
            model=None if model is None else str(model),
            shape=ModelShape.from_dict(shape) if isinstance(shape, Mapping) else None,
            n_params=look("n_params", "non_embedding_params"),
            n_trainable=look("n_trainable", "trainable_params"),
            method=method,
            variant=flat.get("variant") or variant_of(method),
            budget=look("budget"),
            seed=look("seed"),
            model_flops=look("model_flops"),
            tokens=look("tokens"),
            steps=look("steps"),
            batch_size=look("batch_size"),
            lr=float_or_none(look("lr")),
            pairs=look("pairs", "train_pairs"),
            tokens_per_pair=look("tokens_per_pair"),
            unique_pairs=look("unique_pairs", "dataset_pairs"),
            data_fingerprint=look("data_fingerprint"),
            final_train_loss=look("final_train_loss"),
            final_val_loss=look("final_val_loss"),
            loss_curve=look("loss_curve"),
            eval=look("eval"),
            timings=look("timings"),
            details={k: v for k, v in flat.items() if k not in consumed},
            key=None if d.get("key") is None else str(d["key"]),
        )


def as_record(record: RunRecord | Mapping[str, Any], *, where: str = "run record") -> RunRecord:
    """``record`` itself, or the :class:`RunRecord` parsed from a dict of any known layout."""
    return record if isinstance(record, RunRecord) else RunRecord.from_dict(record, where=where)


def _flatten_legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's nested schema-1 layout → the flat one (other layouts: a copy).

    Nested: ``model: {name, non_embedding_params, trainable_params, trainable_params_total, shape}``, ``method``
    a name with ``hparams`` and ``method_key``, ``data: {source, pairs, fingerprint, mean_tokens_per_pair}``
    (``data.pairs`` is the data set's size: the flat ``unique_pairs``).
    """
    flat = {k: v for k, v in d.items() if k not in ("schema", "key")}
    model = flat.get("model")
    if isinstance(model, Mapping):
        flat["model"] = model.get("name") or model.get("path")
        for src, dst in (("non_embedding_params", "n_params"), ("trainable_params", "n_trainable"),
                         ("shape", "shape"), ("trainable_params_total", "trainable_params_total")):
            if model.get(src) is not None and flat.get(dst) is None:
                flat[dst] = model[src]
    method = flat.get("method")
    if isinstance(method, str):
        cfg = flat.get("config")
        cfg_method = cfg.get("method") if isinstance(cfg, Mapping) else None
        flat["method"] = dict(cfg_method) if isinstance(cfg_method, Mapping) \
            else {"name": method, **dict(flat.get("hparams") or {})}
        if flat.get("method_key"):
            flat["variant"] = flat["method_key"]
        flat.pop("method_key", None)
        flat.pop("hparams", None)
    data = flat.get("data")
    if isinstance(data, Mapping):
        flat.pop("data")
        for src, dst in (("fingerprint", "data_fingerprint"), ("mean_tokens_per_pair", "tokens_per_pair"),
                         ("pairs", "unique_pairs"), ("source", "data_source")):
            if data.get(src) is not None and flat.get(dst) is None:
                flat[dst] = data[src]
    return flat


def float_or_none(v: Any) -> float | None:
    """``float(v)``, or None when ``v`` is None or not a number (stored records may hold anything)."""
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
