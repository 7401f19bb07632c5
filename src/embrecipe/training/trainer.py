"""Budget-exact contrastive fine-tuning with a FLOP meter.

The loop is ours (model, pooling, loss and GradCache come from sentence-transformers, LoRA from peft) because
the study's protocol needs three things no off-the-shelf trainer does together: stop *before* the step that
would exceed a FLOP budget (we know each batch's real token count before running it), plan the LR schedule
from the FLOPs spent (so it ends exactly with the budget), and resume a killed run to the same FLOPs and loss.

This module is the run itself, as a sequence of phases (:func:`train`): set up (data, model and method, tokens
and the meter, optimizer) → resume → loop → validate → record → export. The parts live beside it: settings in
:mod:`~embrecipe.training.config`, the meter and schedule in :mod:`~embrecipe.training.budget`, batches in
:mod:`~embrecipe.training.batching`, checkpoints in :mod:`~embrecipe.training.checkpoint`, the output checks in
:mod:`~embrecipe.training.preflight`, the export in :mod:`~embrecipe.training.export`, devices and ranks in :mod:`~embrecipe.training.runtime`.

Example::

    >>> from embrecipe import TrainConfig, train
    >>> from embrecipe.models.methods import LoRA
    >>> record = train(TrainConfig(model="runs/base", data="pairs.jsonl", method=LoRA(rank=32),
    ...                            budget=3e13, batch_size=1024, mini_batch_size=64, out="runs/lora"))  # doctest: +SKIP
    >>> record.model_flops <= record.budget                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.data.pairs import (
    PairData,
    duplicate_fraction,
    estimate_tokens_per_pair,
    load_pairs,
    unique_pairs,
)
from embrecipe.errors import BudgetError, EmbrecipeError, EmbrecipeWarning, InputError, TrainingDiverged
from embrecipe.jsonio import atomic_write_json
from embrecipe.models.methods import flops_per_token, hardware_flops_per_token, method_to_dict
from embrecipe.runs.records import RunConfig, RunRecord
from embrecipe.training.batching import (
    Batches,
    ShardInputs,
    count_truncated,
    prompted_columns,
    tokenize,
    tokenizer_fingerprint,
)
from embrecipe.training.budget import (
    LoopState,
    budget_of_steps,
    check_no_repeat,
    divergence_reason,
    epochs_over_unique,
    lr_at_fraction,
    planned_steps,
    step_lr_fraction,
    steps_for_epochs,
)
from embrecipe.training.checkpoint import (
    checkpoint_step,
    restore_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from embrecipe.training.config import TrainConfig, config_from_dict, resolve_lr
from embrecipe.training.device import precision_for
from embrecipe.training.export import export_or_explain
from embrecipe.training.preflight import check_disk_space, check_out_dir, disk_bytes_needed
from embrecipe.training.runtime import (
    Dist,
    auto_gradcache,
    compile_mode,
    device_name,
    resolve_packing,
    seed_everything,
    training_device,
    use_fused_adamw,
    versions,
)
from embrecipe.training.tracking import step_metrics

# Warn when at least this fraction of the training pairs repeats an earlier (query, positive) pair: duplicates in
# one batch are false negatives for InfoNCE, and a set of identical pairs trains at a constant loss of ln B.
DUPLICATE_WARN_FRACTION = 0.1


class TrainingStopped(Exception):
    """A run stopped by its ``stop_after_steps`` hook (tests and benchmarks imitate a kill with it): no finished
    run, so no record. ``state`` is the loop state where it stopped (:func:`train_until_stopped` returns it)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__(f"stopped after {state['step']} step(s) by stop_after_steps; the run is not finished")
        self.state = state


def train_from_dict(config: dict[str, Any]) -> RunRecord:
    """Train from a plain dict (keys of :class:`TrainConfig`; ``method`` as ``method_to_dict``)."""
    return train(config_from_dict(config))


