"""The committed study (study/full, docs/study.md, the packaged card) hangs together.

The full recomputation is ``python study/full/report.py --check`` (minutes: bootstrap refits, adaptive replays,
mteb scoring); these tests pin the cheap links between the committed files.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from embrecipe.laws import LawSet, fit_laws, run_point
from embrecipe.planning.planner import default_card_path
from embrecipe.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "study" / "full"


@pytest.fixture(scope="module")
def report_module():
    spec = importlib.util.spec_from_file_location("study_report", STUDY / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    return json.loads((STUDY / "results.json").read_text())


def test_packaged_card_is_the_fit_of_the_committed_store():
    card = LawSet.load(default_card_path())
    with RunStore(STUDY / "study.sqlite") as st:
        records = st.records()
    refit = fit_laws(records, bootstrap=0, seed=0, validate=False)
    assert sorted(card.variants) == sorted(refit.variants)
    points = [run_point(r) for r in records]
    for v in card.variants:
        assert card[v].estimator == refit[v].estimator, v
        # The laws' E/A/B are not pinned by this grid (the card's diagnostics say so): the Huber fit's optimum
        # moves along a flat valley between machines (BLAS, libm) while its predictions stay put. So compare
        # what the planner uses, the predictions at every fitted run, to 0.2 % (the run noise is ~2-3 %).
        pts = [p for p in points if p.variant == v]
        n, d = [p.N for p in pts], [p.D for p in pts]
        for a, b in zip(card[v].predict(n, d), refit[v].predict(n, d), strict=True):
            assert math.isclose(a, b, rel_tol=2e-3), (v, a, b)
    for label in ("smollm2-135m-depth-ladder", "docstring pairs", "H100", f"{len(records)} runs"):
        assert label in card.provenance


def test_recipe_check_numbers_follow_from_the_check_store(report_module, results):
    plans = json.loads((STUDY / "plans.json").read_text())
    with RunStore(STUDY / "check.sqlite") as st:
        checks = st.records()
    again = report_module.recipe_check(plans, checks)
    assert again == results["recipe_check"]
    for chk in again:  # the three configurations of each check budget were all trained
        assert chk["complete"] and len(chk["rows"]) == 3


def test_study_doc_is_rendered_from_the_committed_results(report_module, results):
    doc = report_module.render_doc(results, (STUDY / "study.md.in").read_text())
    assert doc == (ROOT / "docs" / "study.md").read_text()
    assert "{{" not in doc


def test_committed_scores_are_the_mteb_rows_of_the_results(report_module, results):
    """scores.json (what stays of the check models' embeddings) gives exactly the MTEB rows of results.json."""
    plans = json.loads((STUDY / "plans.json").read_text())
    with RunStore(STUDY / "check.sqlite") as st:
        checks = st.records()
    scores = json.loads((STUDY / "scores.json").read_text())["runs"]
    assert all(len(s["npz_sha256"]) == 64 for s in scores.values())
    assert report_module.score_embeddings(checks, report_module.recipe_check(plans, checks), scores) == results["mteb"]


def test_missing_or_changed_embeddings_are_reported(report_module, tmp_path, monkeypatch, capsys):
    committed = json.loads((STUDY / "scores.json").read_text())["runs"]
    key = next(iter(committed))
    same = {key: dict(committed[key])}
    assert report_module.score_differences(committed, same) == []
    nudged = {key: {**committed[key], "tasks": {**committed[key]["tasks"], "LocalDocRetrieval": 0.9}}}
    assert [d for d in report_module.score_differences(committed, nudged) if "LocalDocRetrieval" in d]
    other_file = {key: {**committed[key], "npz_sha256": "0" * 64}}
    assert [d for d in report_module.score_differences(committed, other_file) if "sha256" in d]
    assert report_module.score_differences({}, same) == [f"{key}: not in scores.json"]

    monkeypatch.setattr(report_module, "EMB", tmp_path / "emb")  # no npz: the committed scores, said so
    assert report_module.load_scores([], [], strict=True, out_path=tmp_path / "s.json") == committed
    assert "absent: using the committed scores" in capsys.readouterr().err

    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / f"{key}.npz").write_bytes(b"")
    monkeypatch.setattr(report_module, "rescore_embeddings", lambda checks, check: nudged)
    assert report_module.load_scores([], [], strict=True, out_path=tmp_path / "s.json") is None  # --check fails
    assert not (tmp_path / "s.json").exists()
    merged = report_module.load_scores([], [], strict=False, out_path=tmp_path / "s.json")  # a plain run rewrites
    assert merged[key]["tasks"]["LocalDocRetrieval"] == 0.9
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == merged


def test_device_study_runs_sweep_fit_plan_and_check_against_a_deadline(tmp_path, monkeypatch):
    """The GPU-lease driver, end to end on the fake trainer: a sweep, a fit, plans at an inside and an x3-above
    budget, and the planned configuration + two alternatives trained at each (no GPU, no real training)."""
    import time

    import yaml

    grid = {"name": "toy", "trainer": "synthetic", "models": ["toy-h64-l2", "toy-h128-l4"],
            "methods": {"full": {}, "lora": {"rank": [8]}}, "budgets": [1e12, 3e12, 9e12, 2.7e13],
            "tokens_per_pair": 60, "min_steps": 1, "train": {"batch_size": 32, "seed": 0}}
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(grid))
    spec = importlib.util.spec_from_file_location("device_study", STUDY / "device_study.py")
    device_study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_study)
    monkeypatch.setenv("STUDY_WORK", str(tmp_path / "work"))
    out = tmp_path / "out"
    rc = device_study.main(["--grid", str(grid_path), "--out", str(out), "--until", str(time.time() + 240),
                            "--reserve", "150", "--workers", "2", "--bootstrap", "5"])
    assert rc == 0
    with RunStore(out / "study.sqlite") as st:
        assert st.counts()["completed"] == 16
    plans = json.loads((out / "plans.json").read_text())
    assert plans["check_budgets"]["above"] == pytest.approx(3 * 2.7e13)
    assert 3e12 < plans["check_budgets"]["inside"] < 9e12
    with RunStore(out / "check.sqlite") as st:
        checks = st.records()
    assert len(checks) == 6 and all(r.synthetic for r in checks)
    for label, p in plans["plans"].items():
        trained = {(Path(str(r.config.model)).name, run_point(r).variant) for r in checks
                   if math.isclose(r.budget, p["budget"], rel_tol=1e-9)}
        assert trained == {(c["model"], c["variant"]) for c in p["candidates"][:3]}, label
    session = json.loads((out / "session.json").read_text())
    assert session["sweep"]["counts"]["completed"] == 16 and "finished" in session


def test_the_adaptive_mini_study_results_are_what_its_committed_stores_say(tmp_path):
    """Issue 20's CPU mini-study (study/adaptive_mini, benchmarks/adaptive.md section 5): results.md is
    recomputed from the committed (xz) stores: the design's replay on the full grid takes exactly the live
    design's runs, and the numbers quoted are the stores'."""
    spec = importlib.util.spec_from_file_location("adaptive_mini_report", ROOT / "study" / "adaptive_mini" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.summarise(tmp_path)
    assert module.markdown(res) == (ROOT / "study" / "adaptive_mini" / "results.md").read_text()
    assert res["replay_takes_the_live_runs"] and res["full_grid"]["runs"] == 54
    assert res["adaptive_live"]["fraction_of_grid"] == pytest.approx(0.626, abs=5e-4)
    assert "62.6 %" in (ROOT / "benchmarks" / "adaptive.md").read_text()
