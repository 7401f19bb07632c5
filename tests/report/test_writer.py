"""Report and the fit/plan/report CLIs on SYNTHETIC runs (fake trainer; checks the machinery only)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from embrecipe.cli import main
from embrecipe.errors import InputError
from embrecipe.laws import LawSet
from embrecipe.report.writer import write_report
from embrecipe.runs.store import RunStore
from embrecipe.sweep.synthetic import synthetic_train

MODELS = ("toy-h64-l2", "toy-h128-l4", "toy-h256-l6")
METHODS = ({"name": "full"}, {"name": "lora", "rank": 8})
BUDGETS = (1e13, 1e14, 1e15)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    store = RunStore(path)
    for m in MODELS:
        for meth in METHODS:
            for b in BUDGETS:
                store.put(synthetic_train({"model": m, "method": meth, "budget": b, "batch_size": 32,
                                           "seed": 0}))
    store.close()
    return path


def test_write_report_files(store_path, tmp_path):
    """What the report shows: figures that decode to the drawn size and are not blank, a markdown whose law
    table holds the law card's fitted numbers for each variant, and the card itself."""
    import xml.etree.ElementTree as ET

    import matplotlib.image as mpimg
    import numpy as np

    records = RunStore(store_path).records()
    paths = write_report(records, tmp_path / "rep", bootstrap=10)
    laws = LawSet.load(paths["laws"])
    assert laws.variants == ["full", "lora-r8"]
    for key, (width_in, height_in) in (("figure_png", (8.5, 5.5)), ("residuals_png", (8.5, 4.2))):
        img = mpimg.imread(paths[key])
        # saved with bbox_inches="tight" at 130 dpi: within a few tens of pixels of the figure size
        assert abs(img.shape[1] - width_in * 130) < 0.25 * width_in * 130, (key, img.shape)
        assert abs(img.shape[0] - height_in * 130) < 0.25 * height_in * 130, (key, img.shape)
        assert float(np.std(img[..., :3])) > 0.05, key  # something is drawn
    for key in ("figure_svg", "residuals_svg"):
        assert ET.parse(paths[key]).getroot().tag.endswith("svg"), key
    md = paths["report"].read_text()
    assert "SYNTHETIC" in md and "figure1.png" in md and "Recipe table" in md
    assert f"- runs: {len(records)} completed, variants: full, lora-r8" in md
    for variant, law in laws.laws.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {variant} | {law.n_runs_} | "))
        for name in ("E", "alpha", "beta"):
            assert f"{law.params_[name]:.4g}" in row, (variant, name, row)


def test_report_without_family_falls_back_to_trend_lines(store_path, tmp_path):
    records = [dataclasses.replace(r, shape=None) for r in RunStore(store_path).records()]
    paths = write_report(records, tmp_path / "rep", bootstrap=0)
    assert paths["figure_png"].stat().st_size > 1000
    assert "no recipe table" in paths["report"].read_text()


def test_report_needs_runs(tmp_path):
    with pytest.raises(InputError):
        write_report([], tmp_path)


def test_cli_fit_plan_report(store_path, tmp_path, capsys):
    card = tmp_path / "laws.json"
    assert main(["fit", str(store_path), "--out", str(card), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "full: 9 runs" in out and "leave-largest-budget-out" in out and "residuals" in out
    assert card.is_file()

    assert main(["plan", "--budget", "3e14", "--laws", str(card)]) == 0
    out = capsys.readouterr().out
    assert "Optimum:" in out and "P(optimal)" in out

    assert main(["plan", "--budget", "3e14", "--laws", str(card), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best"]["variant"] in ("full", "lora-r8") and data["n_bootstrap"] == 20
    assert len(data["candidates"]) == len(MODELS) * len(METHODS)

    assert main(["plan", "--budgets", "1e13,1e14,1e15,1e17", "--laws", str(store_path), "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 1e+1") == 4 and "WARNING at 1e+17" in out

    rep = tmp_path / "rep"
    assert main(["report", str(store_path), "--out", str(rep), "--laws", str(card)]) == 0
    assert (rep / "figure1.png").is_file() and (rep / "runs.csv").is_file() and (rep / "runs.parquet").is_file()


def test_cli_errors(store_path, tmp_path, capsys, monkeypatch):
    from embrecipe.planning import planner as plan_module

    monkeypatch.setattr(plan_module, "default_card_path", lambda: tmp_path / "no-card.json")
    assert main(["plan", "--budget", "1e15"]) == 2
    assert "no default law card" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["plan", "--budget", "-5", "--laws", str(store_path)]) == 2
    assert main(["fit", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "x.json")]) == 2
    assert "not a run store" in capsys.readouterr().err
    assert main(["report", "postgresql://x/y", "--out", str(tmp_path)]) == 2


def test_cli_run_plans_trains_and_records(store_path, tmp_path, capsys):
    """`embrecipe run` with the SYNTHETIC trainer: plan → train the optimum → record (no eval)."""
    card = tmp_path / "laws.json"
    assert main(["fit", str(store_path), "--out", str(card), "--bootstrap", "10"]) == 0
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"query": "q", "pos": "p"}\n')
    store = tmp_path / "run.sqlite"
    capsys.readouterr()
    assert main(["run", "--budget", "3e14", "--laws", str(card), "--data", str(data), "--out",
                 str(tmp_path / "out"), "--train-fn", "synthetic", "--store", str(store), "--eval", "none"]) == 0
    out = capsys.readouterr().out
    assert "Optimum:" in out and "predicted loss" in out and "held-out loss" in out
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    rec = RunStore(store).records()
    assert len(rec) == 1 and rec[0].model == plan["best"]["path"]
    assert rec[0].method == plan["best"]["method"] and rec[0].budget == 3e14
    assert main(["run", "--budget", "3e14", "--laws", str(card), "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o2")]) == 2


def test_plan_works_out_of_the_box_with_the_packaged_card(capsys):
    """The study's card ships: `embrecipe plan --budget` needs nothing else, and says what the card is."""
    assert main(["plan", "--budget", "5e13"]) == 0
    out = capsys.readouterr().out
    assert "Optimum:" in out and "smollm2-L" in out
    for label in ("smollm2-135m-depth-ladder", "docstring pairs", "H100"):  # family, data, hardware
        assert label in out
    assert main(["plan", "--budgets", "1e13,1e15"]) == 0
    assert capsys.readouterr().out.count("| smollm2-L") == 2