def train_until_stopped(config: TrainConfig) -> dict[str, Any]:
    """Run ``config`` until its ``stop_after_steps`` hook stops it, as a kill would; the loop state there: a dict
    with ``status: "interrupted"``, the run's ``execution`` choices and the :class:`~embrecipe.training.budget.LoopState`
    fields (``step``, ``model_flops``, ``tokens``, ``step_times``, ...). The checkpoint it leaves (with ``out`` and
    ``checkpoint_every``) resumes like a killed run's. A run whose budget ends first is an error."""
    if config.stop_after_steps is None:
        raise InputError("train_until_stopped needs stop_after_steps (the step to stop after)")
    try:
        record = train(config)
    except TrainingStopped as stopped:
        return stopped.state
    raise EmbrecipeError(f"the budget was spent after {record.steps} step(s), before stop_after_steps "
                         f"{config.stop_after_steps}: the run finished")


def train(config: TrainConfig) -> RunRecord:
    """Run one budget-exact training run; return (and write to ``out/run.json``, as ``record.to_dict()``) its
    :class:`~embrecipe.runs.records.RunRecord`. A run stopped by ``stop_after_steps`` (a test hook that imitates a kill)
    is no finished run: it raises :class:`TrainingStopped` (:func:`train_until_stopped` returns its loop state)."""
    config.validate()
    dist = Dist()
    t_start = time.time()
    seed_everything(config.seed)
    out = _check_out(config)
    data, val = _load_data(config, dist)
    run = _set_up(config, data, out, dist)
    ckpt_dir = out / "checkpoint" if out else None
    fingerprint = run_fingerprint(config, data) if ckpt_dir is not None else ""
    state = LoopState()
    if config.resume and ckpt_dir is not None:
        state = restore_checkpoint(ckpt_dir, fingerprint, run.model, run.optimizer, run.device)
    tracker = _open_tracker(config, dist.main, out)
    failure, last_loss = _loop(config, run, state, tracker, dist, ckpt_dir, fingerprint)
    _close_loop(config, run, state, failure, last_loss, ckpt_dir, fingerprint, dist)
    val_loss = _validate(config, run, val, dist, failure, tracker, state.step)
    tracker.close()
    record = _record(config, run, state, data, val, val_loss, failure, tracker, dist.world, t_start)
    _deliver(config, run, record, out, ckpt_dir, dist)
    return record


# --------------------------------------------------------------------------------------------- set up


def _check_out(config: TrainConfig) -> Path | None:
    out = Path(config.out) if config.out else None
    if config.resume and out is None:
        raise InputError("--resume needs --out (the run directory holding the checkpoint)")
    if out is not None:
        check_out_dir(out, resume=config.resume, overwrite=config.overwrite)
    return out


def _load_data(config: TrainConfig, dist: Dist) -> tuple[PairData, PairData | None]:
    """The training pairs and the validation pairs (given, split off, or none), checked."""
    data = config.data if isinstance(config.data, PairData) else load_pairs(config.data)
    if config.val_data is not None:
        val = config.val_data if isinstance(config.val_data, PairData) else load_pairs(config.val_data)
    elif config.val_fraction > 0:
        data, val = data.split_off(config.val_fraction, seed=config.seed)
    else:
        val = None
    unique = unique_pairs(data)
    if unique <= config.batch_size:
        # With no more unique pairs than one batch every step trains on the same pairs, against the same in-batch
        # negatives: the loss falls to 0 by memorising them, and the model learns nothing (issue 21).
        raise InputError(f"{data.source}: {unique} unique (query, positive) pairs in {len(data)} rows, no more than "
                         f"one batch of {config.batch_size}: every step would train on the same pairs (give more "
                         "pairs or a smaller --batch-size)")
    if val is not None and len(val) < 2:
        raise InputError(f"{val.source}: {len(val)} validation pair(s); the validation loss needs at least 2 "
                         "(in-batch negatives)")
    dup = duplicate_fraction(data)
    if dup >= DUPLICATE_WARN_FRACTION and dist.main:
        warnings.warn(f"{data.source}: {dup:.0%} of the pairs repeat an earlier (query, positive) pair; duplicates "
                      "are false negatives in a batch (identical pairs train at a constant loss of ln B)",
                      EmbrecipeWarning, stacklevel=3)
    return data, val


