"""Budget-exact contrastive fine-tuning with a FLOP meter.

The loop is ours (model, pooling, loss and GradCache come from sentence-transformers, LoRA from peft) because
the study's protocol needs three things no off-the-shelf trainer does together: stop *before* the step that
would exceed a FLOP budget (we know each batch's real token count before running it), plan the LR schedule
from the FLOPs spent (so it ends exactly with the budget), and resume a killed run to the same FLOPs and loss.

Example::

    >>> from embrecipe import TrainConfig, train
    >>> from embrecipe.methods import LoRA
    >>> record = train(TrainConfig(model="runs/base", data="pairs.jsonl", method=LoRA(rank=32),
    ...                            budget=3e13, batch_size=1024, mini_batch_size=64, out="runs/lora"))  # doctest: +SKIP
    >>> record.model_flops <= record.budget                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import PairData, duplicate_fraction, load_pairs
from .device import bf16_supported
from .errors import (
    BudgetError,
    EmbrecipeError,
    EmbrecipeWarning,
    InputError,
    OutOfDiskSpace,
    TrainingDiverged,
    is_disk_full,
)
from .flops import steps_for_budget
from .jsonio import json_safe
from .methods import (
    FullFineTuning,
    MethodConfig,
    flops_per_token,
    hardware_flops_per_token,
    method_from_dict,
    method_to_dict,
)
from .records import RunConfig, RunRecord
from .tracking import step_metrics

# A loss above this many times max(first step's loss, ln batch_size) counts as a runaway (diverged) run. ln B is
# the loss of embeddings that carry no information; a healthy run starts near it and goes down, so 10x that is
# far outside any normal fluctuation but well below what exploding weights produce.
RUNAWAY_FACTOR = 10.0
# Warn when at least this fraction of the training pairs repeats an earlier (query, positive) pair: duplicates in
# one batch are false negatives for InfoNCE, and a set of identical pairs trains at a constant loss of ln B.
DUPLICATE_WARN_FRACTION = 0.1

# Published pre-training peak LRs, by checkpoint name (Pythia: Biderman et al. 2023, Table 1 / the released
# configs; SmolLM2-135M: its released training config). The study's default fine-tuning LR is one tenth of these.
_PRETRAIN_LR = {
    "pythia-14m": 1e-3, "pythia-31m": 1e-3, "pythia-70m": 1e-3, "pythia-160m": 6e-4, "pythia-410m": 3e-4,
    "pythia-1b": 3e-4, "pythia-1.4b": 2e-4, "pythia-2.8b": 1.6e-4, "pythia-6.9b": 1.2e-4, "pythia-12b": 1.2e-4,
    "smollm2": 3e-3,
}


def default_lr(model_name: str) -> float:
    """The study's default: one tenth of the model's pre-training LR (1e-4 when the model is unknown)."""
    name = model_name.lower().replace("_", "-")
    for key in sorted(_PRETRAIN_LR, key=len, reverse=True):
        if key in name:
            return _PRETRAIN_LR[key] / 10
    return 1e-4


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults follow the study (docs/design.md)."""

    model: str
    data: str | PairData
    budget: float
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
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and self.budget > 0):
            raise BudgetError(f"budget must be a positive number of FLOPs, got {self.budget!r}")
        if self.batch_size < 2:
            raise InputError(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise InputError(f"mini_batch_size must be >= 1, got {self.mini_batch_size}")
        if self.max_seq_length < 2:
            raise InputError(f"max_seq_length must be >= 2, got {self.max_seq_length}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr is not None and not math.isfinite(self.lr):
            raise InputError(f"lr must be a finite number, got {self.lr}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"scale (the InfoNCE inverse temperature) must be > 0, got {self.scale}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise InputError(f"max_grad_norm must be >= 0 (0 or None: no clipping), got {self.max_grad_norm}")
        if self.checkpoint_every < 0:
            raise InputError(f"checkpoint_every must be >= 0 steps (0 = never), got {self.checkpoint_every}")
        if self.log_every < 1:
            raise InputError(f"log_every must be >= 1 step, got {self.log_every}")
        if self.hard_negatives < 0:
            raise InputError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.val_size_cap < 2:
            raise InputError(f"val_size_cap must be >= 2 pairs (in-batch negatives), got {self.val_size_cap}")
        if self.stop_after_steps is not None and self.stop_after_steps < 0:
            raise InputError(f"stop_after_steps must be >= 0, got {self.stop_after_steps}")
        if self.resume and self.overwrite:
            raise InputError("resume and overwrite contradict each other: resume continues the run in out, "
                             "overwrite starts a new one there")
        if self.packing not in ("auto", "on", "off"):
            raise InputError(f"packing must be auto, on or off, got {self.packing!r}")
        if self.pack_length and self.pack_length < self.max_seq_length:
            raise InputError(f"pack_length {self.pack_length} is shorter than max_seq_length {self.max_seq_length}")
        if self.sync_every < 1:
            raise InputError(f"sync_every must be >= 1, got {self.sync_every}")
        if self.compile not in ("none", "default", "cudagraphs"):
            raise InputError(f"compile must be none, default or cudagraphs, got {self.compile!r}")

        from .tracking import resolve_report_to

        resolve_report_to(self.report_to)  # an unknown or missing backend fails before the model loads

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


_OPTIONAL_DEFAULTS: dict[str, Any] = {"query_prompt": None, "doc_prompt": None, "report_to": "auto",
                                      "tracking_dir": None, "run_name": None, "tracking_group": None}


def train_from_dict(config: dict[str, Any]) -> RunRecord | dict[str, Any]:
    """Train from a plain dict (keys of :class:`TrainConfig`; ``method`` as ``method_to_dict``)."""
    return train(config_from_dict(config))


# Setting types checked on dict configs (grid files): YAML reads ``1.0e6`` (no exponent sign) as a *string*,
# which would otherwise pass every check and fail each cell with a TypeError. Fields not listed are not checked.
_NUMBER_SETTINGS = ("budget", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "scale", "val_fraction")
_INT_SETTINGS = ("batch_size", "mini_batch_size", "max_seq_length", "hard_negatives", "val_size_cap", "seed",
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
    missing = [k for k in ("model", "data", "budget") if cfg.get(k) is None]
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


def divergence_reason(loss: float, first_loss: float | None, batch_size: int) -> str | None:
    """Why a step's loss means the run diverged, or None when it is fine.

    Diverged: the loss is NaN/inf, or it exceeds ``RUNAWAY_FACTOR * max(first_loss, ln batch_size)``
    (a runaway). ``first_loss`` is the first step's loss (None on the first step).

    >>> divergence_reason(float("nan"), 3.4, 32)
    'loss is nan'
    >>> divergence_reason(3.0, 3.4, 32) is None
    True
    """
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if first_loss is not None and math.isfinite(first_loss):
        bound = RUNAWAY_FACTOR * max(first_loss, math.log(max(batch_size, 2)))
        if loss > bound:
            return (f"loss {loss:.4g} ran away (> {RUNAWAY_FACTOR:g} x max(first loss {first_loss:.4g}, "
                    f"ln batch {math.log(max(batch_size, 2)):.3g}))")
    return None


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(directory: Path) -> bool:
    # A real probe, not os.access: ACLs, read-only mounts and root squash all show up only when writing.
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable ``out`` before anything trains: a file, not writable, not empty, or --resume with no
    checkpoint there. ``overwrite`` allows a non-empty directory (its run files are replaced, others kept)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a directory")
    anchor = _existing_ancestor(out)
    if not anchor.is_dir():
        raise InputError(f"--out {out}: {anchor} is a file, not a directory")
    if not _writable(anchor):
        raise InputError(f"--out {out}: {anchor} is not writable")
    if resume:
        _recover_checkpoint(out / "checkpoint")
        if not _checkpoint_file(out / "checkpoint").exists():
            raise InputError(f"--resume: {out / 'checkpoint'} holds no checkpoint, so there is nothing to resume; "
                             "run without --resume to start afresh")
        return
    if overwrite or not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if "run.json" in entries:
        raise InputError(f"--out {out} already holds a finished run (run.json); choose another --out, delete "
                         "it, or pass --overwrite")
    if "checkpoint" in entries:
        raise InputError(f"--out {out} holds the checkpoint of an unfinished run; pass --resume to continue it or "
                         "--overwrite to start over")
    raise InputError(f"--out {out} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); choose a new or "
                     "empty directory, or pass --overwrite to write into it")


def disk_bytes_needed(export_bytes: int, trainable_bytes: int, checkpoints: bool) -> int:
    """Free disk a run needs in ``out``: the export, plus a checkpoint (weights + two AdamW moments of the trainable
    parameters, written beside the old one before it is replaced: two copies) when checkpointing, plus 10 %."""
    ckpt = 2 * 3 * trainable_bytes if checkpoints else 0
    return int(1.1 * (export_bytes + ckpt)) + (1 << 20)


def check_disk_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(_existing_ancestor(out)).free
    if free < needed:
        raise OutOfDiskSpace(f"--out {out}: {_size(free)} free on its disk but the run needs about "
                             f"{_size(needed)} (model export and checkpoints); free space or choose another --out")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


# --------------------------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("embrecipe", "torch", "transformers", "sentence-transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _Dist:
    """torch.distributed when launched by torchrun/accelerate (WORLD_SIZE > 1), a no-op otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[Any]) -> None:
        # A manual all-reduce rather than DDP: GradCache runs one backward per mini-batch inside the loss's
        # hook, which does not fit DDP's one-backward-per-step reducer; the sum is the same either way.
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks (each rank's loss covers only its shard of the queries)."""
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world

    def mean_many(self, values: list[float]) -> list[float]:
        """:meth:`mean` of several scalars in one collective (the losses gathered at a sync point)."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [v / self.world for v in t.tolist()]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def lr_at_fraction(fraction: float, warmup_ratio: float) -> float:
    r"""The LR multiplier as a pure function of the fraction ``f`` of the FLOP budget spent.

    .. math::

        m(f) = \begin{cases} f / w & f < w \\
                              \tfrac12\big(1 + \cos(\pi \tfrac{f - w}{1 - w})\big) & w \le f < 1 \\
                              0 & f \ge 1 \end{cases}

    with ``w = warmup_ratio``. The trainer evaluates it at the *middle* of each step's FLOPs,
    ``f = (spent + cost/2) / budget``: every step that fits in the budget then has ``0 < f < 1`` and a
    positive LR, and the cosine reaches 0 exactly where the budget ends, whatever batch lengths are drawn
    (a step count planned from the mean tokens per pair can be off either way).

    >>> lr_at_fraction(0.05, 0.1), lr_at_fraction(0.1, 0.1), round(lr_at_fraction(0.55, 0.1), 3)
    (0.5, 1.0, 0.5)
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if warmup_ratio > 0 and f < warmup_ratio:
        return f / warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * (f - warmup_ratio) / (1.0 - warmup_ratio)))


def step_lr_fraction(spent: float, step_cost: float, budget: float) -> float:
    """Where a step sits in the budget for :func:`lr_at_fraction`: the middle of its FLOPs."""
    return (float(spent) + 0.5 * float(step_cost)) / float(budget)


def lr_lambda(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Step-based schedule (kept for reference; the trainer uses :func:`lr_at_fraction`): linear warm-up over
    the first ``warmup_ratio`` of the planned steps, cosine decay to 0, then 0."""
    warmup = max(1, int(round(warmup_ratio * total_steps))) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Batches:
    """Deterministic batch order over pre-tokenized pairs: epoch-seeded shuffles, optional length bucketing.

    Bucketing sorts a window of 64 batches by length before cutting it into batches and then shuffles the batch
    order, so each batch holds texts of similar length (less padding) while pairs stay randomly grouped for
    in-batch negatives at the window scale.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucketing: bool) -> None:
        self.lengths, self.batch_size, self.seed, self.bucketing = lengths, batch_size, seed, bucketing
        self.n = len(lengths)
        self.per_epoch = self.n // batch_size

    def epoch(self, e: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + e)
        idx = list(range(self.n))
        rng.shuffle(idx)
        batches: list[list[int]] = []
        window = self.batch_size * 64
        for w in range(0, self.per_epoch * self.batch_size, window):
            chunk = idx[w : min(w + window, self.per_epoch * self.batch_size)]
            if self.bucketing:
                chunk.sort(key=lambda i: self.lengths[i])
            batches += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.bucketing:
            rng.shuffle(batches)
        return batches


def _pad(seqs: list[list[int]], pad_id: int) -> dict[str, Any]:
    import numpy as np
    import torch

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def _to_device(tensors: dict[str, Any], device: Any) -> dict[str, Any]:
    """Host tensors → device. On CUDA through pinned memory with ``non_blocking``: the copy is queued behind the
    previous step's kernels instead of stalling the host until they finish."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in tensors.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in tensors.items()}


def _packed_batch(seqs: list[list[int]], row_length: int, pad_id: int, device: Any, attn_implementation: str,
                  mask_dtype: Any, rows_multiple: int = 1) -> dict[str, Any]:
    """One text column as packed rows on ``device`` (see :mod:`embrecipe.packing`)."""
    import numpy as np
    import torch

    from .packing import packed_attention_mask, packed_layout

    lay = packed_layout(seqs, row_length, pad_id)
    extra = -len(lay["input_ids"]) % rows_multiple
    if extra:  # filler rows: a few fixed row counts for CUDA graphs (one captured graph per shape)
        filler = {"input_ids": np.full((extra, row_length), pad_id, dtype=np.int64),
                  "position_ids": np.tile(np.arange(row_length, dtype=np.int64), (extra, 1)),
                  "segment": np.full((extra, row_length), len(seqs), dtype=np.int64)}
        lay.update({k: np.concatenate([lay[k], v]) for k, v in filler.items()})
    out = _to_device({k: torch.from_numpy(v) for k, v in lay.items()}, device)
    out["attention_mask"] = packed_attention_mask(out["segment"], attn_implementation, mask_dtype)
    return out


def _use_fused_adamw(device: Any) -> bool:
    """Fused AdamW (one kernel per parameter group) on CUDA and on the CPU, where torch 2.13's fused kernel
    measured 6x faster than ``foreach`` (benchmarks/adamw_step.txt); ``foreach`` on any other device."""
    return device.type in ("cuda", "cpu")


def _compile_mode(requested: str, device: Any) -> str:
    """The compile mode that actually runs: CUDA graphs exist on CUDA only, so elsewhere ``cudagraphs`` is plain
    ``torch.compile`` (``default``)."""
    if requested == "cudagraphs" and device.type != "cuda":
        return "default"
    return requested


def _auto_gradcache(config: TrainConfig, device: Any, model: Any, info: Any, tok_cols: list[Any]) -> int | None:
    """On CUDA without a mini-batch size: the GradCache mini-batch the free memory requires, or None (the whole
    batch fits). Elsewhere None: CPU memory is not measured here, and the user's setting always wins."""
    if device.type != "cuda":
        return None
    import torch

    from .gpu_schedule import ACTIVATION_BYTES, CONTEXT_MIB, auto_mini_batch

    hf = model[0].auto_model
    cfg = getattr(hf, "config", None)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 32)
    hidden = int(getattr(cfg, "hidden_size", 0) or 4096)
    total = sum(p.numel() for p in model.parameters())
    fixed = (4.0 * total + 12.0 * info.n_trainable_total) / 2**20 + CONTEXT_MIB
    tokens_per_pair = sum(min(len(s), config.max_seq_length) for c in tok_cols for s in c[:4096]) \
        / max(1, min(4096, len(tok_cols[0])))
    per_pair = ACTIVATION_BYTES * tokens_per_pair * layers * hidden / 2**20
    free = torch.cuda.mem_get_info(device)[0] / 2**20 + torch.cuda.memory_allocated(device) / 2**20
    return auto_mini_batch(config.batch_size, free, fixed, per_pair)


def _resolve_packing(config: TrainConfig, device: Any, model: Any, gradcache: bool) -> tuple[bool, str]:
    """(pack?, why not): ``auto`` packs on CUDA; packing never runs where it would change the result."""
    from .packing import supports_packing

    if config.packing == "off":
        return False, "off"
    why = supports_packing(model)
    if why is None and gradcache:
        why = "GradCache re-embeds padded mini-batches"
    if why is None and config.attn_implementation not in ("sdpa", "eager", "flex_attention"):
        why = f"attention {config.attn_implementation!r} takes no packed mask"
    if why is not None:
        if config.packing == "on":
            raise InputError(f"packing: {why}")
        return False, why
    if config.packing == "auto" and device.type != "cuda":
        return False, "auto packs on CUDA only"
    return True, ""


# A sweep worker trains many cells on the same data with the same tokenizer (every member of a depth ladder
# shares it); tokenizing ~57k texts costs seconds per run, so a worker keeps the last few results.
_TOKEN_CACHE: dict[tuple[str, int, str], list[list[int]]] = {}
_TOKEN_CACHE_MAX = 4


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are call-time state of the backend, not part of what the tokenizer is
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(f"{type(tokenizer).__name__}|{text}".encode()).hexdigest()


def _tokenize(tokenizer: Any, texts: list[str], max_len: int, fingerprint: str | None = None) -> list[list[int]]:
    """``texts`` → token ids (truncated to ``max_len``), from the cache when this worker has seen them.
    ``fingerprint``: :func:`_tokenizer_fingerprint` of ``tokenizer`` when the caller already has it (~0.4 s)."""
    key = (fingerprint or _tokenizer_fingerprint(tokenizer), int(max_len),
           hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest())
    hit = _TOKEN_CACHE.get(key)
    if hit is not None:
        return hit
    out = _tokenize_uncached(tokenizer, texts, max_len)
    if len(_TOKEN_CACHE) >= _TOKEN_CACHE_MAX:
        _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
    _TOKEN_CACHE[key] = out
    return out


def _tokenize_uncached(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), 4096):
        enc = tokenizer(texts[start : start + 4096], truncation=True, max_length=max_len, padding=False)
        out += enc["input_ids"]
    return out


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Strict JSON: a diverged run's NaN losses become null instead of bare NaN tokens.
    tmp.write_text(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- train


def train(config: TrainConfig) -> RunRecord | dict[str, Any]:
    """Run one budget-exact training run; return (and write to ``out/run.json``, as ``record.to_dict()``) its
    :class:`~embrecipe.records.RunRecord`. A run stopped by ``stop_after_steps`` (a test hook that imitates a
    kill) is no finished run and has no record: it returns its loop state, a dict with ``status: "interrupted"``."""
    import torch
    from tqdm.auto import tqdm

    from .loss import heldout_loss, symmetric_infonce
    from .modeling import apply_method, load_sentence_transformer, set_prompts
    from .packing import auto_row_length, packed_embeddings

    config.validate()
    dist = _Dist()
    t_start = time.time()
    _seed_everything(config.seed)
    out = Path(config.out) if config.out else None
    if config.resume and out is None:
        raise InputError("--resume needs --out (the run directory holding the checkpoint)")
    if out is not None:
        check_out_dir(out, resume=config.resume, overwrite=config.overwrite)

    # -- data
    data = config.data if isinstance(config.data, PairData) else load_pairs(config.data)
    if config.val_data is not None:
        val = config.val_data if isinstance(config.val_data, PairData) else load_pairs(config.val_data)
    elif config.val_fraction > 0:
        data, val = data.split_off(config.val_fraction, seed=config.seed)
    else:
        val = None
    if len(data) < config.batch_size:
        raise InputError(f"{data.source}: {len(data)} pairs, fewer than one batch of {config.batch_size}")
    if val is not None and len(val) < 2:
        raise InputError(f"{val.source}: {len(val)} validation pair(s); the validation loss needs at least 2 "
                         "(in-batch negatives)")
    dup = duplicate_fraction(data)
    if dup >= DUPLICATE_WARN_FRACTION and dist.main:
        warnings.warn(f"{data.source}: {dup:.0%} of the pairs repeat an earlier (query, positive) pair; duplicates "
                      "are false negatives in a batch (identical pairs train at a constant loss of ln B)",
                      EmbrecipeWarning, stacklevel=2)
    columns = data.columns(config.hard_negatives)

    # -- model and method
    model = load_sentence_transformer(config.model, pooling=config.pooling, max_seq_length=config.max_seq_length,
                                      gguf_file=config.gguf_file, attn_implementation=config.attn_implementation)
    # EMBRECIPE_CUDA_DEVICE: the GPU a sweep worker was placed on (embrecipe.gpu_schedule); LOCAL_RANK: torchrun
    device = torch.device("cuda", int(os.environ.get("EMBRECIPE_CUDA_DEVICE", os.environ.get("LOCAL_RANK", "0")))) \
        if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    set_prompts(model, config.query_prompt, config.doc_prompt)
    _seed_everything(config.seed)  # peft initialises LoRA weights from the global RNG
    info = apply_method(model, config.method)
    if config.gradient_checkpointing:
        hf = model[0].auto_model
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not config.method.trains_everything:  # frozen inputs: checkpointed blocks need a gradient to flow
            hf.enable_input_require_grads() if hasattr(hf, "enable_input_require_grads") else None
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_supported(device))
    if config.precision == "bf16" and not bf16_supported(device):
        raise InputError(f"precision bf16 requested but {device.type} here has no bf16 support")
    if out is not None and dist.main:
        trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        export_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        check_disk_space(out, disk_bytes_needed(export_bytes, trainable_bytes, config.checkpoint_every > 0))

    # -- tokens and the FLOP meter
    tokenizer = model[0].tokenizer
    fingerprint = _tokenizer_fingerprint(tokenizer)  # once per run, not once per column
    columns, prompt_lengths = _prompted_columns(model, columns, config.query_prompt, config.doc_prompt)
    tok_cols = [_tokenize(tokenizer, col, config.max_seq_length, fingerprint) for col in columns]
    pair_tokens = [sum(len(c[i]) for c in tok_cols) for i in range(len(data))]
    per_token = flops_per_token(config.method.name, info.n_params, info.n_trainable)
    auto_mini = _auto_gradcache(config, device, model, info, tok_cols) if config.mini_batch_size is None else None
    # GradCache only where memory requires it (CUDA: measured free memory); not part of the config, so a resumed
    # run on a card with other free memory still matches its checkpoint
    mini_batch = config.mini_batch_size if config.mini_batch_size is not None else auto_mini
    gradcache = bool(mini_batch and mini_batch < config.batch_size)
    hw_per_token = hardware_flops_per_token(config.method.name, info.n_params, info.n_trainable,
                                            gradient_checkpointing=config.gradient_checkpointing,
                                            gradcache=gradcache)
    mean_pair_tokens = sum(pair_tokens) / len(pair_tokens)
    tokens_per_step = mean_pair_tokens * config.batch_size
    planned_steps = steps_for_budget(config.budget, per_token, tokens_per_step)
    if planned_steps < 1:
        raise BudgetError(
            f"budget {config.budget:.3g} FLOPs affords less than one step; the minimum is about "
            f"{per_token * tokens_per_step:.3g} FLOPs ({config.method.key}: {per_token} FLOPs/token × "
            f"{tokens_per_step:.0f} tokens per batch of {config.batch_size})"
        )
    batches = _Batches([max(len(c[i]) for c in tok_cols) for i in range(len(data))], config.batch_size,
                       config.seed, config.length_bucketing)
    if not config.allow_repeat and planned_steps > batches.per_epoch:
        raise BudgetError(
            f"budget needs {planned_steps} steps but {data.source} holds {batches.per_epoch} batches; "
            f"allow repetition or lower the budget to ≤ {per_token * tokens_per_step * batches.per_epoch:.3g}"
        )

    # -- optimizer and schedule
    params = [p for p in model.parameters() if p.requires_grad]
    lr = config.lr or default_lr(config.model)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fused = _use_fused_adamw(device)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused else {"foreach": True}),
    )
    # No step-based scheduler: the LR is set before every step from the FLOPs spent (lr_at_fraction), so it
    # needs no state of its own and a resumed run follows the same schedule from state["model_flops"].
    loss_fn = symmetric_infonce(model, scale=config.scale, mini_batch_size=mini_batch if gradcache else None,
                                gather_across_devices=dist.enabled)
    packed, why_not_packed = _resolve_packing(config, device, model, gradcache)
    row_length = (config.pack_length or auto_row_length(config.max_seq_length)) if packed else 0
    compile_mode = _compile_mode(config.compile, device)
    if compile_mode != "none":
        # in place (nn.Module.compile), so parameter names, checkpoints and export stay as they are
        model[0].auto_model.compile(mode="reduce-overhead" if compile_mode == "cudagraphs" else None,
                                    dynamic=None if compile_mode == "cudagraphs" else True)
    mask_dtype = torch.bfloat16 if use_bf16 else torch.float32
    # Deferring the loss read only pays where the device runs ahead of the host (CUDA); on the CPU every step is
    # synchronous anyway, so read each step: the progress bar is live and a divergence stops at its own step.
    sync_every = config.sync_every if device.type == "cuda" else 1
    execution = {"packing": packed, "row_length": row_length, "why_not_packed": why_not_packed or None,
                 "compile": compile_mode, "optimizer": "adamw-fused" if fused else "adamw-foreach",
                 "attn_implementation": config.attn_implementation, "sync_every": sync_every,
                 "gradcache_mini_batch": mini_batch if gradcache else None,
                 "gradcache_auto": auto_mini is not None}

    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "pos": 0, "model_flops": 0, "hardware_flops": 0, "tokens": 0, "padded_tokens": 0,
        "loss_curve": [], "train_time_s": 0.0, "step_times": [], "step_flops": [], "step_lrs": []}
    ckpt_dir = out / "checkpoint" if out else None
    if config.resume and ckpt_dir is not None:
        saved = _load_checkpoint(ckpt_dir, _fingerprint(config, data), device)
        named = dict(model.named_parameters())
        unknown = set(saved["params"]) - set(named)
        if unknown:
            raise InputError(f"{ckpt_dir}: checkpoint holds parameters this model lacks (e.g. {min(unknown)})")
        with torch.no_grad():
            for n, t in saved["params"].items():
                named[n].copy_(t)
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        state.setdefault("step_times", [])
        state.setdefault("step_lrs", [])
        state.setdefault("step_flops", [])
        torch.set_rng_state(saved["rng"])

    # -- the loop
    tracker = _open_tracker(config, dist.main, out)
    model.train()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    world, rank = dist.world, dist.rank
    order = batches.epoch(state["epoch"])
    bar = tqdm(total=config.budget, unit="FLOP", unit_scale=True, disable=not (config.progress and dist.main),
               desc=f"{config.method.key}", initial=state["model_flops"], dynamic_ncols=True)
    steps_this_call = 0
    step_t0 = time.time()
    stopped_early = False
    failure: str | None = None
    first_loss = state["loss_curve"][0][1] if state["loss_curve"] else None
    lval = state["loss_curve"][-1][1] if state["loss_curve"] else float("nan")
    # (step, model FLOPs after it, loss on the device, the LR it used, tokens and train time so far)
    pending: list[tuple[int, float, Any, float, int, float]] = []

    def drain() -> str | None:
        """Sync point: bring the pending losses to the host in one transfer, fill the loss curve, log them to
        the tracker, and check them: a non-finite or runaway loss fails the run here rather than every step,
        which would sync every step. Every rank sees the same mean losses, so all stop at the same step."""
        nonlocal lval, first_loss
        if not pending:
            return None
        values = dist.mean_many(torch.stack([x[2].float() for x in pending]).tolist())
        bad = None
        for (step, flops, _, step_lr, tokens, seconds), v in zip(pending, values, strict=True):
            reason = divergence_reason(v, first_loss, config.batch_size)
            if reason is not None:
                bad = f"diverged at step {step}: {reason}"
                state["loss_curve"].append([flops, v])
                lval = v
                break
            if first_loss is None:
                first_loss = v
            if step % config.log_every == 0 or step == 1:
                state["loss_curve"].append([flops, v])
                tracker.log(step, step_metrics(loss=v, lr=step_lr, model_flops=flops, tokens=tokens,
                                               train_time_s=seconds))
            lval = v
        pending.clear()
        timed = state["train_time_s"] > 0  # the first step's time is added after its sync
        bar.set_postfix(step=state["step"], loss=f"{lval:.4f}",
                        tok_s=f"{state['tokens'] / state['train_time_s']:.0f}" if timed else "-")
        return bad

    while True:
        if state["pos"] >= len(order):
            state["epoch"] += 1
            state["pos"] = 0
            order = batches.epoch(state["epoch"])
        batch = order[state["pos"]]
        real = sum(pair_tokens[i] for i in batch)
        if state["model_flops"] + per_token * real > config.budget:
            break  # the next step would exceed the budget
        if config.stop_after_steps is not None and steps_this_call >= config.stop_after_steps:
            stopped_early = True
            break
        # every rank builds the same global batch and keeps its shard, so the meter needs no communication
        shard = batch[rank::world]
        feats = []
        padded = 0
        for col in tok_cols:
            if packed:
                f = _packed_batch([col[i] for i in shard], row_length, tokenizer.pad_token_id, device,
                                  config.attn_implementation, mask_dtype,
                                  rows_multiple=8 if compile_mode == "cudagraphs" else 1)
                feats.append(f)
            else:
                f = _to_device(_pad([col[i] for i in shard], tokenizer.pad_token_id), device)
                feats.append(f)
            padded += f["input_ids"].numel() * world
        _add_prompt_lengths(feats, prompt_lengths)
        step_lr = lr * lr_at_fraction(step_lr_fraction(state["model_flops"], per_token * real, config.budget),
                                      config.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            if packed:
                loss = loss_fn.compute_loss_from_embeddings([packed_embeddings(model, f) for f in feats], None)
            else:
                loss = loss_fn(feats, None)
            loss.backward()
        dist.average_gradients(params)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        state["step"] += 1
        state["pos"] += 1
        steps_this_call += 1
        state["model_flops"] += per_token * real
        state["hardware_flops"] += hw_per_token * padded
        state["tokens"] += real
        state["padded_tokens"] += padded
        pending.append((state["step"], state["model_flops"], loss.detach(), step_lr, state["tokens"],
                        state["train_time_s"]))
        checkpoint_now = bool(ckpt_dir and config.checkpoint_every and state["step"] % config.checkpoint_every == 0)
        if state["step"] == 1 or state["step"] % sync_every == 0 or checkpoint_now:
            failure = drain()  # the step's time below then includes waiting for the device
        now = time.time()
        state["train_time_s"] += now - step_t0
        state["step_times"].append(round(now - step_t0, 6))
        state["step_flops"].append(per_token * real)
        state["step_lrs"].append(step_lr)
        step_t0 = now
        bar.update(per_token * real)
        if failure:
            break
        if checkpoint_now and dist.main and ckpt_dir is not None:
            _save_checkpoint(ckpt_dir, model, optimizer, state, _fingerprint(config, data))
    if failure is None and pending:
        failure = drain()
        now = time.time()  # the last steps' device work finished only now: charge it to the last step
        if state["step_times"]:
            state["step_times"][-1] = round(state["step_times"][-1] + now - step_t0, 6)
        state["train_time_s"] += now - step_t0
    bar.close()
    if stopped_early:
        tracker.close()
        return {"status": "interrupted", "execution": execution, **state}
    if state["step"] == 0:
        raise BudgetError(f"budget {config.budget:.3g} FLOPs is smaller than the first batch's cost")
    if state["loss_curve"] and state["loss_curve"][-1][0] != state["model_flops"]:
        state["loss_curve"].append([state["model_flops"], lval])
    if failure is None and ckpt_dir and config.checkpoint_every and dist.main \
            and _checkpoint_step(ckpt_dir) != state["step"]:
        # The final weights go to disk before the export, so an export that fails (full disk) loses nothing:
        # rerunning with --resume finds the budget spent and only exports.
        _save_checkpoint(ckpt_dir, model, optimizer, state, _fingerprint(config, data))

    # -- validation, export, record
    model.eval()
    val_loss = None
    if val is not None and dist.main and failure is None:
        vsub = val if len(val) <= config.val_size_cap else val.subset(range(config.val_size_cap))
        with autocast():
            val_loss = heldout_loss(model, vsub.queries, vsub.positives, batch_size=config.batch_size,
                                    scale=config.scale, query_prompt=config.query_prompt,
                                    doc_prompt=config.doc_prompt)
    if val_loss is not None:
        tracker.log(state["step"], {"eval/loss": val_loss})
    tracker.close()
    record = RunRecord(
        config=RunConfig.from_dict(config.to_dict()),
        status="failed" if failure else "completed",
        failure=failure,
        model=config.model,
        shape=info.shape,
        n_params=info.n_params,
        n_trainable=info.n_trainable,
        method=method_to_dict(config.method),
        variant=config.method.key,
        budget=float(config.budget),
        seed=config.seed,
        model_flops=float(state["model_flops"]),
        tokens=int(state["tokens"]),
        steps=int(state["step"]),
        batch_size=config.batch_size,
        lr=lr,
        tokens_per_pair=mean_pair_tokens,
        unique_pairs=len(data),
        data_fingerprint=data.fingerprint(),
        final_train_loss=state["loss_curve"][-1][1],
        final_val_loss=val_loss,
        loss_curve=state["loss_curve"],
        details={
            "trainable_params_total": info.n_trainable_total,
            "data_source": data.source,
            "hardware_flops": float(state["hardware_flops"]),
            "flops_per_token": per_token,
            "padded_tokens": int(state["padded_tokens"]),
            "planned_steps": planned_steps,
            "lr_schedule": "warm-up + cosine by spent FLOPs",
            "step_lrs": [float(f"{x:.6g}") for x in state["step_lrs"]],
            "precision": "bf16" if use_bf16 else "fp32",
            "world_size": world,
            "step_times_s": state["step_times"],
            "val_pairs": (min(len(val), config.val_size_cap) if val is not None else 0),
            "train_time_s": state["train_time_s"],
            "wall_time_s": time.time() - t_start,
            "tokens_per_s": state["tokens"] / max(state["train_time_s"], 1e-9),
            "model_flops_per_s": state["model_flops"] / max(state["train_time_s"], 1e-9),
            "versions": _versions(),
            "device": device.type,
            "device_name": _device_name(device),  # the planner's --hours picks throughput per device type
            "tracking": {"backends": tracker.backends, "log_dir": getattr(tracker, "log_dir", None)},
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "execution": execution,
        },
    )
    if failure is not None:
        if out and dist.main:  # the record only: a diverged model is not worth a file
            out.mkdir(parents=True, exist_ok=True)
            _atomic_write_json(out / "run.json", record.to_dict())
        dist.barrier()
        raise TrainingDiverged(f"training {failure} (lr {lr:g}); no model exported"
                               + (f", record in {out / 'run.json'}" if out else ""), record)
    if out and dist.main:
        try:
            _export(model, config, record, out, loss_fn)
        except Exception as exc:
            full = is_disk_full(exc)
            if not (full or isinstance(exc, OSError)):
                raise  # not a problem of the disk: a bug, keep its traceback
            kept = (f"the trained weights are kept in {ckpt_dir}: free space and rerun the same command with "
                    "--resume to export them") if ckpt_dir and _checkpoint_file(ckpt_dir).exists() else \
                "no checkpoint was kept (checkpoint_every 0)"
            why = (getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]) if str(exc).strip() \
                else type(exc).__name__
            raise (OutOfDiskSpace if full else EmbrecipeError)(f"export to {out} failed ({why}); {kept}") from exc
    dist.barrier()
    return record


