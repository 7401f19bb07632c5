"""What the training device can do, asked in one place: the trainer's ``precision: auto``, the bf16 peak that
:func:`embrecipe.sweep.placement.measure_peak_flops` measures, and the benchmarks all take the same answer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# CPU instruction-set flags (as /proc/cpuinfo spells them) that mean native bf16 arithmetic. Without one, oneDNN
# still *reports* bf16 support but emulates it: a 2048^3 matmul ran at 60 GFLOP/s in bf16 against 291 in fp32 on
# an AVX-512 Xeon without them, and a demo training run took 4x longer in bf16 (issue 21).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_precision(requested: str, device_type: str, *, cuda_bf16: bool = False,
                     cpu_flags: Iterable[str] | None = None) -> tuple[bool, str]:
    """(use bf16?, why) for ``precision`` ``requested`` (auto | bf16 | fp32) on a ``device_type`` device (pure).

    ``auto`` picks bf16 on CUDA when ``cuda_bf16`` (the card has bf16 units), and on a CPU only when its
    ``cpu_flags`` include one of :data:`NATIVE_BF16_CPU_FLAGS`; fp32 everywhere else.

    >>> choose_precision("auto", "cpu", cpu_flags={"avx512f", "avx512bw"})
    (False, 'auto: fp32, this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)')
    >>> choose_precision("auto", "cpu", cpu_flags={"avx512f", "avx512_bf16"})[0]
    True
    """
    if requested == "fp32":
        return False, "fp32 (requested)"
    if requested == "bf16":
        return True, "bf16 (requested)"
    if device_type == "cuda":
        return (True, "auto: bf16, the GPU supports it") if cuda_bf16 else \
            (False, "auto: fp32, the GPU has no bf16 support")
    if device_type == "cpu":
        native = sorted(set(cpu_flags or ()) & set(NATIVE_BF16_CPU_FLAGS))
        if native:
            return True, f"auto: bf16, the CPU has native bf16 ({', '.join(native)})"
        return False, "auto: fp32, this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)"
    return False, f"auto: fp32 on {device_type}"


def cpu_flags() -> set[str] | None:
    """The CPU's instruction-set flags from /proc/cpuinfo (Linux); None where that file is not there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _torch_cpu_flags() -> set[str]:
    """Native bf16 as torch's CPU-capability probes see it (where /proc/cpuinfo is not readable, e.g. macOS)."""
    import torch

    flags = set()
    for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        try:
            if getattr(torch.cpu, probe)():
                flags.add(flag)
        except (AttributeError, RuntimeError):
            pass
    return flags


def precision_for(requested: str, device: Any) -> tuple[bool, str]:
    """:func:`choose_precision` for a ``torch.device``, with the facts read from this machine."""
    import torch

    cuda_bf16 = device.type == "cuda" and bool(torch.cuda.is_bf16_supported())
    flags = cpu_flags() if device.type == "cpu" else set()
    if flags is None:
        flags = _torch_cpu_flags()
    return choose_precision(requested, device.type, cuda_bf16=cuda_bf16, cpu_flags=flags)


def bf16_supported(device: Any) -> bool:
    """Whether ``device`` (a ``torch.device``) computes bf16 natively: CUDA's own answer; on a CPU, the
    instruction set (:func:`precision_for`): oneDNN says yes on CPUs that only emulate bf16, several times slower
    than fp32, so ``precision: auto`` must not take its word."""
    return precision_for("auto", device)[0]
