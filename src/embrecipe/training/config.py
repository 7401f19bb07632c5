"""Training settings: :class:`TrainConfig`, its checks, and how a plain dict (a grid cell, a CLI) becomes one.

Everything here is plain data and validation (no torch at import), so a dry run and the sweep's pre-flight
checks use it without loading a model. The LR default (:func:`resolve_lr`): the law card's LR where the packaged
card knows the model and method, else the study's one tenth of the model's published pre-training peak LR, times
:data:`METHOD_LR_FACTOR` for the method (:func:`default_lr`). A run's target is a FLOP ``budget``, or ``epochs`` or
``max_steps``, which the trainer turns into the FLOPs of exactly those batches.

Example::

    >>> from embrecipe.training.config import config_from_dict
    >>> config_from_dict({"model": "runs/base", "data": "pairs.jsonl", "budget": 1e12}).method.key
    'full'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.data.pairs import PairData
from embrecipe.errors import BudgetError, EmbrecipeError, InputError
from embrecipe.flops import is_budget
from embrecipe.models.methods import FullFineTuning, MethodConfig, method_from_dict, method_to_dict
from embrecipe.resources import resource_path

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

    from embrecipe.recipe import recipe_lr

    try:
        if card is None:
            card = resource_path("laws", "default.json")
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


def setting(default: Any = dataclasses.MISSING, help: str = "", *, group: str = "training",
            flag: str | None = None, negate: bool = False, choices: Sequence[str] | None = None,
            zero_is_none: bool = False, required: bool = False, exclusive: str | None = None) -> Any:
    """A :class:`TrainConfig` field with what its ``embrecipe train`` flag needs, stated once beside the field.

    A field with ``help`` gets a flag (``--field-name`` unless ``flag`` names another) whose type, default and
    help come from the field (:func:`embrecipe.cli.train.add_config_arguments`); ``negate``: a ``--no-x``-style
    flag that sets the bool field to False; ``zero_is_none``: the flag's 0 means None; ``required``: required
    on the command line (not in a dict config); ``exclusive``: the flags of fields with the same name form a
    required mutually exclusive group (the training target: --budget, --epochs or --max-steps). A field without
    ``help`` has no flag.
    """
    meta = {"help": help, "group": group, "flag": flag, "negate": negate, "choices": choices,
            "zero_is_none": zero_is_none, "required": required, "exclusive": exclusive}
    return field(default=default, metadata=meta)


# Flag groups of `embrecipe train`, in --help order ("" = the command's own options).
MAIN, PROMPTS, TRACKING, SPEED = "", "prompts", "tracking and the Hub", "speed (docs/performance.md)"


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults follow the study (docs/design.md).

    Each field is one setting: its type, default and ``embrecipe train`` flag (help text) are stated here once
    (:func:`setting`); dict configs are type-checked from the same annotations (:func:`check_setting_types`).
    """

    model: str = setting(help="local checkpoint dir, hub id, or a .gguf file", group=MAIN, required=True)
    # (setting() returns a dataclasses.field: the default is not shared between instances)
    data: str | PairData = setting(help="pairs: .jsonl[.gz] {query,pos,neg}, .csv/.tsv/.parquet, or a "  # noqa: RUF009
                                        "datasets directory", group=MAIN, required=True)
    # the training target: exactly one of budget (model FLOPs), epochs or max_steps; the trainer turns an epoch
    # or step target into the FLOPs its batches cost (measured tokens), so the meter and LR schedule stay exact
    budget: float | None = setting(None, "model-FLOP budget, e.g. 3e13", group=MAIN, exclusive="target")
    epochs: float | None = setting(None, "passes over the data instead of --budget; trained as the exact FLOPs "
                                         "those batches cost (run.json: budget, model_flops)", group=MAIN,
                                   exclusive="target")
    max_steps: int | None = setting(None, "optimizer steps instead of --budget; trained as the exact FLOPs those "
                                          "batches cost", group=MAIN, exclusive="target")
    method: MethodConfig = field(default_factory=FullFineTuning)  # its flags: cli.train.add_method_arguments
    batch_size: int = setting(1024, "pairs per step (default: 1024)")
    mini_batch_size: int | None = setting(
        None, "GradCache mini-batch: embeds this many texts at a time so large batches fit in memory")
    max_seq_length: int = setting(75, "tokens per text (default: 75)")
    lr: float | None = setting(None, "peak learning rate (default: the law card's LR when the packaged card knows "
                                     "this model and method; else 1/10 of the model's published pre-training peak, "
                                     "e.g. 6e-5 for pythia-160m, 1e-4 if unknown, times 10 for lora and bias, which "
                                     "train few parameters)")
    weight_decay: float = setting(0.1, "AdamW weight decay (default: 0.1)")
    warmup_ratio: float = setting(0.1, "fraction of the budget spent warming the LR up (default: 0.1)")
    max_grad_norm: float | None = setting(1.0, "gradient clipping (0 disables)", zero_is_none=True)
    scale: float = setting(40.0, "InfoNCE inverse temperature (default: 40)")
    pooling: str = setting("mean", "mean (default) or lasttoken (EOS is appended to every text, in training and in "
                                   "the saved model)",
                           choices=("mean", "lasttoken", "last-token", "weighted-mean"))
    hard_negatives: int = setting(0, "use this many 'neg' texts per pair")
    val_data: str | PairData | None = setting(  # noqa: RUF009
        None, "held-out pairs for the final validation loss", group=MAIN)
    val_fraction: float = setting(0.0, "hold out this fraction of --data for validation when --val-data is not "
                                       "given", group=MAIN)
    val_size_cap: int = 4096
    allow_repeat: bool = setting(True, "error instead of repeating data (epochs > 1)", flag="--no-repeat",
                                 negate=True)
    seed: int = setting(0, "random seed (default: 0)")
    out: str | None = setting(None, "output directory (SentenceTransformer + run.json)", group=MAIN, required=True)
    gguf_file: str | None = setting(None, "GGUF file name inside --model (hub repo or dir)", group=MAIN)
    precision: str = setting("auto", "auto: bf16 autocast where the hardware computes bf16 natively (a CUDA GPU "
                                     "with bf16, a CPU with avx512_bf16 or amx_bf16), else fp32; the choice is "
                                     "printed and in run.json",
                             choices=("auto", "bf16", "fp32"))
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass (less memory)")
    # optimizer steps between checkpoints (0 = never); on by default so a killed run can --resume
    checkpoint_every: int = setting(50, "steps between checkpoints (0: never)")
    resume: bool = setting(False, "continue a killed run from --out/checkpoint (an error when there is no "
                                  "checkpoint)")
    overwrite: bool = setting(False, "write into a non-empty --out, replacing the files a run writes there (others "
                                     "are kept); without it a non-empty --out is refused")
    keep_adapter: bool = setting(False, "lora: save the adapter only, not merged")
    log_every: int = 1
    progress: bool = setting(True, "no progress bar", flag="--quiet", negate=True)
    length_bucketing: bool = setting(True, "disable length bucketing of batches", flag="--no-bucketing",
                                     negate=True)
    attn_implementation: str = "sdpa"  # "eager" is the slow reference path; "flex_attention" on a GPU
    # unpadded execution: each text column packed into rows (embrecipe.training.packing); auto = on a CUDA device
    packing: str = setting("auto", "unpadded execution: texts packed into rows, pooled per text (auto: on a CUDA "
                                   "GPU)", group=SPEED, choices=("auto", "on", "off"))
    pack_length: int = setting(0, "tokens per packed row (default: ~2x max length)", group=SPEED)
    # the host reads the loss (a device sync) only every sync_every steps, at checkpoints and at the end; the
    # losses of the steps in between wait on the device, so the loss curve is the same
    sync_every: int = setting(32, "steps between reads of the loss by the host on a CUDA device (a GPU sync; "
                                  "default: 32; on the CPU every step)", group=SPEED)
    compile: str = setting("none", "torch.compile the transformer; cudagraphs adds CUDA graphs (GPU only; "
                                   "default: none)", group=SPEED, choices=("none", "default", "cudagraphs"))
    stop_after_steps: int | None = None  # for tests/benchmarks: simulate a kill after this many steps
    # instruction prompts (sentence-transformers' "query"/"document" prompts), saved with the model
    query_prompt: str | None = setting(
        None, "instruction prepended to every query, e.g. 'query: ' (saved with the model as its 'query' prompt; "
              "its tokens are excluded from mean pooling but count as FLOPs)", group=PROMPTS)
    doc_prompt: str | None = setting(None, "prepended to positives and negatives, e.g. 'passage: ' (the "
                                           "'document' prompt)", group=PROMPTS)
    # experiment tracking (embrecipe.training.tracking): HF-style report_to; logs under tracking_dir (default out/runs)
    report_to: str = setting("auto", "none, tensorboard, wandb, mlflow, trackio, all, or a comma list (default: "
                                     "auto = TensorBoard when installed, logs in OUT/runs)", group=TRACKING)
    tracking_dir: str | None = setting(None, "tracking log directory (default: OUT/runs)", group=TRACKING,
                                       flag="--logging-dir")
    run_name: str | None = None
    tracking_group: str | None = None  # a sweep's name: groups its cells (W&B group, MLflow experiment)

    def validate(self) -> None:
        """Raise the first broken rule's one-line error (:data:`_RULES`, in their order), then check the tracking
        backend (an unknown or missing one fails before the model loads)."""
        for rule in _RULES:
            if rule.broken(self):
                raise rule.error(rule.message(self))
        from embrecipe.training.tracking import resolve_report_to

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
    _Rule(lambda c: c.budget is not None and not is_budget(c.budget),
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



# What each annotation accepts in a dict config (grid files, the Python API), and how the error names it. YAML
# reads ``1.0e6`` (no exponent sign) as a *string*, which would otherwise pass every check and fail each cell with
# a TypeError. bool is an int in Python but never a number of steps here.
_KINDS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    PairData: (lambda v: isinstance(v, (str, os.PathLike, PairData)), "a path"),
}


