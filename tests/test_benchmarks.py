"""CI runs the benchmark harness in smoke mode: correctness only, no timing assertions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_benchmark_smoke_writes_results(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "results"
    subprocess.run([sys.executable, str(root / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    data = json.loads(out.with_suffix(".json").read_text())["runs"][0]
    assert data["smoke"] is True
    assert {p["dtype"] for p in data["peak"]} == {"float32", "bfloat16"}
    assert all(p["gflops"] > 0 for p in data["peak"])
    assert {r["method"] for r in data["training"]} == {"full", "lora-r8"}
    md = out.with_suffix(".md").read_text()
    assert "SMOKE RUN" in md
    for row in data["training"]:
        assert row["embrecipe_pairs_s"] > 0 and row["baseline_pairs_s"] > 0
        # The trainer's FLOP meter (FLOPs of the timed batches / their pairs, one timing) and the cost formula
        # over the pool's mean pair (the baseline's estimate) must agree on what a pair costs, up to the lengths
        # of the few timed batches: a metering error (a pass counted twice, padding counted) breaks this.
        metered = row["embrecipe_model_gflops"] / row["embrecipe_pairs_s"]
        formula = row["baseline_model_gflops_est"] / row["baseline_pairs_s"]
        assert 0.6 < metered / formula < 1.6, (row["method"], metered, formula)
        # the markdown table shows the JSON's numbers
        assert (f"| {row['model']} | {row['method']} | {row['batch']} | {row['embrecipe_pairs_s_epoch']:.2f} | "
                f"{row['baseline_pairs_s']:.2f} | **{row['ratio']:.2f}×** |") in md
    assert data["memory"]["peak_rss_mib_plain"] > 0
    assert data["fit_plan"]["runs"] == 40 and data["fit_plan"]["fit_s_median"] > 0


def test_gpu_section_renders_partial_runs_and_failed_rows():
    """The GPU driver writes after every row; what it writes must render, errors and all."""
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        from render import render_markdown
    finally:
        sys.path.remove(str(root / "benchmarks"))
    run = {"kind": "gpu", "device": "NVIDIA H200 (GPU)", "smoke": False, "partial": True, "date": "d",
           "python": "3.12", "versions": {"torch": "2.11"}, "peak": [{"gflops": 790_000.0}],
           "models": {"smollm2-L30": "shape twin"},
           "training": [{"model": "smollm2-L30", "method": "full", "batch": 1024, "embrecipe_pairs_per_s": 9000.0,
                         "embrecipe_model_flops_per_s": 3.2e14, "embrecipe_mfu": 0.405, "embrecipe_peak_mib": 30000.0,
                         "embrecipe_padded_over_real": 1.06, "st_pairs_per_s": 2000.0,
                         "st_model_flops_per_s": 7e13, "st_mfu": 0.089, "st_peak_mib": 50000.0, "ratio": 4.57},
                        {"model": "smollm2-L30", "method": "lora-r32", "batch": 32, "st_error": "ImportError: x"}],
           "fast_paths": [{"variant": "packed", "error": "RuntimeError: y"}], "sweep": None,
           "skipped": ["smollm2-L8 full b32: deadline"]}
    md = render_markdown(run)
    assert "PARTIAL" in md and "790 TFLOP/s" in md
    assert "| smollm2-L30 | full | 1024 | 9000 | 2000 | **4.57×** | 320.0 | 40.5% |" in md
    assert "st_error: ImportError: x" in md and "failed: RuntimeError: y" in md and "deadline" in md
