"""Training settings: :class:`TrainConfig`, its checks, and how a plain dict (a grid cell, a CLI) becomes one.

Everything here is plain data and validation (no torch at import), so a dry run and the sweep's pre-flight
checks use it without loading a model. The LR default (:func:`resolve_lr`): the law card's LR where the packaged
card knows the model and method, else the study's one tenth of the model's published pre-training peak LR, times
:data:`METHOD_LR_FACTOR` for the method (:func:`default_lr`). A run's target is a FLOP ``budget``, or ``epochs`` or
``max_steps``, which the trainer turns into the FLOPs of exactly those batches.

Example::

    >>> from embrecipe.train_config import config_from_dict
    >>> config_from_dict({"model": "runs/base", "data": "pairs.jsonl", "budget": 1e12}).method.key
    'full'
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import PairData
from .errors import BudgetError, EmbrecipeError, InputError
from .methods import FullFineTuning, MethodConfig, method_from_dict, method_to_dict

# Published pre-training peak LRs, by checkpoint name (Pythia: Biderman et al. 2023, Table 1 / the released
# configs; SmolLM2-135M: its released training config). The study's default fine-tuning LR is one tenth of these.
_PRETRAIN_LR = {
    "pythia-14m": 1e-3, "pythia-31m": 1e-3, "pythia-70m": 1e-3, "pythia-160m": 6e-4, "pythia-410m": 3e-4,
    "pythia-1b": 3e-4, "pythia-1.4b": 2e-4, "pythia-2.8b": 1.6e-4, "pythia-6.9b": 1.2e-4, "pythia-12b": 1.2e-4,
    "smollm2": 3e-3,
}


# Methods that train few parameters need a higher LR than full fine-tuning: LoRA's update is a low-rank product
# whose B factor starts at zero, and bias-only (BitFit) moves a tiny fraction of the weights; both are usually run
# at about 10x the full fine-tuning LR (the LoRA and BitFit papers' own LR ranges; in this project a LoRA run at
# the full-tuning default of 3e-4 barely left chance, issue 21). Full and block freezing train whole matrices.
METHOD_LR_FACTOR = {"full": 1.0, "freeze": 1.0, "bias": 10.0, "lora": 10.0}


def default_lr(model_name: str, method: str | None = None) -> float:
    """The study's default: one tenth of the model's pre-training LR (1e-4 when the model is unknown), times the
    method's :data:`METHOD_LR_FACTOR` when ``method`` is given (10 for LoRA and bias-only, 1 otherwise)."""
    name = model_name.lower().replace("_", "-")
    factor = METHOD_LR_FACTOR.get(method, 1.0) if method else 1.0
    for key in sorted(_PRETRAIN_LR, key=len, reverse=True):
        if key in name:
            return _PRETRAIN_LR[key] / 10 * factor
    return 1e-4 * factor


def card_lr(model: str, variant: str, card: str | os.PathLike[str] | None = None) -> float | None:
    """The LR the law card (default: the packaged one) records for ``variant`` of ``model`` (matched by the model's
    folder or hub name), or None when the card does not know that model. Never fails: a missing or unreadable
    card only means there is no card LR."""
    import json

    from .recipe import recipe_lr

    try:
        if card is None:
            from importlib import resources

            card = Path(str(resources.files("embrecipe"))) / "data" / "laws" / "default.json"
        recipe = json.loads(Path(card).read_text()).get("recipe") or {}
        name = str(model).rstrip("/").rsplit("/", 1)[-1]
        lr, _ = recipe_lr(recipe, variant, name)
    except Exception:
        return None
    return lr if lr is not None and math.isfinite(lr) and lr > 0 else None


