"""Where and how a run executes: ranks, device, seeds, versions, and the fast paths that fit the device.

None of this changes what a run computes (the FLOP meter, the schedule and the loss are the same on every
device); it picks the device a worker was placed on, how ranks share gradients, and which execution paths
(fused AdamW, packing, ``torch.compile``, GradCache's mini-batch) apply where. torch is imported only inside
the functions that need it.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError

if TYPE_CHECKING:
    from embrecipe.training.config import TrainConfig

def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("embrecipe", "torch", "transformers", "sentence-transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class Dist:
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

    def mean_many(self, values: list[float]) -> list[float]:
        """Each scalar's mean over ranks, in one collective (each rank's loss covers only its shard of the
        queries; the losses are gathered at a sync point)."""
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


def use_fused_adamw(device: Any) -> bool:
    """Fused AdamW (one kernel per parameter group) on CUDA and on the CPU, where torch 2.13's fused kernel
    measured 6x faster than ``foreach`` (benchmarks/adamw_step.txt); ``foreach`` on any other device."""
    return device.type in ("cuda", "cpu")


def compile_mode(requested: str, device: Any) -> str:
    """The compile mode that actually runs: CUDA graphs exist on CUDA only, so elsewhere ``cudagraphs`` is plain
    ``torch.compile`` (``default``)."""
    if requested == "cudagraphs" and device.type != "cuda":
        return "default"
    return requested


def auto_gradcache(config: TrainConfig, device: Any, info: Any, use_bf16: bool) -> int | None:
    """On CUDA without a mini-batch size: the GradCache mini-batch the free memory requires, or None (the whole
    batch fits), by the planner's memory model (:func:`embrecipe.training.memory.gradcache_mini_batch`). Elsewhere None:
    CPU memory is not measured here, and the user's setting always wins."""
    if device.type != "cuda":
        return None
    import torch

    from embrecipe.training.memory import gradcache_mini_batch

    # the model is already on the card: its memory counts as free here, the formula adds it back as weights
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    return gradcache_mini_batch(info.shape, config.method, batch_size=config.batch_size,
                                seq_len=config.max_seq_length, memory_bytes=0.9 * free,
                                texts_per_pair=2 + config.hard_negatives, activation_bytes=2 if use_bf16 else 4)


def resolve_packing(config: TrainConfig, device: Any, model: Any, gradcache: bool) -> tuple[bool, str]:
    """(pack?, why not): ``auto`` packs on CUDA; packing never runs where it would change the result."""
    from embrecipe.training.packing import supports_packing

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


def device_name(device: Any) -> str:
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


def training_device() -> Any:
    """The device this process trains on: the GPU a sweep worker was placed on (``EMBRECIPE_CUDA_DEVICE``,
    :mod:`embrecipe.sweep.placement`) or torchrun's ``LOCAL_RANK``, else GPU 0; the CPU without CUDA."""
    import torch

    return torch.device("cuda", int(os.environ.get("EMBRECIPE_CUDA_DEVICE", os.environ.get("LOCAL_RANK", "0")))) \
        if torch.cuda.is_available() else torch.device("cpu")
