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
    >>> record["model_flops"] <= record["budget"]                                                           # doctest: +SKIP
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import PairData, load_pairs
from .errors import BudgetError, InputError
from .flops import flops_per_token, hardware_flops_per_token
from .methods import FullFineTuning, LoRA, Method, method_from_dict, method_to_dict

RECORD_SCHEMA = 1

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
    """Everything one training run needs. Defaults follow the study (DESIGN.md)."""

    model: str
    data: str | PairData
    budget: float
    method: Method = field(default_factory=FullFineTuning)
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
    checkpoint_every: int = 0  # optimizer steps; 0 = never
    resume: bool = False
    keep_adapter: bool = False
    log_every: int = 1
    progress: bool = True
    length_bucketing: bool = True
    attn_implementation: str = "sdpa"  # "eager" is the slow reference path
    stop_after_steps: int | None = None  # for tests/benchmarks: simulate a kill after this many steps

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

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method"] = method_to_dict(self.method)
        for k in ("data", "val_data"):
            if isinstance(d[k], PairData):
                d[k] = d[k].source
        return d


def train_from_dict(config: dict[str, Any]) -> dict[str, Any]:
    """Train from a plain dict (keys of :class:`TrainConfig`; ``method`` as ``method_to_dict``)."""
    cfg = dict(config)
    method = cfg.pop("method", {"name": "full"})
    if isinstance(method, str):
        method = {"name": method}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(cfg) - fields
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    return train(TrainConfig(method=method_from_dict(method), **cfg))