def _device_name(device: Any) -> str:
    """"NVIDIA H100 80GB HBM3" on a GPU, the CPU's model name otherwise (throughput is per device type)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or device.type


def _prompted_columns(model: Any, columns: list[list[str]], query_prompt: str | None,
                      doc_prompt: str | None) -> tuple[list[list[str]], list[int | None]]:
    """Prepend the query prompt to the first column and the document prompt to the others.

    Returns the texts the loss sees (the FLOP meter counts their tokens, prompt included) and, per column, the
    prompt's token count that ``Pooling(include_prompt=False)`` excludes — measured by sentence-transformers
    itself, so training pools exactly the tokens ``encode_query``/``encode_document`` pool later."""
    from .modeling import prompt_length

    prompts = [query_prompt] + [doc_prompt] * (len(columns) - 1)
    texts = [[p + t for t in col] if p else col for p, col in zip(prompts, columns, strict=True)]
    return texts, [prompt_length(model, p) for p in prompts]


def _add_prompt_lengths(feats: list[dict[str, Any]], prompt_lengths: list[int | None]) -> None:
    for f, n in zip(feats, prompt_lengths, strict=True):
        if n:
            f["prompt_length"] = n


def _open_tracker(config: TrainConfig, main_rank: bool, out: Path | None) -> Any:
    """The run's tracker (:mod:`embrecipe.tracking`); other ranks of a multi-device run get a no-op."""
    from .tracking import MultiTracker, open_tracker

    if not main_rank:
        return MultiTracker([])
    log_dir = config.tracking_dir or (str(out / "runs") if out else None)
    name = config.run_name or (out.name if out else None)
    tracker = open_tracker(config.report_to, log_dir=log_dir, run_name=name, group=config.tracking_group,
                           config=config.to_dict())
    tracker.log_dir = log_dir if tracker.trackers else None
    return tracker