@dataclass
class _Meter:
    """The run's tokens and what the FLOP meter charges per token (fixed before the first step)."""

    tok_cols: list[list[list[int]]]
    pair_tokens: list[int]  # real tokens of each pair, all its columns
    prompt_lengths: list[int | None]
    per_token: int  # model FLOPs per real token: the budget's rate
    hw_per_token: int  # hardware FLOPs per executed (padded) token
    mini_batch: int | None
    auto_mini: int | None
    gradcache: bool
    mean_pair_tokens: float
    planned_steps: int
    batches: Batches
    budget: float  # the FLOPs the run may spend: config.budget, or what an epoch/step target's batches cost
    truncated: int  # texts longer than max_seq_length (cut to it)
    unique_pairs: int


@dataclass
class _Run:
    """Everything the loop, validation and the record use, set up once before the first step."""

    model: Any
    device: Any
    info: Any
    use_bf16: bool
    meter: _Meter
    params: list[Any]
    lr: float
    lr_source: str
    optimizer: Any
    loss_fn: Any
    packed: bool
    inputs: ShardInputs
    sync_every: int
    execution: dict[str, Any] = field(default_factory=dict)
    precision_reason: str = ""

    def autocast(self) -> Any:
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.use_bf16 else contextlib.nullcontext()


def _set_up(config: TrainConfig, data: PairData, out: Path | None, dist: Dist) -> _Run:
    model, device, info, (use_bf16, precision_reason) = _load_model(config, out, dist)
    meter = _set_up_meter(config, data, model, device, info, use_bf16)
    run = _set_up_optimization(config, model, device, info, use_bf16, meter, dist)
    run.precision_reason = precision_reason
    _report_setup(config, run, data, dist)
    return run


def _load_model(config: TrainConfig, out: Path | None, dist: Dist) -> tuple[Any, Any, Any, tuple[bool, str]]:
    """The model on its device with the method applied: (model, device, method info, (bf16?, why))."""
    from embrecipe.models.loading import apply_method, load_sentence_transformer, set_prompts

    model = load_sentence_transformer(config.model, pooling=config.pooling, max_seq_length=config.max_seq_length,
                                      gguf_file=config.gguf_file, attn_implementation=config.attn_implementation)
    device = training_device()
    model.to(device)
    set_prompts(model, config.query_prompt, config.doc_prompt)
    seed_everything(config.seed)  # peft initialises LoRA weights from the global RNG
    info = apply_method(model, config.method)
    if config.gradient_checkpointing:
        hf = model[0].auto_model
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not config.method.trains_everything:  # frozen inputs: checkpointed blocks need a gradient to flow
            hf.enable_input_require_grads() if hasattr(hf, "enable_input_require_grads") else None
    precision = precision_for(config.precision, device)
    if config.precision == "bf16" and device.type == "cuda" and not precision_for("auto", device)[0]:
        raise InputError(f"precision bf16 requested but {device_name(device)} has no bf16 support")
    if out is not None and dist.main:
        trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        export_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        check_disk_space(out, disk_bytes_needed(export_bytes, trainable_bytes, config.checkpoint_every > 0))
    return model, device, info, precision


