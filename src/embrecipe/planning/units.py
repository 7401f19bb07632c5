r"""Plans in the user's units: GPU-hours, device memory, and the cost of serving the embedding model.

The planner (:mod:`embrecipe.planning.planner`) works in model FLOPs. Users budget in hours on a device, are bounded by
its memory, and pay again for every token they embed afterwards. Three small, pure conversions (no torch)
bring those units in. No library measures or converts these for a training recipe, so they are written here.

**Hours → FLOPs, per candidate.** Throughput differs per method and model size (LoRA and freezing do less
work per token than they seem to; small models under-fill a GPU), so a plan in hours compares candidates at
equal *wall time*, and each candidate :math:`(m, v)` gets its own budget

.. math::  C_{m,v} = 3600 \cdot H \cdot F_v(N_m)

where :math:`F_v(N)` is the measured model-FLOP/s (budget convention, :mod:`embrecipe.flops`) of variant
:math:`v` at size :math:`N`: the median over the store's completed runs on the chosen device, interpolated
linearly in :math:`(\log N, \log F)` between measured sizes and held at the nearest measured size outside
them (a warning says so and by how much). A variant with no measurement borrows the median of its method
kind (e.g. another LoRA rank), then of all variants, again with a warning.

**Memory** is :mod:`embrecipe.training.memory`'s calibrated model (re-exported here for the planner).

**Serving cost.** Embedding :math:`T` tokens afterwards costs :math:`2 N_{\text{all}} T` FLOPs, where
:math:`N_{\text{all}}` is *every* non-embedding parameter of the served model — frozen and trained alike
(a LoRA adapter is merged before serving, so it adds nothing). The input-embedding table is *excluded*: a
lookup is a gather, not a matrix product, and an embedding model runs no LM head. With ``embed_tokens``
the plan's budget :math:`C` is the total: training gets :math:`C - 2 N_{\text{all}} T`, and the objective
stays the predicted loss of the trained model at that remaining budget.

Example::

    >>> serving_flops(1_000_000, 1e9)
    2000000000000000.0
    >>> t = ThroughputTable([Measurement("full", "full", 1e6, 1e12), Measurement("full", "full", 4e6, 4e12)])
    >>> round(t.flops_per_s("full", "full", 2e6)[0] / 1e12, 6)  # the geometric midpoint
    2.0
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from embrecipe.errors import InputError
from embrecipe.jsonio import read_mapping
from embrecipe.runs.records import RunRecord, as_record

# The memory model lives in embrecipe.training.memory (torch-free, store-free: the trainer's runtime uses it too); the
# planner and its tests import it from here.
from embrecipe.training.memory import (  # noqa: F401
    DEFAULT_KAPPA,
    DEFAULT_LORA_EXCESS,
    DEFAULT_OVERHEAD_BYTES,
    GIB,
    activation_values_per_token,
    auto_mini_batch,
    fit_activation_coefficient,
    training_memory,
)


# ------------------------------------------------------------------------------------------------------
# Hours
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One measured training throughput: model FLOP/s of ``variant`` (of method ``kind``) at size ``n_params``."""

    variant: str
    kind: str
    n_params: float
    flops_per_s: float
    source: str = ""
    batch_size: int | None = None


def hours_to_flops(hours: float, flops_per_s: float) -> float:
    """Model FLOPs a device delivers in ``hours`` at a measured ``flops_per_s``."""
    return 3600.0 * float(hours) * float(flops_per_s)


def interpolate_loglog(xs: Sequence[float], ys: Sequence[float], x: float) -> tuple[float, float]:
    """Piecewise-linear interpolation in (log x, log y); outside the range, the nearest end's y.

    Returns ``(y, factor)`` where ``factor`` is how far outside the measured range x lies (1.0 inside; e.g.
    4.0 for four times above the largest measured x or below the smallest). Holding the end value rather
    than extending the slope is deliberate: throughput saturates with size on a device, and a slope fitted
    over a few sizes extrapolates badly.
    """
    pts = sorted(zip(xs, ys, strict=True))
    if not pts:
        raise InputError("no throughput measurements to interpolate")
    if x <= pts[0][0]:
        return float(pts[0][1]), pts[0][0] / x
    if x >= pts[-1][0]:
        return float(pts[-1][1]), x / pts[-1][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            if x1 == x0:
                return float(y0), 1.0
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return float(math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))), 1.0
    raise AssertionError("unreachable")  # pragma: no cover


