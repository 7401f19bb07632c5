"""Sweep-level utilization on a GPU: the whole testbed ladder (L2 .. L30), several cells per GPU at once.

Used by ``benchmarks/gpu.py`` (the GPU section). The sweep runs through embrecipe's own sweep machinery
(process pool, cells placed on the GPU by memory) with the real trainer; utilization = the model FLOPs the cells
spent ÷ (wall time of the sweep × the measured bf16 matmul peak), start-up of every cell included.
"""

from __future__ import annotations

import time
from pathlib import Path

LADDER = (2, 4, 8, 16, 30)


def sweep_fill(assets: Path | None, tmp: Path, peak_flops_per_s: float, deadline: float, workers: int = 4,
               budgets: tuple[float, ...] = (5e14, 1.5e15), batch: int = 1024,
               ladder: dict[int, str] | None = None) -> dict:
    from common import model_dir

    from embrecipe.sweep.grid import grid_from_dict
    from embrecipe.sweep.orchestration import run_sweep
    from embrecipe.sweep.placement import sweep_utilization
    from embrecipe.testbed.pairs import testbed_pairs_path

    ladder = ladder or {k: model_dir(k, assets, tmp)[0] for k in LADDER}
    models = [{"name": f"smollm2-L{k}", "path": path} for k, path in ladder.items()]
    grid = grid_from_dict({
        "name": "gpu-fill", "models": models, "methods": {"full": {}}, "budgets": list(budgets),
        "min_steps": 1, "allow_repeat": True,
        "train": {"data": str(testbed_pairs_path("train")), "batch_size": batch, "max_seq_length": 75,
                  "progress": False, "seed": 0},
    })
    lines: list[str] = []
    t = time.time()
    res = run_sweep(grid, store=tmp / "sweep.sqlite", workers=workers, progress=False, log=lines.append)
    wall = time.time() - t
    util = sweep_utilization(res.flops_spent, wall, peak_flops_per_s)
    return {"cells": len(res.ran), "failed": res.failed, "workers": workers, "wall_s": wall,
            "model_flops": res.flops_spent, "utilization": util, "sweep_reported_utilization": res.utilization,
            "description": f"smollm2-L{'/'.join(map(str, ladder))} full fine-tuning, budgets "
                           f"{', '.join(f'{b:.1g}' for b in budgets)} FLOPs, batch {batch}, "
                           f"{workers} pool workers packed on the GPU by memory; wall includes every cell's "
                           "model load and tokenization",
            "log": lines[-6:], "sequential_utilization": None, "over_deadline": time.time() > deadline}
