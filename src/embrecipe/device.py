"""What the training device can do, asked in one place: the trainer's ``precision: auto``, the bf16 peak that
:func:`embrecipe.gpu_schedule.measure_peak_flops` measures, and the benchmarks all take the same answer."""

from __future__ import annotations

from typing import Any


def bf16_supported(device: Any) -> bool:
    """Whether ``device`` (a ``torch.device``) has bf16 units: CUDA's own answer; on a CPU, oneDNN's.

    A CPU without them emulates bf16, many times slower than fp32, so ``precision: auto`` must not pick it there.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