@functools.cache
def setting_types() -> dict[str, tuple[tuple[Callable[[Any], bool], str], bool]]:
    """Per :class:`TrainConfig` field: (its kind's check and name, whether None is allowed), read from the
    field annotations, so a new field is checked without a table to update. ``method`` is parsed on its own."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        options = typing.get_args(hints[f.name]) or (hints[f.name],)
        kinds = [t for t in options if t is not type(None)]
        kind = PairData if PairData in kinds else kinds[0]  # ``str | PairData``: a path
        if kind in _KINDS:
            out[f.name] = (_KINDS[kind], type(None) in options)
    return out


def check_setting_types(config: dict[str, Any], source: str = "config") -> None:
    """One-line :class:`InputError` for a training setting of the wrong type (``source`` names where it came from)."""
    types = setting_types()
    for name, value in config.items():
        if name not in types:
            continue
        (ok, kind), optional = types[name]
        if (value is None and optional) or (value is not None and ok(value)):
            continue
        hint = ""
        if isinstance(value, str) and "e" in value.lower() and kind in ("an integer", "a number"):
            try:
                float(value)
                hint = " (YAML reads 1.0e6 as text: write 1.0e+6 or 1000000)"
            except ValueError:
                pass
        raise InputError(f"{source}: {name} must be {kind}, got {type(value).__name__} {value!r}{hint}")


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