class ThroughputTable:
    """Measured model-FLOP/s per (variant, size); :meth:`flops_per_s` answers for any (variant, N)."""

    def __init__(self, measurements: Iterable[Measurement], label: str = "") -> None:
        self.measurements = [m for m in measurements if m.flops_per_s > 0 and m.n_params > 0]
        if not self.measurements:
            raise InputError(f"no usable throughput measurements ({label or 'empty table'})")
        self.label = label

    def _curve(self, rows: list[Measurement]) -> tuple[list[float], list[float]]:
        by_size: dict[float, list[float]] = {}
        for m in rows:
            by_size.setdefault(float(m.n_params), []).append(m.flops_per_s)
        sizes = sorted(by_size)
        return sizes, [statistics.median(by_size[s]) for s in sizes]

    def flops_per_s(self, variant: str, kind: str, n_params: float) -> tuple[float, list[str]]:
        """Model FLOP/s for ``variant`` at ``n_params`` and the warnings that qualify it."""
        if self.single:  # one benchmark row: the same FLOP/s for every option, said once by the planner
            return self.measurements[0].flops_per_s, []
        notes: list[str] = []
        rows = [m for m in self.measurements if m.variant == variant]
        if not rows:
            rows = [m for m in self.measurements if m.kind == kind]
            if rows:
                notes.append(f"no throughput measured for {variant}: used the median of {kind} runs")
            else:
                rows = self.measurements
                notes.append(f"no throughput measured for any {kind} variant: used the median of all runs")
        sizes, values = self._curve(rows)
        value, factor = interpolate_loglog(sizes, values, float(n_params))
        if factor > 1 + 1e-9:
            side = "above the largest" if n_params > sizes[-1] else "below the smallest"
            notes.append(f"throughput at N = {n_params:.3g} held from the nearest measured size: {factor:.3g}x "
                         f"{side} measured ({sizes[-1] if n_params > sizes[-1] else sizes[0]:.3g})")
        return value, notes

    # -- sources --------------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[RunRecord | Mapping[str, Any]], device: str | None = None,
                     label: str = "") -> ThroughputTable:
        """Completed runs of a store → measurements, on the device whose name contains ``device``.

        A record's device is its ``device_name`` (e.g. "NVIDIA H100 80GB HBM3") when the trainer wrote one,
        else its ``device`` ("cuda", "cpu"). Without ``device`` the store must hold runs of one device only.
        """
        recs = [as_record(r) for r in records]
        usable = [r for r in recs if r.completed
                  and _num(r.details.get("model_flops_per_s")) and _num(r.details.get("train_time_s"))]
        names = sorted({record_device(r) for r in usable})
        if device:
            usable = [r for r in usable if device.lower() in record_device(r).lower()]
            if not usable:
                raise InputError(f"no completed run with a measured throughput on a device matching {device!r} "
                                 f"in {label or 'the store'} (devices there: {', '.join(names) or 'none'})")
        elif len(names) > 1:
            raise InputError(f"{label or 'the store'} holds runs from several devices ({', '.join(names)}): "
                             "pick one with --throughput-device NAME")
        out = []
        for r in usable:
            n = r.n_params
            kind = r.method.get("name") if r.method is not None else None
            variant = r.variant or kind
            if _num(n):
                batch = r.batch_size
                out.append(Measurement(str(variant), str(kind), float(n), float(r.details["model_flops_per_s"]),
                                       record_device(r), int(batch) if _num(batch) else None))
        dev = names[0] if len(names) == 1 and not device else (device or "")
        return cls(out, label=f"{label} ({dev})" if dev else label)

    @classmethod
    def from_benchmark_row(cls, results: Mapping[str, Any], name: str, label: str = "") -> ThroughputTable:
        """One named row of ``benchmarks/results.json``: ``MODEL/METHOD`` or ``MODEL/METHOD/BATCH``.

        A single row is one throughput: every candidate gets the same model FLOP/s (and so the same FLOP
        budget); the planner says so. ``name`` may be prefixed ``DEVICE:`` to pick a machine section when
        the file holds several.
        """
        dev, _, row = name.rpartition(":")
        parts = row.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InputError(f"--throughput-row {name!r}: expected MODEL/METHOD[/BATCH], e.g. smollm2-L8/full/64")
        hits = []
        for section in results.get("runs", []):
            if dev and dev.lower() not in str(section.get("device", "")).lower():
                continue
            for t in section.get("training", []):
                if (t.get("model"), t.get("method")) == (parts[0], parts[1]) and \
                        (len(parts) == 2 or str(t.get("batch")) == parts[2]):
                    hits.append((section, t))
        if not hits:
            rows = sorted({f"{t.get('model')}/{t.get('method')}/{t.get('batch')}"
                           for s in results.get("runs", []) for t in s.get("training", [])})
            raise InputError(f"--throughput-row {name!r} matches no row of {label or 'the benchmark results'} "
                             f"(rows: {', '.join(rows) or 'none'})")
        if len(hits) > 1:
            raise InputError(f"--throughput-row {name!r} matches {len(hits)} rows: add /BATCH or a DEVICE: prefix")
        section, t = hits[0]
        fps = float(t["embrecipe_model_gflops"]) * 1e9
        tag = f"{t['model']}/{t['method']}/{t['batch']} on {section.get('device')} ({section.get('precision')})"
        batch = int(t["batch"]) if _num(t.get("batch")) else None
        return cls([Measurement("*", "*", 1.0, fps, tag, batch)], label=f"benchmark row {tag}")

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({m.batch_size for m in self.measurements if m.batch_size})

    @property
    def single(self) -> bool:
        return len(self.measurements) == 1 and self.measurements[0].variant == "*"