def _set_up_meter(config: TrainConfig, data: PairData, model: Any, device: Any, info: Any, use_bf16: bool) -> _Meter:
    """Tokenize every column once, price a token, plan the steps and fix the batch order."""
    tokenizer = model[0].tokenizer
    fingerprint = tokenizer_fingerprint(tokenizer)  # once per run, not once per column
    columns, prompt_lengths = prompted_columns(model, data.columns(config.hard_negatives), config.query_prompt,
                                               config.doc_prompt)
    tok_cols = [tokenize(tokenizer, col, config.max_seq_length, fingerprint) for col in columns]
    truncated = sum(count_truncated(tokenizer, col, ids, config.max_seq_length, fingerprint)
                    for col, ids in zip(columns, tok_cols, strict=True))
    pair_tokens = [sum(len(c[i]) for c in tok_cols) for i in range(len(data))]
    per_token = flops_per_token(config.method.name, info.n_params, info.n_trainable)
    auto_mini = auto_gradcache(config, device, info, use_bf16) if config.mini_batch_size is None else None
    # GradCache only where memory requires it (CUDA: measured free memory); not part of the config, so a resumed
    # run on a card with other free memory still matches its checkpoint
    mini_batch = config.mini_batch_size if config.mini_batch_size is not None else auto_mini
    gradcache = bool(mini_batch and mini_batch < config.batch_size)
    hw_per_token = hardware_flops_per_token(config.method.name, info.n_params, info.n_trainable,
                                            gradient_checkpointing=config.gradient_checkpointing,
                                            gradcache=gradcache)
    # every pair: the columns are tokenized already (from the cache), so the estimate is the exact mean
    mean_pair_tokens = estimate_tokens_per_pair(
        columns, sample=None, tokenize=lambda texts: tokenize(tokenizer, texts, config.max_seq_length, fingerprint))
    tokens_per_step = mean_pair_tokens * config.batch_size
    batches = Batches([max(len(c[i]) for c in tok_cols) for i in range(len(data))], config.batch_size,
                      config.seed, config.length_bucketing)
    if config.budget is not None:
        budget = float(config.budget)
        steps = planned_steps(budget, per_token, tokens_per_step, method_key=config.method.key,
                              batch_size=config.batch_size)
    else:
        # An epoch or step target becomes the FLOPs its batches cost (the batch order is fixed by the seed), so the
        # meter stops exactly there and the LR schedule, a function of the budget spent, ends with the last step.
        steps = config.max_steps if config.max_steps is not None else \
            steps_for_epochs(float(config.epochs or 0), batches.per_epoch)
        budget = budget_of_steps(_step_costs(batches, pair_tokens, per_token), steps)
    if not config.allow_repeat:
        check_no_repeat(steps, batches.per_epoch, per_token, tokens_per_step, data.source)
    return _Meter(tok_cols=tok_cols, pair_tokens=pair_tokens, prompt_lengths=prompt_lengths, per_token=per_token,
                  hw_per_token=hw_per_token, mini_batch=mini_batch, auto_mini=auto_mini, gradcache=gradcache,
                  mean_pair_tokens=mean_pair_tokens, planned_steps=steps, batches=batches, budget=budget,
                  truncated=truncated, unique_pairs=unique_pairs(data))


def _step_costs(batches: Batches, pair_tokens: list[int], per_token: int) -> Iterator[int]:
    """The model FLOPs of every step, in the order the loop takes the batches (epoch after epoch)."""
    epoch = 0
    while True:
        for batch in batches.epoch(epoch):
            yield per_token * sum(pair_tokens[i] for i in batch)
        epoch += 1


def _note(config: TrainConfig, dist: Dist, message: str) -> None:
    """One informational line on stderr (the main rank, unless the run is quiet)."""
    if config.progress and dist.main:
        print(f"embrecipe: {message}", file=sys.stderr, flush=True)


def _report_setup(config: TrainConfig, run: _Run, data: PairData, dist: Dist) -> None:
    """Say what the run decided before it spends anything: precision, truncation, LR, and repeated data."""
    meter = run.meter
    _note(config, dist, f"precision {run.precision_reason}")
    _note(config, dist, f"lr {run.lr:g} ({run.lr_source})")
    if meter.truncated:
        _note(config, dist, f"{meter.truncated} text(s) of {data.source} are longer than max_seq_length "
                            f"{config.max_seq_length} tokens and are cut to it")
    epochs = epochs_over_unique(meter.planned_steps, config.batch_size, meter.unique_pairs)
    if epochs > 1 and config.epochs is None and dist.main:
        # An epoch target asks for repetition; a FLOP or step target may reach it unnoticed.
        warnings.warn(f"{data.source}: this run trains {epochs:.1f} epochs of its {meter.unique_pairs} unique pairs "
                      f"({meter.planned_steps} steps of {config.batch_size}); repeated pairs teach less than new "
                      "ones (more data, or --epochs/--max-steps to choose the repetition)",
                      EmbrecipeWarning, stacklevel=3)


