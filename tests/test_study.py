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

from embrecipe.laws import LawSet, fit_laws
from embrecipe.plan import default_card_path
from embrecipe.store import RunStore

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
    for v in card.variants:
        for k, x in card[v].params_.items():
            assert math.isclose(x, refit[v].params_[k], rel_tol=1e-4, abs_tol=1e-9), (v, k)
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