def record_device(r: RunRecord) -> str:
    return str(r.details.get("device_name") or r.details.get("device") or "unknown")


def _num(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def default_benchmark_results() -> Path:
    """``benchmarks/results.json`` of a source checkout (the package does not ship it)."""
    return Path(__file__).resolve().parents[3] / "benchmarks" / "results.json"


def load_throughput(store: str | os.PathLike[str] | None = None, row: str | None = None, *,
                    device: str | None = None, results: str | os.PathLike[str] | None = None) -> ThroughputTable:
    """The throughput table from a run store, or from one named benchmark row."""
    if (store is None) == (row is None):
        raise InputError("give exactly one throughput source: --throughput-from STORE or --throughput-row NAME")
    if store is not None:
        from embrecipe.runs.store import RunStore, is_store_path

        if not is_store_path(store):
            raise InputError(f"--throughput-from {store}: not a run store (a .sqlite file written by a sweep)")
        with RunStore(store) as s:
            records = s.records()
        return ThroughputTable.from_records(records, device=device, label=f"store {store}")
    path = Path(results) if results else default_benchmark_results()
    if not path.is_file():
        raise InputError(f"benchmark results {path} do not exist (run benchmarks/run.py, or use --throughput-from)")
    data = read_mapping(path, "benchmark results")
    return ThroughputTable.from_benchmark_row(data, str(row), label=str(path))


# ------------------------------------------------------------------------------------------------------
# Serving
# ------------------------------------------------------------------------------------------------------
def serving_flops(n_params: float, tokens: float) -> float:
    """FLOPs of embedding ``tokens`` tokens with a model of ``n_params`` non-embedding parameters: 2·N·T."""
    if not (math.isfinite(tokens) and tokens >= 0):
        raise InputError(f"tokens to embed must be a non-negative number, got {tokens!r}")
    return 2.0 * float(n_params) * float(tokens)