def _set_up_optimization(config: TrainConfig, model: Any, device: Any, info: Any, use_bf16: bool, meter: _Meter,
                         dist: Dist) -> _Run:
    """AdamW, the loss, and the execution paths (packing, compile, sync interval) this device takes."""
    import torch

    from embrecipe.training.loss import symmetric_infonce
    from embrecipe.training.packing import auto_row_length

    params = [p for p in model.parameters() if p.requires_grad]
    lr, lr_source = resolve_lr(config)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fused = use_fused_adamw(device)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused else {"foreach": True}),
    )
    # No step-based scheduler: the LR is set before every step from the FLOPs spent (lr_at_fraction), so it
    # needs no state of its own and a resumed run follows the same schedule from state.model_flops.
    loss_fn = symmetric_infonce(model, scale=config.scale,
                                mini_batch_size=meter.mini_batch if meter.gradcache else None,
                                gather_across_devices=dist.enabled)
    packed, why_not_packed = resolve_packing(config, device, model, meter.gradcache)
    row_length = (config.pack_length or auto_row_length(config.max_seq_length)) if packed else 0
    mode = compile_mode(config.compile, device)
    if mode != "none":
        # in place (nn.Module.compile), so parameter names, checkpoints and export stay as they are
        model[0].auto_model.compile(mode="reduce-overhead" if mode == "cudagraphs" else None,
                                    dynamic=None if mode == "cudagraphs" else True)
    mask_dtype = torch.bfloat16 if use_bf16 else torch.float32
    # Deferring the loss read only pays where the device runs ahead of the host (CUDA); on the CPU every step is
    # synchronous anyway, so read each step: the progress bar is live and a divergence stops at its own step.
    sync_every = config.sync_every if device.type == "cuda" else 1
    execution = {"packing": packed, "row_length": row_length, "why_not_packed": why_not_packed or None,
                 "compile": mode, "optimizer": "adamw-fused" if fused else "adamw-foreach",
                 "attn_implementation": config.attn_implementation, "sync_every": sync_every,
                 "gradcache_mini_batch": meter.mini_batch if meter.gradcache else None,
                 "gradcache_auto": meter.auto_mini is not None}
    inputs = ShardInputs(tok_cols=meter.tok_cols, pad_id=model[0].tokenizer.pad_token_id, device=device,
                         prompt_lengths=meter.prompt_lengths, world=dist.world, row_length=row_length,
                         attn_implementation=config.attn_implementation, mask_dtype=mask_dtype,
                         rows_multiple=8 if mode == "cudagraphs" else 1)
    return _Run(model=model, device=device, info=info, use_bf16=use_bf16, meter=meter, params=params, lr=lr,
                lr_source=lr_source, optimizer=optimizer, loss_fn=loss_fn, packed=packed, inputs=inputs, sync_every=sync_every,
                execution=execution)


# --------------------------------------------------------------------------------------------- the loop


