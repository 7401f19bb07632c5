"""Calibration of the intervals on synthetic laws with known truth and noise (fast version of
``python -m embrecipe.laws.calibration``; the committed table in benchmarks/calibration.json is the full run)."""

from __future__ import annotations

import json
from pathlib import Path

from embrecipe.laws.calibration import Setup, calibrate


def test_single_run_intervals_cover_held_out_runs_at_about_the_nominal_rate():
    # 6 redraws x 2 variants x (16 interior + 4 extrapolated) = 240 held-out runs; binomial sd at 0.9 is ~0.02,
    # redraw-to-redraw correlation widens it: the band [0.78, 0.98] is ~3 sd either side.
    res = calibrate(Setup(), redraws=6, bootstrap=25, seed=11)
    cov = res["coverage"]
    run = (cov["run_interior"]["coverage"] * cov["run_interior"]["n"]
           + cov["run_extrapolated"]["coverage"] * cov["run_extrapolated"]["n"]) / (
        cov["run_interior"]["n"] + cov["run_extrapolated"]["n"])
    assert 0.78 <= run <= 0.98, cov
    # Not trivially wide: the 90 % single-run interval at 3x the largest budget is under ±10 % (noise is 2 %).
    assert res["median_rel_width_run_extrapolated"] < 0.2
    assert res["noise_measured_share"] == 1.0  # three seeds at three cells: the noise term is measured
    # P(optimal) is a probability that tracks the hit rate: options it calls near-certain are mostly optimal
    # and near-impossible ones almost never.
    bins = res["p_optimal_bins"]
    assert bins[0]["bin"][0] == 0.0 and bins[0]["hit_rate"] < 0.15
    assert res["brier_p_optimal"] < 0.1


def test_committed_calibration_table_is_todays_calibration_and_meets_the_target(tmp_path):
    """The committed table must describe what today's code computes: the default study design it simulated, the
    command that wrote it, and a table rendered from its own numbers (a rerun at a tiny size writes the same
    layout); then its coverage meets the target. A change to the design or the output without a rerun fails."""
    import dataclasses

    from embrecipe.laws.calibration import format_table, main

    committed = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.json").read_text())
    today = Setup()
    assert committed["setup"] == json.loads(json.dumps(
        {**dataclasses.asdict(today), "truths": {k: list(v) for k, v in today.truths.items()}}))
    for flag, key in (("--redraws", "redraws"), ("--bootstrap", "bootstrap")):
        assert f"{flag} {committed[key]}" in committed["command"]
    assert committed["table"] == format_table(committed)
    assert main(["--redraws", "2", "--bootstrap", "5", "--known-redraws", "0", "--out", str(tmp_path / "c.json")]) == 0
    fresh = json.loads((tmp_path / "c.json").read_text())
    assert set(fresh) == set(committed) - {"known_law"} and fresh["setup"] == committed["setup"]
    assert fresh["table"] == format_table(fresh)
    assert committed["synthetic"] and committed["redraws"] >= 20
    for where in ("interior", "extrapolated"):
        assert 0.85 <= committed["coverage"][f"run_{where}"]["coverage"] <= 0.95, committed["coverage"]