def resolve_lr(config: TrainConfig) -> tuple[float, str]:
    """The peak LR a run uses and where it comes from: the config's ``lr``; else the law card's LR for this model and
    method variant; else :func:`default_lr` for the model and method."""
    if config.lr:
        return float(config.lr), "given"
    lr = card_lr(config.model, config.method.key)
    if lr is not None:
        return lr, f"the law card's LR for {config.method.key} of this model"
    factor = METHOD_LR_FACTOR.get(config.method.name, 1.0)
    return default_lr(config.model, config.method.name), (
        "1/10 of the model's pre-training peak LR" + (f" x{factor:g} for {config.method.name}" if factor != 1 else ""))


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults follow the study (docs/design.md)."""

    model: str
    data: str | PairData
    # the training target: exactly one of budget (model FLOPs), epochs or max_steps; the trainer turns an epoch
    # or step target into the FLOPs its batches cost (measured tokens), so the meter and LR schedule stay exact
    budget: float | None = field(default=None, metadata={"help": "model-FLOP budget, e.g. 3e13"})
    epochs: float | None = field(default=None, metadata={
        "help": "train this many passes over the data instead of a FLOP budget (converted to the exact FLOPs its "
                "batches cost)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "train this many optimizer steps instead of a FLOP budget (converted to the exact FLOPs its "
                "batches cost)"})
    method: MethodConfig = field(default_factory=FullFineTuning)
    batch_size: int = 1024
    mini_batch_size: int | None = None  # GradCache when set and < batch_size
    max_seq_length: int = 75
    lr: float | None = None
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    scale: float = 40.0
    pooling: str = "mean"
    hard_negatives: int = 0
    val_data: str | PairData | None = None
    val_fraction: float = 0.0
    val_size_cap: int = 4096
    allow_repeat: bool = True
    seed: int = 0
    out: str | None = None
    gguf_file: str | None = None
    precision: str = "auto"  # auto | bf16 | fp32
    gradient_checkpointing: bool = False
    # optimizer steps between checkpoints (0 = never); on by default so a killed run can --resume
    checkpoint_every: int = 50
    resume: bool = False
    overwrite: bool = False  # write into a non-empty ``out`` (replacing what a run writes there)
    keep_adapter: bool = False
    log_every: int = 1
    progress: bool = True
    length_bucketing: bool = True
    attn_implementation: str = "sdpa"  # "eager" is the slow reference path; "flex_attention" on a GPU
    # unpadded execution: each text column packed into rows (embrecipe.packing); auto = on a CUDA device
    packing: str = "auto"  # auto | on | off
    pack_length: int = 0  # tokens per packed row; 0 = auto (about twice max_seq_length)
    # the host reads the loss (a device sync) only every sync_every steps, at checkpoints and at the end; the
    # losses of the steps in between wait on the device, so the loss curve is the same
    sync_every: int = 32
    compile: str = "none"  # none | default (torch.compile) | cudagraphs (compile + CUDA graphs; CUDA only)
    stop_after_steps: int | None = None  # for tests/benchmarks: simulate a kill after this many steps
    # instruction prompts (sentence-transformers' "query"/"document" prompts), saved with the model
    query_prompt: str | None = None
    doc_prompt: str | None = None
    # experiment tracking (embrecipe.tracking): HF-style report_to; logs under tracking_dir (default out/runs)
    report_to: str = "auto"
    tracking_dir: str | None = None
    run_name: str | None = None
    tracking_group: str | None = None  # a sweep's name: groups its cells (W&B group, MLflow experiment)

    def validate(self) -> None:
        """Raise the first broken rule's one-line error (:data:`_RULES`, in their order), then check the tracking
        backend (an unknown or missing one fails before the model loads)."""
        for rule in _RULES:
            if rule.broken(self):
                raise rule.error(rule.message(self))
        from .tracking import resolve_report_to

        resolve_report_to(self.report_to)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method"] = method_to_dict(self.method)
        for k in ("data", "val_data"):
            if isinstance(d[k], PairData):
                d[k] = d[k].source
        # Settings added after runs were first recorded appear only when set, so a run that does not use them
        # keeps the config (and store key) it had before they existed.
        for k, default in _OPTIONAL_DEFAULTS.items():
            if d.get(k) == default:
                del d[k]
        return d


_OPTIONAL_DEFAULTS: dict[str, Any] = {"epochs": None, "max_steps": None, "query_prompt": None, "doc_prompt": None, "report_to": "auto",
                                      "tracking_dir": None, "run_name": None, "tracking_group": None}


@dataclass(frozen=True)
class _Rule:
    """One check of :meth:`TrainConfig.validate`: when ``broken(config)``, raise ``error(message(config))``."""

    broken: Callable[[TrainConfig], bool]
    message: Callable[[TrainConfig], str]
    error: type[EmbrecipeError] = InputError


def _finite_and(value: float, ok: Callable[[float], bool]) -> bool:
    return math.isfinite(value) and ok(value)


# The settings' checks, in the order validate() applies them (the first broken one is reported, so a config with
# several faults names the same one as before); grouped by what they guard.
_RULES: tuple[_Rule, ...] = (
    # the budget, the batch and the sequence length
    _Rule(lambda c: sum(x is not None for x in (c.budget, c.epochs, c.max_steps)) != 1,
          lambda c: "give exactly one training target: budget (model FLOPs), epochs or max_steps"
                    + ("" if c.budget is None and c.epochs is None and c.max_steps is None else
                       f"; got {', '.join(k for k in ('budget', 'epochs', 'max_steps') if getattr(c, k) is not None)}"),
          BudgetError),
    _Rule(lambda c: c.budget is not None and not (isinstance(c.budget, (int, float))
                                                  and _finite_and(c.budget, lambda b: b > 0)),
          lambda c: f"budget must be a positive number of FLOPs, got {c.budget!r}", BudgetError),
    _Rule(lambda c: c.epochs is not None and not (isinstance(c.epochs, (int, float))
                                                  and _finite_and(c.epochs, lambda e: e > 0)),
          lambda c: f"epochs must be a positive number, got {c.epochs!r}", BudgetError),
    _Rule(lambda c: c.max_steps is not None and not (isinstance(c.max_steps, int) and c.max_steps >= 1),
          lambda c: f"max_steps must be a whole number of steps >= 1, got {c.max_steps!r}", BudgetError),
    _Rule(lambda c: c.batch_size < 2,
          lambda c: f"batch_size must be >= 2 (in-batch negatives), got {c.batch_size}"),
    _Rule(lambda c: c.mini_batch_size is not None and c.mini_batch_size < 1,
          lambda c: f"mini_batch_size must be >= 1, got {c.mini_batch_size}"),
    _Rule(lambda c: c.max_seq_length < 2,
          lambda c: f"max_seq_length must be >= 2, got {c.max_seq_length}"),
    # optimisation numbers and ranges (precision and val_fraction sit between the two LR rules: first fault wins)
    _Rule(lambda c: c.lr is not None and not c.lr > 0,
          lambda c: f"lr must be > 0, got {c.lr}"),
    _Rule(lambda c: not 0 <= c.warmup_ratio < 1,
          lambda c: f"warmup_ratio must be in [0, 1), got {c.warmup_ratio}"),
    _Rule(lambda c: c.precision not in ("auto", "bf16", "fp32"),
          lambda c: f"precision must be auto, bf16 or fp32, got {c.precision!r}"),
    _Rule(lambda c: not 0 <= c.val_fraction < 1,
          lambda c: f"val_fraction must be in [0, 1), got {c.val_fraction}"),
    _Rule(lambda c: c.lr is not None and not math.isfinite(c.lr),
          lambda c: f"lr must be a finite number, got {c.lr}"),
    _Rule(lambda c: not _finite_and(c.scale, lambda x: x > 0),
          lambda c: f"scale (the InfoNCE inverse temperature) must be > 0, got {c.scale}"),
    _Rule(lambda c: not _finite_and(c.weight_decay, lambda x: x >= 0),
          lambda c: f"weight_decay must be >= 0, got {c.weight_decay}"),
    _Rule(lambda c: c.max_grad_norm is not None and not _finite_and(c.max_grad_norm, lambda x: x >= 0),
          lambda c: f"max_grad_norm must be >= 0 (0 or None: no clipping), got {c.max_grad_norm}"),
    # step counts: checkpoints, logging, data
    _Rule(lambda c: c.checkpoint_every < 0,
          lambda c: f"checkpoint_every must be >= 0 steps (0 = never), got {c.checkpoint_every}"),
    _Rule(lambda c: c.log_every < 1,
          lambda c: f"log_every must be >= 1 step, got {c.log_every}"),
    _Rule(lambda c: c.hard_negatives < 0,
          lambda c: f"hard_negatives must be >= 0, got {c.hard_negatives}"),
    _Rule(lambda c: c.val_size_cap < 2,
          lambda c: f"val_size_cap must be >= 2 pairs (in-batch negatives), got {c.val_size_cap}"),
    _Rule(lambda c: c.stop_after_steps is not None and c.stop_after_steps < 0,
          lambda c: f"stop_after_steps must be >= 0, got {c.stop_after_steps}"),
    # output and resume
    _Rule(lambda c: c.resume and c.overwrite,
          lambda c: "resume and overwrite contradict each other: resume continues the run in out, "
                    "overwrite starts a new one there"),
    # execution: packing, host syncs, compilation
    _Rule(lambda c: c.packing not in ("auto", "on", "off"),
          lambda c: f"packing must be auto, on or off, got {c.packing!r}"),
    _Rule(lambda c: bool(c.pack_length) and c.pack_length < c.max_seq_length,
          lambda c: f"pack_length {c.pack_length} is shorter than max_seq_length {c.max_seq_length}"),
    _Rule(lambda c: c.sync_every < 1,
          lambda c: f"sync_every must be >= 1, got {c.sync_every}"),
    _Rule(lambda c: c.compile not in ("none", "default", "cudagraphs"),
          lambda c: f"compile must be none, default or cudagraphs, got {c.compile!r}"),
)



# Setting types checked on dict configs (grid files): YAML reads ``1.0e6`` (no exponent sign) as a *string*,
# which would otherwise pass every check and fail each cell with a TypeError. Fields not listed are not checked.
_NUMBER_SETTINGS = ("budget", "epochs", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "scale", "val_fraction")
_INT_SETTINGS = ("max_steps", "batch_size", "mini_batch_size", "max_seq_length", "hard_negatives", "val_size_cap", "seed",
                 "checkpoint_every", "log_every", "stop_after_steps")
_BOOL_SETTINGS = ("allow_repeat", "gradient_checkpointing", "resume", "overwrite", "keep_adapter", "progress",
                  "length_bucketing")
_STR_SETTINGS = ("model", "pooling", "precision", "attn_implementation", "gguf_file", "out")


def check_setting_types(config: dict[str, Any], source: str = "config") -> None:
    """One-line :class:`InputError` for a training setting of the wrong type (``source`` names where it came from)."""
    for name, value in config.items():
        if value is None:
            continue
        if name in _NUMBER_SETTINGS or name in _INT_SETTINGS:
            integer = name in _INT_SETTINGS
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if ok and not isinstance(value, bool):
                continue
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (YAML reads 1.0e6 as text: write 1.0e+6 or 1000000)"
                except ValueError:
                    pass
            kind = "an integer" if integer else "a number"
            raise InputError(f"{source}: {name} must be {kind}, got {type(value).__name__} {value!r}{hint}")
        if name in _BOOL_SETTINGS and not isinstance(value, bool):
            raise InputError(f"{source}: {name} must be true or false, got {type(value).__name__} {value!r}")
        if name in _STR_SETTINGS and not isinstance(value, str):
            raise InputError(f"{source}: {name} must be a string, got {type(value).__name__} {value!r}")
        if name in ("data", "val_data") and not isinstance(value, (str, os.PathLike, PairData)):
            raise InputError(f"{source}: {name} must be a path, got {type(value).__name__} {value!r}")


def config_from_dict(config: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated :class:`TrainConfig` from a plain dict: every check :func:`train` makes on settings alone
    (unknown keys, types, ranges, ``data`` present), without loading data or models (so a dry run can use it)."""
    cfg = dict(config)
    method = cfg.pop("method", {"name": "full"})
    if isinstance(method, str):
        method = {"name": method}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(cfg) - fields
    if unknown:
        raise InputError(f"{source}: unknown training setting(s): {', '.join(sorted(unknown))}")
    missing = [k for k in ("model", "data") if cfg.get(k) is None]
    if all(cfg.get(k) is None for k in ("budget", "epochs", "max_steps")):
        missing.append("budget")
    if missing:
        raise InputError(f"{source}: missing training setting(s): {', '.join(missing)} (a grid gives data in "
                         "'train: {data: pairs.jsonl}')")
    check_setting_types(cfg, source)
    tc = TrainConfig(method=method_from_dict(method), **cfg)
    try:
        tc.validate()
    except EmbrecipeError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    return tc