@dataclass
class _PendingLosses:
    """Losses still on the device, read by the host at sync points only (a read is a device sync): per step,
    (step, model FLOPs after it, loss on the device, the LR it used, tokens and train time so far)."""

    first_loss: float | None
    last_loss: float
    steps: list[tuple[int, float, Any, float, int, float]] = field(default_factory=list)

    def drain(self, config: TrainConfig, state: LoopState, dist: Dist, tracker: Any, bar: Any,
              step_t0: float) -> str | None:
        """Sync point: bring the pending losses to the host in one transfer, fill the loss curve, log them to
        the tracker, and check them: a non-finite or runaway loss fails the run here rather than every step,
        which would sync every step. Every rank sees the same mean losses, so all stop at the same step.

        Each pending step carries the train time at its end as the host saw it; the device finished the last one
        only at this sync, so its time is taken now (``step_t0``: when the current step began). Throughput is
        tokens over that time, never over the time *before* the step (0 at step 1: the 1e11 tokens/s of issue 21)."""
        import torch

        if not self.steps:
            return None
        values = dist.mean_many(torch.stack([x[2].float() for x in self.steps]).tolist())
        step, flops, loss, step_lr, tokens, seconds = self.steps[-1]
        self.steps[-1] = (step, flops, loss, step_lr, tokens,
                          max(seconds, state.train_time_s + time.time() - step_t0))
        bad = None
        for (step, flops, _, step_lr, tokens, seconds), v in zip(self.steps, values, strict=True):
            reason = divergence_reason(v, self.first_loss, config.batch_size)
            if reason is not None:
                bad = f"diverged at step {step}: {reason}"
                state.loss_curve.append([flops, v])
                self.last_loss = v
                break
            if self.first_loss is None:
                self.first_loss = v
            if step % config.log_every == 0 or step == 1:
                state.loss_curve.append([flops, v])
                tracker.log(step, step_metrics(loss=v, lr=step_lr, model_flops=flops, tokens=tokens,
                                               train_time_s=seconds))
            self.last_loss = v
        self.steps.clear()
        timed = state.train_time_s > 0  # the first step's time is added after its sync
        bar.set_postfix(step=state.step, loss=f"{self.last_loss:.4f}",
                        tok_s=f"{state.tokens / state.train_time_s:.0f}" if timed else "-")
        return bad


def _loop(config: TrainConfig, run: _Run, state: LoopState, tracker: Any, dist: Dist, ckpt_dir: Path | None,
          fingerprint: str) -> tuple[str | None, float]:
    """Train from ``state`` until the next step would exceed the budget (or a loss diverges); (the failure or
    None, the last loss read). ``state`` advances in place. Raises :class:`TrainingStopped` at ``stop_after_steps``."""
    from tqdm.auto import tqdm

    meter = run.meter
    run.model.train()
    order = meter.batches.epoch(state.epoch)
    budget = meter.budget
    bar = tqdm(total=budget, unit="FLOP", unit_scale=True, disable=not (config.progress and dist.main),
               desc=f"{config.method.key}", initial=state.model_flops, dynamic_ncols=True)
    steps_this_call = 0
    step_t0 = time.time()
    stopped_early = False
    failure: str | None = None
    losses = _PendingLosses(first_loss=state.loss_curve[0][1] if state.loss_curve else None,
                            last_loss=state.loss_curve[-1][1] if state.loss_curve else float("nan"))
    while True:
        if state.pos >= len(order):
            state.epoch += 1
            state.pos = 0
            order = meter.batches.epoch(state.epoch)
        batch = order[state.pos]
        real = sum(meter.pair_tokens[i] for i in batch)
        step_cost = meter.per_token * real  # model FLOPs of this step
        if state.exceeds(step_cost, budget):
            break  # the next step would exceed the budget
        if config.stop_after_steps is not None and steps_this_call >= config.stop_after_steps:
            stopped_early = True
            break
        # every rank builds the same global batch and keeps its shard, so the meter needs no communication
        feats, padded = run.inputs.build(batch[dist.rank::dist.world])
        step_lr = run.lr * lr_at_fraction(step_lr_fraction(state.model_flops, step_cost, budget),
                                          config.warmup_ratio)
        loss = _optimizer_step(config, run, feats, step_lr, dist)
        state.charge(step_cost, meter.hw_per_token * padded, real, padded)
        steps_this_call += 1
        losses.steps.append((state.step, state.model_flops, loss.detach(), step_lr, state.tokens,
                             state.train_time_s + time.time() - step_t0))
        checkpoint_now = bool(ckpt_dir and config.checkpoint_every and state.step % config.checkpoint_every == 0)
        if state.step == 1 or state.step % run.sync_every == 0 or checkpoint_now:
            failure = losses.drain(config, state, dist, tracker, bar, step_t0)  # the step's time includes the wait
        now = time.time()
        state.train_time_s += now - step_t0
        state.step_times.append(round(now - step_t0, 6))
        state.step_flops.append(step_cost)
        state.step_lrs.append(step_lr)
        step_t0 = now
        bar.update(step_cost)
        if failure:
            break
        if checkpoint_now and dist.main and ckpt_dir is not None:
            save_checkpoint(ckpt_dir, run.model, run.optimizer, state, fingerprint)
    if failure is None and losses.steps:
        failure = _drain_last(config, state, losses, dist, tracker, bar, step_t0)
    bar.close()
    if stopped_early:
        tracker.close()
        raise TrainingStopped({"status": "interrupted", "execution": run.execution, **state.to_dict()})
    return failure, losses.last_loss


