"""Golden outputs of `fit`, `plan` and `report` on the committed run stores.

Refactors of the record, the store, the laws or the planner must leave what a user sees unchanged; these files pin
it byte for byte (after replacing this checkout's paths and the card's creation time). Regenerate them only for
an intended change of output: ``EMBRECIPE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest

from embrecipe.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
STUDY = ROOT / "study" / "full" / "study.sqlite"
LRCHECK = ROOT / "study" / "lrcheck" / "lrcheck75.sqlite"

# name -> argv; "{tmp}" is the test's temporary directory, "{card}" the card the first case writes.
CASES: dict[str, list[str]] = {
    "fit_study": ["fit", str(STUDY), "--out", "{tmp}/card.json", "--bootstrap", "20"],
    "fit_study_json": ["fit", str(STUDY), "--out", "{tmp}/card2.json", "--bootstrap", "20", "--json"],
    "fit_lrcheck": ["fit", str(LRCHECK), "--out", "{tmp}/lr.json", "--bootstrap", "20", "--min-runs", "4"],
    "plan_packaged": ["plan", "--budget", "1.51e13"],
    "plan_packaged_table": ["plan", "--budgets", "1e13,1e14,1e15,1e16"],
    "plan_packaged_json": ["plan", "--budget", "3e13", "--json"],
    "plan_fitted_card": ["plan", "--laws", "{card}", "--budget", "5e13", "--top", "20"],
    "plan_store": ["plan", "--laws", str(STUDY), "--bootstrap", "20", "--budget", "2e13"],
    "plan_hours": ["plan", "--hours", "0.01", "--throughput-from", str(STUDY)],
    "plan_serving": ["plan", "--budget", "3e13", "--embed-tokens", "1e5"],
    "plan_memory": ["plan", "--budget", "1e14", "--device-memory", "4"],
}


RUN_COLUMNS = ("key", "status", "model", "variant", "budget", "seed", "n_params", "n_trainable", "model_flops", "tokens",
               "steps", "final_train_loss", "final_val_loss")


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _normalise(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "<tmp>").replace(str(ROOT), "<repo>")
    return re.sub(r'"created_at": "[^"]*"', '"created_at": "<time>"', text)


def _check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("EMBRECIPE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with EMBRECIPE_UPDATE_GOLDEN=1"
    want = path.read_text()
    if os.environ.get("EMBRECIPE_GOLDEN_EXACT") or text == want:
        assert text == want, f"{name}: output differs from {path}"
        return
    # Another machine's BLAS may move a fitted digit in the last place (and a rounding boundary with it): the
    # words must match exactly, the numbers to 1e-4 relative. EMBRECIPE_GOLDEN_EXACT=1 demands byte identity.
    got_words, want_words = NUMBER.split(text), NUMBER.split(want)
    assert got_words == want_words, f"{name}: output differs from {path} (not only in numbers)"
    bad = [(a, b) for a, b in zip(NUMBER.findall(text), NUMBER.findall(want), strict=True)
           if not math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-12)]
    assert not bad, f"{name}: numbers differ from {path}: {bad[:5]}"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every case run once, in order (the fitted-card plan needs the first fit's card)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("golden")
    got: dict[str, str] = {}
    for name, argv in CASES.items():
        args = [a.replace("{tmp}", str(tmp)).replace("{card}", str(tmp / "card.json")) for a in argv]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        got[name] = _normalise(f"exit {code}\n--- stdout\n{out.getvalue()}--- stderr\n{err.getvalue()}", tmp)
    got["card_study"] = _normalise((tmp / "card.json").read_text(), tmp)
    got["card_lrcheck"] = _normalise((tmp / "lr.json").read_text(), tmp)
    return got


@pytest.mark.parametrize("name", [*CASES, "card_study", "card_lrcheck"])
def test_golden_output(outputs: dict[str, str], name: str) -> None:
    _check(name, outputs[name])


def test_golden_report(tmp_path: Path) -> None:
    """`report` on the study store with the packaged card: the markdown, the CSV of runs and the card it copies."""
    from embrecipe.planning.planner import default_card_path

    assert main(["report", str(STUDY), "--laws", str(default_card_path()), "--out", str(tmp_path / "r")]) == 0
    report = _normalise((tmp_path / "r" / "report.md").read_text(), tmp_path)
    with open(tmp_path / "r" / "runs.csv", newline="") as f:
        rows = list(csv.reader(f))
    # The query columns only: the stored record JSON and the row times are the store's business, not the report's.
    keep = [rows[0].index(c) for c in RUN_COLUMNS]
    _check("report_md", report)
    _check("report_runs_csv", "".join(",".join(r[i] for i in keep) + "\n" for r in rows))
    laws = json.dumps(json.loads((tmp_path / "r" / "laws.json").read_text()), sort_keys=True)
    _check("report_laws_sha256", hashlib.sha256(_normalise(laws, tmp_path).encode()).hexdigest() + "\n")
