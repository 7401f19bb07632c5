r"""Filling GPUs with sweep cells: memory-bounded placement, multi-GPU cells, sweep-level utilization.

A small model's cell (smollm2-L2 at batch 32) uses a few percent of an H100, so a sweep that runs one cell per
GPU at a time wastes most of the card. The sweep's process pool therefore runs several cells per GPU at once,
as many as fit in its memory: a cell starts on the GPU with the most free memory that holds its estimate,
waits while none does, and gives the memory back when it ends. Cells that need several GPUs (``gpus_per_cell``
> 1) take whole GPUs and run under ``torchrun``.

The memory estimate of a cell (MiB) is the planner's calibrated one (:func:`embrecipe.training.memory.training_memory`
at the cell's batch, GradCache mini-batch, ``max_seq_length``, hard negatives and precision), so the sweep and
the planner agree on what fits a card. A measured peak (``peak_gpu_mib`` of an earlier run of the same model,
method and batch) replaces the estimate when the store has one.

Why hand-written: Ray places tasks by *declared* fractional GPUs and a process pool knows nothing of GPUs;
neither decides how many cells of which size fit one card.

Example::

    >>> slots = GpuSlots([80_000])
    >>> slots.place(30_000), slots.place(30_000), slots.place(30_000)
    (0, 0, None)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from embrecipe.flops import ModelShape
from embrecipe.training.device import bf16_supported
from embrecipe.training.memory import training_memory


def estimate_cell_mib(shape: ModelShape, method: Any, *, batch_size: int, seq_len: int,
                      mini_batch: int | None = None, hard_negatives: int = 0, bf16: bool = True) -> float:
    """Estimated peak GPU memory of one training cell, MiB: :func:`embrecipe.training.memory.training_memory`."""
    return training_memory(shape, method, batch_size=batch_size, seq_len=seq_len, mini_batch=mini_batch,
                           texts_per_pair=2 + hard_negatives, activation_bytes=2 if bf16 else 4)["total"] / 2**20


@dataclass
class GpuSlots:
    """Free memory per GPU (MiB) and which cells hold how much of it. Pure bookkeeping, no CUDA calls."""

    free_mib: list[float]
    headroom: float = 0.9  # keep 10 % of every card free for fragmentation and estimate error
    held: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.capacity = [f * self.headroom for f in self.free_mib]
        self.left = list(self.capacity)

    def place(self, need_mib: float) -> int | None:
        """The GPU a cell needing ``need_mib`` starts on (the one with the most memory left), or None when it has
        to wait. A cell larger than any whole card still gets an *empty* card (it may fit after all, e.g. with
        a smaller real footprint than estimated; if not, it fails alone instead of blocking the sweep)."""
        best = max(range(len(self.left)), key=lambda g: self.left[g], default=None)
        if best is None:
            return None
        if self.left[best] >= need_mib or (self.left[best] == self.capacity[best] and need_mib > max(self.capacity)):
            self.left[best] -= min(need_mib, self.left[best])
            self.held.setdefault(best, []).append(min(need_mib, self.capacity[best]))
            return best
        return None

    def place_whole(self, gpus: int) -> list[int] | None:
        """``gpus`` idle cards for a multi-GPU cell, or None when fewer are idle."""
        idle = [g for g in range(len(self.left)) if self.left[g] == self.capacity[g]]
        if len(idle) < gpus:
            return None
        for g in idle[:gpus]:
            self.held.setdefault(g, []).append(self.capacity[g])
            self.left[g] = 0.0
        return idle[:gpus]

    def release(self, gpu: int, need_mib: float) -> None:
        amount = min(need_mib, self.capacity[gpu])
        self.held[gpu].remove(amount)
        self.left[gpu] = min(self.capacity[gpu], self.left[gpu] + amount)

    def release_whole(self, gpus: Sequence[int]) -> None:
        for g in gpus:
            self.held[g].remove(self.capacity[g])
            self.left[g] = self.capacity[g]


def sweep_utilization(model_flops: float, wall_s: float, peak_flops_per_s: float, devices: int = 1) -> float:
    """Sweep-level utilization: total model FLOPs ÷ (wall time × measured peak × devices)."""
    if wall_s <= 0 or peak_flops_per_s <= 0 or devices < 1:
        return math.nan
    return model_flops / (wall_s * peak_flops_per_s * devices)


def measure_peak_flops(device: str = "auto", dtype: str = "auto", n: int | None = None, reps: int = 5) -> dict:
    """Median FLOP/s of an n³ matmul on this machine's device, in the precision training uses there
    (bf16 where supported, else fp32): the denominator of :func:`sweep_utilization`."""
    import statistics
    import time

    import torch

    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) or device == "cuda" else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if bf16_supported(dev) else "float32"
    n = n or (8192 if dev.type == "cuda" else 1024)
    a = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
    times = []
    for i in range(reps + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {"device": dev.type, "dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / statistics.median(times)}


def visible_gpus_free_mib() -> list[float]:
    """Free memory (MiB) of each visible CUDA device; [] without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] / 2**20 for i in range(torch.cuda.device_count())]


def torchrun_command(nproc: int, config_path: str, record_path: str, python: str) -> list[str]:
    """The command that trains one multi-GPU cell: torchrun with ``nproc`` ranks on this host, each rank
    running :mod:`embrecipe.sweep.distributed_cell` (rank 0 writes the record)."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "embrecipe.sweep.distributed_cell", config_path, record_path]