def _drain_last(config: TrainConfig, state: LoopState, losses: _PendingLosses, dist: Dist, tracker: Any, bar: Any,
                step_t0: float) -> str | None:
    """Read the losses still pending after the loop; the last steps' device work finished only now, so the wait
    is charged to the last step."""
    failure = losses.drain(config, state, dist, tracker, bar, step_t0)
    now = time.time()
    if state.step_times:
        state.step_times[-1] = round(state.step_times[-1] + now - step_t0, 6)
    state.train_time_s += now - step_t0
    return failure


def _close_loop(config: TrainConfig, run: _Run, state: LoopState, failure: str | None, last_loss: float,
                ckpt_dir: Path | None, fingerprint: str, dist: Dist) -> None:
    """After the last step: a run that took no step is a budget error; the loss curve ends at the FLOPs spent;
    the final weights are checkpointed."""
    if state.step == 0:
        raise BudgetError(f"budget {run.meter.budget:.3g} FLOPs is smaller than the first batch's cost")
    if state.loss_curve and state.loss_curve[-1][0] != state.model_flops:
        state.loss_curve.append([state.model_flops, last_loss])
    if failure is None and ckpt_dir and config.checkpoint_every and dist.main \
            and checkpoint_step(ckpt_dir) != state.step:
        # The final weights go to disk before the export, so an export that fails (full disk) loses nothing:
        # rerunning with --resume finds the budget spent and only exports.
        save_checkpoint(ckpt_dir, run.model, run.optimizer, state, fingerprint)


def _optimizer_step(config: TrainConfig, run: _Run, feats: list[dict[str, Any]], step_lr: float,
                    dist: Dist) -> Any:
    """One AdamW step at ``step_lr`` on a batch's inputs; the loss, left on the device."""
    import torch

    from embrecipe.training.packing import packed_embeddings

    for group in run.optimizer.param_groups:
        group["lr"] = step_lr
    run.optimizer.zero_grad(set_to_none=True)
    with run.autocast():
        if run.packed:
            loss = run.loss_fn.compute_loss_from_embeddings([packed_embeddings(run.model, f) for f in feats], None)
        else:
            loss = run.loss_fn(feats, None)
        loss.backward()
    dist.average_gradients(run.params)
    if config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm)
    run.optimizer.step()
    return loss


# --------------------------------------------------------------------------------------------- after the loop


def _validate(config: TrainConfig, run: _Run, val: PairData | None, dist: Dist, failure: str | None,
              tracker: Any, step: int) -> float | None:
    """The held-out loss on (at most ``val_size_cap`` of) the validation pairs, on the main rank of a run that
    did not fail; logged to the tracker."""
    from embrecipe.training.loss import heldout_loss

    run.model.eval()
    val_loss = None
    if val is not None and dist.main and failure is None:
        vsub = val if len(val) <= config.val_size_cap else val.subset(range(config.val_size_cap))
        with run.autocast():
            val_loss = heldout_loss(run.model, vsub.queries, vsub.positives, batch_size=config.batch_size,
                                    scale=config.scale, query_prompt=config.query_prompt,
                                    doc_prompt=config.doc_prompt)
    if val_loss is not None:
        tracker.log(step, {"eval/loss": val_loss})
    return val_loss