def _fingerprint(config: TrainConfig, data: PairData) -> str:
    keep = {k: v for k, v in config.to_dict().items()
            if k not in ("resume", "progress", "checkpoint_every", "stop_after_steps", "out", "log_every",
                         "overwrite", "report_to", "tracking_dir", "run_name", "tracking_group", "sync_every")}
    return json.dumps(keep, sort_keys=True, default=str) + data.fingerprint()


# Checkpoint layout: params.safetensors (trained weights), state.json (plain loop state and the config
# fingerprint), state.pt (optimizer/RNG tensors, read with torch.load(weights_only=True): no pickled
# code runs, so a planted file cannot execute anything on --resume).
def _checkpoint_file(ckpt_dir: Path) -> Path:
    return ckpt_dir / "state.pt"


def _recover_checkpoint(ckpt_dir: Path) -> None:
    # A kill between the two renames of _save_checkpoint leaves only <checkpoint>.old: it is complete, use it.
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if not ckpt_dir.exists() and _checkpoint_file(old).exists():
        os.replace(old, ckpt_dir)


def _checkpoint_step(ckpt_dir: Path) -> int | None:
    try:
        return int(json.loads((ckpt_dir / "state.json").read_text())["state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_checkpoint(ckpt_dir: Path, fingerprint: str, device: Any) -> dict[str, Any]:
    import pickle

    import torch

    path = _checkpoint_file(ckpt_dir)
    meta_path = ckpt_dir / "state.json"
    meta = None
    if meta_path.exists():  # read first: a checkpoint of another config is refused before any binary is opened
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta_path}: unreadable checkpoint state ({exc})") from None
        if meta.get("fingerprint") != fingerprint:
            raise InputError(f"{ckpt_dir}: checkpoint was written by a different configuration or data")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a checkpoint that can be loaded safely (weights only): {first}") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: not an embrecipe checkpoint")
    if meta is None:  # the older single-file layout (everything in state.pt)
        if saved.get("fingerprint") != fingerprint:
            raise InputError(f"{ckpt_dir}: checkpoint was written by a different configuration or data")
        return saved
    from safetensors.torch import load_file

    try:
        params = load_file(str(ckpt_dir / "params.safetensors"), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise InputError(f"{ckpt_dir / 'params.safetensors'}: cannot read the checkpoint weights ({exc})") from None
    return {"params": params, "state": meta["state"], **saved}


def _save_checkpoint(ckpt_dir: Path, model: Any, optimizer: Any, state: dict[str, Any],
                     fingerprint: str) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params = {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_file(params, str(tmp / "params.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, _checkpoint_file(tmp))
    (tmp / "state.json").write_text(json.dumps({"fingerprint": fingerprint, "state": state}, allow_nan=False))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def _export(model: Any, config: TrainConfig, record: RunRecord, out: Path, loss_fn: Any = None) -> None:
    """Write the SentenceTransformer (LoRA merged unless keep_adapter), model card and run.json atomically.

    The card is sentence-transformers' own README, rendered from ``model.model_card_data`` filled with the run's
    facts (:mod:`embrecipe.card`)."""
    from .card import apply_card_data
    from .modeling import merge_adapters, save_tokenizer_flags

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".export.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        hf = model[0].auto_model
        apply_card_data(model, record, loss_fn)
        if config.keep_adapter and config.method.adapter:
            hf.save_pretrained(tmp)
            model._create_model_card(str(tmp))
        else:
            merge_adapters(model)
            model.save(str(tmp))
            save_tokenizer_flags(model, tmp)
        _atomic_write_json(tmp / "run.json", record.to_dict())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written export never lands in out
        raise
    # run.json last: its presence means the whole export is in place.
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == "run.json"):
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    tmp.rmdir()
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")