# --------------------------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _bf16_supported(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


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
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- train


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one budget-exact training run; return (and write to ``out/run.json``) its record."""
    import torch
    from tqdm.auto import tqdm

    from .loss import heldout_loss, symmetric_infonce
    from .modeling import apply_method, load_sentence_transformer

    config.validate()
    dist = _Dist()
    t_start = time.time()
    _seed_everything(config.seed)
    out = Path(config.out) if config.out else None

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
    columns = data.columns(config.hard_negatives)

    # -- model and method
    model = load_sentence_transformer(config.model, pooling=config.pooling, max_seq_length=config.max_seq_length,
                                      gguf_file=config.gguf_file, attn_implementation=config.attn_implementation)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    model.to(device)
    _seed_everything(config.seed)  # peft initialises LoRA weights from the global RNG
    info = apply_method(model, config.method)
    if config.gradient_checkpointing:
        hf = model[0].auto_model
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if isinstance(config.method, LoRA) or not isinstance(config.method, FullFineTuning):
            hf.enable_input_require_grads() if hasattr(hf, "enable_input_require_grads") else None
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and _bf16_supported(device))
    if config.precision == "bf16" and not _bf16_supported(device):
        raise InputError(f"precision bf16 requested but {device.type} here has no bf16 support")

    # -- tokens and the FLOP meter
    tokenizer = model[0].tokenizer
    fingerprint = _tokenizer_fingerprint(tokenizer)  # once per run, not once per column
    tok_cols = [_tokenize(tokenizer, col, config.max_seq_length, fingerprint) for col in columns]
    pair_tokens = [sum(len(c[i]) for c in tok_cols) for i in range(len(data))]
    per_token = flops_per_token(config.method.name, info.n_params, info.n_trainable)
    gradcache = bool(config.mini_batch_size and config.mini_batch_size < config.batch_size)
    hw_per_token = hardware_flops_per_token(config.method.name, info.n_params, info.n_trainable,
                                            gradient_checkpointing=config.gradient_checkpointing,
                                            gradcache=gradcache)
    mean_pair_tokens = sum(pair_tokens) / len(pair_tokens)
    tokens_per_step = mean_pair_tokens * config.batch_size
    planned_steps = int(config.budget // (per_token * tokens_per_step))
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
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True,
    )
    # No step-based scheduler: the LR is set before every step from the FLOPs spent (lr_at_fraction), so it
    # needs no state of its own and a resumed run follows the same schedule from state["model_flops"].
    loss_fn = symmetric_infonce(model, scale=config.scale, mini_batch_size=config.mini_batch_size if gradcache
                                else None, gather_across_devices=dist.enabled)

    state = {"step": 0, "epoch": 0, "pos": 0, "model_flops": 0, "hardware_flops": 0, "tokens": 0,
             "padded_tokens": 0, "loss_curve": [], "train_time_s": 0.0, "step_times": [], "step_flops": [],
             "step_lrs": []}
    ckpt_dir = out / "checkpoint" if out else None
    if config.resume:
        if ckpt_dir is None:
            raise InputError("--resume needs --out (the run directory holding the checkpoint)")
        if (ckpt_dir / "state.pt").exists():
            saved = torch.load(ckpt_dir / "state.pt", map_location=device, weights_only=False)
            if saved["fingerprint"] != _fingerprint(config, data):
                raise InputError(f"{ckpt_dir}: checkpoint was written by a different configuration or data")
            named = dict(model.named_parameters())
            with torch.no_grad():
                for n, t in saved["params"].items():
                    named[n].copy_(t)
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
            state.setdefault("step_times", [])
            state.setdefault("step_lrs", [])
            state.setdefault("step_flops", [])
            torch.set_rng_state(saved["rng"])
    elif dist.main and out and (out / "run.json").exists():
        raise InputError(f"{out} already holds a finished run (run.json); choose another --out or delete it")

    # -- the loop
    model.train()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    world, rank = dist.world, dist.rank
    order = batches.epoch(state["epoch"])
    bar = tqdm(total=config.budget, unit="FLOP", unit_scale=True, disable=not (config.progress and dist.main),
               desc=f"{config.method.key}", initial=state["model_flops"], dynamic_ncols=True)
    steps_this_call = 0
    step_t0 = time.time()
    stopped_early = False
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
            f = _pad([col[i] for i in shard], tokenizer.pad_token_id)
            padded += f["input_ids"].numel() * world
            feats.append({k: v.to(device) for k, v in f.items()})
        step_lr = lr * lr_at_fraction(step_lr_fraction(state["model_flops"], per_token * real, config.budget),
                                      config.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        optimizer.zero_grad(set_to_none=True)
        with autocast():
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
        lval = dist.mean(float(loss.detach()))
        if state["step"] % config.log_every == 0 or state["step"] == 1:
            state["loss_curve"].append([state["model_flops"], lval])
        now = time.time()
        state["train_time_s"] += now - step_t0
        state["step_times"].append(round(now - step_t0, 6))
        state["step_flops"].append(per_token * real)
        state["step_lrs"].append(step_lr)
        step_t0 = now
        bar.update(per_token * real)
        bar.set_postfix(step=state["step"], loss=f"{lval:.4f}",
                        tok_s=f"{state['tokens'] / max(state['train_time_s'], 1e-9):.0f}")
        if ckpt_dir and config.checkpoint_every and state["step"] % config.checkpoint_every == 0 and dist.main:
            _save_checkpoint(ckpt_dir, model, optimizer, state, _fingerprint(config, data))
    bar.close()
    if stopped_early:
        return {"status": "interrupted", **state}
    if state["step"] == 0:
        raise BudgetError(f"budget {config.budget:.3g} FLOPs is smaller than the first batch's cost")
    if state["loss_curve"] and state["loss_curve"][-1][0] != state["model_flops"]:
        state["loss_curve"].append([state["model_flops"], lval])

    # -- validation, export, record
    model.eval()
    val_loss = None
    if val is not None and dist.main:
        vsub = val if len(val) <= config.val_size_cap else val.subset(range(config.val_size_cap))
        with autocast():
            val_loss = heldout_loss(model, vsub.queries, vsub.positives, batch_size=config.batch_size,
                                    scale=config.scale)
    record = {
        "schema": RECORD_SCHEMA,
        "status": "completed",
        "config": config.to_dict(),
        "model": {"name": config.model, "non_embedding_params": info.n_params, "trainable_params": info.n_trainable,
                  "trainable_params_total": info.n_trainable_total, "shape": info.shape.to_dict()},
        "method": config.method.name,
        "method_key": config.method.key,
        "hparams": config.method.hparams(),
        "budget": float(config.budget),
        "model_flops": float(state["model_flops"]),
        "hardware_flops": float(state["hardware_flops"]),
        "flops_per_token": per_token,
        "tokens": int(state["tokens"]),
        "padded_tokens": int(state["padded_tokens"]),
        "steps": int(state["step"]),
        "planned_steps": planned_steps,
        "batch_size": config.batch_size,
        "lr": lr,
        "lr_schedule": "warm-up + cosine by spent FLOPs",
        "step_lrs": [float(f"{x:.6g}") for x in state["step_lrs"]],
        "precision": "bf16" if use_bf16 else "fp32",
        "world_size": world,
        "seed": config.seed,
        "data": {"source": data.source, "pairs": len(data), "fingerprint": data.fingerprint(),
                 "mean_tokens_per_pair": mean_pair_tokens},
        "loss_curve": state["loss_curve"],
        "step_times_s": state["step_times"],
        "final_train_loss": state["loss_curve"][-1][1],
        "final_val_loss": val_loss,
        "val_pairs": (min(len(val), config.val_size_cap) if val is not None else 0),
        "train_time_s": state["train_time_s"],
        "wall_time_s": time.time() - t_start,
        "tokens_per_s": state["tokens"] / max(state["train_time_s"], 1e-9),
        "model_flops_per_s": state["model_flops"] / max(state["train_time_s"], 1e-9),
        "versions": _versions(),
        "device": device.type,
    }
    if out and dist.main:
        _export(model, config, record, out)
    dist.barrier()
    return record


def _fingerprint(config: TrainConfig, data: PairData) -> str:
    keep = {k: v for k, v in config.to_dict().items()
            if k not in ("resume", "progress", "checkpoint_every", "stop_after_steps", "out", "log_every")}
    return json.dumps(keep, sort_keys=True, default=str) + data.fingerprint()


def _save_checkpoint(ckpt_dir: Path, model: Any, optimizer: Any, state: dict[str, Any],
                     fingerprint: str) -> None:
    import torch

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"params": params, "optimizer": optimizer.state_dict(),
                "state": state, "rng": torch.get_rng_state(), "fingerprint": fingerprint}, tmp / "state.pt")
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def _export(model: Any, config: TrainConfig, record: dict[str, Any], out: Path) -> None:
    """Write the SentenceTransformer (LoRA merged unless keep_adapter), model card and run.json atomically."""
    from .modeling import merge_adapters

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".export.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    hf = model[0].auto_model
    if config.keep_adapter and isinstance(config.method, LoRA):
        hf.save_pretrained(tmp)
    else:
        merge_adapters(model)
        model.save(str(tmp))
    (tmp / "README.md").write_text(model_card(record))
    _atomic_write_json(tmp / "run.json", record)
    for item in tmp.iterdir():
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    tmp.rmdir()
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")


def model_card(record: dict[str, Any]) -> str:
    c = record["config"]
    hp = ", ".join(f"{k}={v}" for k, v in record["hparams"].items()) or "—"
    val = record["final_val_loss"]
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, embrecipe, contrastive]
base_model: {c['model']}
---
# Embedding model trained by embrecipe

| | |
|---|---|
| base model | `{c['model']}` |
| method | `{record['method']}` ({hp}) |
| pooling | {c['pooling']} |
| budget (model FLOPs) | {record['budget']:.4g} |
| model FLOPs spent | {record['model_flops']:.4g} ({record['model_flops'] / record['budget']:.2%} of budget) |
| hardware FLOPs (incl. padding, recompute) | {record['hardware_flops']:.4g} |
| non-embedding params N / trainable N_t | {record['model']['non_embedding_params']:,} / {record['model']['trainable_params']:,} |
| tokens | {record['tokens']:,} |
| steps (planned) | {record['steps']} ({record['planned_steps']}) |
| batch size / max length | {c['batch_size']} / {c['max_seq_length']} |
| lr / weight decay / warm-up | {record['lr']:g} / {c['weight_decay']} / {c['warmup_ratio']:.0%} then cosine to 0 |
| loss | symmetric InfoNCE, scale {c['scale']} |
| final train loss | {record['final_train_loss']:.4f} |
| final validation loss | {"—" if val is None else f"{val:.4f}"} |
| data | `{record['data']['source']}` ({record['data']['pairs']:,} pairs, fingerprint {record['data']['fingerprint']}) |
| precision / device | {record['precision']} / {record['device']} |

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH_TO_THIS_FOLDER")
embeddings = model.encode(["a query", "a document"])
```
"""