def _record(config: TrainConfig, run: _Run, state: LoopState, data: PairData, val: PairData | None,
            val_loss: float | None, failure: str | None, tracker: Any, world: int, t_start: float) -> RunRecord:
    import torch

    info, meter, device = run.info, run.meter, run.device
    return RunRecord(
        config=RunConfig.from_dict(config.to_dict()),
        status="failed" if failure else "completed",
        failure=failure,
        model=config.model,
        shape=info.shape,
        n_params=info.n_params,
        n_trainable=info.n_trainable,
        method=method_to_dict(config.method),
        variant=config.method.key,
        budget=float(meter.budget),
        seed=config.seed,
        model_flops=float(state.model_flops),
        tokens=int(state.tokens),
        steps=int(state.step),
        batch_size=config.batch_size,
        lr=run.lr,
        tokens_per_pair=meter.mean_pair_tokens,
        unique_pairs=meter.unique_pairs,
        data_fingerprint=data.fingerprint(),
        final_train_loss=state.loss_curve[-1][1],
        final_val_loss=val_loss,
        loss_curve=state.loss_curve,
        details={
            "trainable_params_total": info.n_trainable_total,
            "data_source": data.source,
            "hardware_flops": float(state.hardware_flops),
            "flops_per_token": meter.per_token,
            "padded_tokens": int(state.padded_tokens),
            "planned_steps": meter.planned_steps,
            # what the run was asked to train: a FLOP budget, or epochs/steps turned into the FLOPs they cost
            "target": ({"budget": float(config.budget)} if config.budget is not None else
                       {"epochs": config.epochs} if config.epochs is not None else {"max_steps": config.max_steps}),
            "epochs": epochs_over_unique(state.step, config.batch_size, meter.unique_pairs),
            "truncated_texts": meter.truncated,
            "lr_source": run.lr_source,
            "lr_schedule": "warm-up + cosine by spent FLOPs",
            "step_lrs": [float(f"{x:.6g}") for x in state.step_lrs],
            "precision": "bf16" if run.use_bf16 else "fp32",
            "precision_reason": run.precision_reason,
            "world_size": world,
            "step_times_s": state.step_times,
            "val_pairs": (min(len(val), config.val_size_cap) if val is not None else 0),
            "train_time_s": state.train_time_s,
            "wall_time_s": time.time() - t_start,
            "tokens_per_s": state.tokens / max(state.train_time_s, 1e-9),
            "model_flops_per_s": state.model_flops / max(state.train_time_s, 1e-9),
            "versions": versions(),
            "device": device.type,
            "device_name": device_name(device),  # the planner's --hours picks throughput per device type
            "tracking": {"backends": tracker.backends, "log_dir": getattr(tracker, "log_dir", None)},
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "execution": run.execution,
        },
    )


def _deliver(config: TrainConfig, run: _Run, record: RunRecord, out: Path | None, ckpt_dir: Path | None,
             dist: Dist) -> None:
    """A failed run: its record alone (a diverged model is not worth a file), then :class:`TrainingDiverged`.
    A finished one: the exported model with its record."""
    if record.failure is not None:
        if out and dist.main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "run.json", record.to_dict())
        dist.barrier()
        raise TrainingDiverged(f"training {record.failure} (lr {run.lr:g}); no model exported"
                               + (f", record in {out / 'run.json'}" if out else ""), record)
    if out and dist.main:
        export_or_explain(run.model, config, record, out, run.loss_fn, ckpt_dir)
    dist.barrier()


def _open_tracker(config: TrainConfig, main_rank: bool, out: Path | None) -> Any:
    """The run's tracker (:mod:`embrecipe.training.tracking`); other ranks of a multi-device run get a no-op."""
    from embrecipe.training.tracking import MultiTracker, open_tracker

    if not main_rank:
        return MultiTracker([])
    log_dir = config.tracking_dir or (str(out / "runs") if out else None)
    name = config.run_name or (out.name if out else None)
    tracker = open_tracker(config.report_to, log_dir=log_dir, run_name=name, group=config.tracking_group,
                           config=config.to_dict())
    tracker.log_dir = log_dir if tracker.trackers else None
    return tracker

