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
    for row in data["training"]:
        assert row["embrecipe_pairs_s"] > 0 and row["baseline_pairs_s"] > 0
        assert row["ratio"] == pytest.approx(row["embrecipe_model_gflops"] / row["baseline_model_gflops_est"])
    assert data["memory"]["peak_rss_mib_plain"] > 0
    assert data["fit_plan"]["runs"] == 40
    md = out.with_suffix(".md").read_text()
    assert "SMOKE RUN" in md and "| tiny-neox | full |" in md
