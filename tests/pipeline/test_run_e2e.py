"""`embrecipe run` end to end with the REAL trainer on a tiny random decoder (slow: ~30-60 s on 2 cores).

The law card here is hand-made for the test (not a fitted or shipped card): it only has to make the planner
choose something, so that planning → budget-exact training → store → fit-ready record is exercised."""

from __future__ import annotations

import json

import pytest

from embrecipe.cli import main
from embrecipe.laws import LawSet, ScalingLaw, run_point
from embrecipe.runs.store import RunStore

pytestmark = pytest.mark.slow


def test_run_with_real_trainer(tmp_path, capsys):
    pytest.importorskip("torch")
    from embrecipe.models.family import shape_of_checkpoint
    from embrecipe.testing import make_tiny_decoder, tiny_pairs

    model = make_tiny_decoder(tmp_path / "m2", layers=2, hidden=32)
    shape = shape_of_checkpoint(str(model))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(200)))
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 10.0, "alpha": 0.3, "B": 100.0, "beta": 0.4}
    laws = LawSet(laws={"lora-r4": law}, methods={"lora-r4": {"name": "lora", "rank": 4}},
                  family=[{"name": "m2", "path": str(model), "shape": shape.to_dict()}],
                  tokens_per_pair=40.0, batch_size=8, provenance="hand-made test card",
                  recipe={"lora-r4": {str(model): {"lr": 2e-3, "batch_size": 8}}})
    card = laws.save(tmp_path / "card.json")
    store = tmp_path / "runs.sqlite"
    rc = main(["run", "--budget", "3e8", "--laws", str(card), "--data", str(data), "--out", str(tmp_path / "out"),
               "--val-fraction", "0.25", "--max-seq-length", "32", "--store", str(store), "--eval", "none"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "lora-r4 on m2" in out and "held-out loss" in out
    assert "training at the card's lr 0.002" in out
    (rec,) = RunStore(store).records()
    assert rec.lr == 2e-3 and rec.batch_size == 8  # trained at exactly the card's LR and batch size
    assert rec.model_flops <= 3e8 and rec.steps >= 1
    p = run_point(rec)  # the record is ready for fitting
    assert p.variant == "lora-r4" and p.N == shape.non_embedding_params and p.loss > 0
    assert (tmp_path / "out" / "plan.json").is_file()
    # run into the same folder again: refused before planning writes or training starts (nothing is mixed in)
    again = ["run", "--budget", "3e8", "--laws", str(card), "--data", str(data), "--out", str(tmp_path / "out"),
             "--val-fraction", "0.25", "--max-seq-length", "32", "--eval", "none"]
    assert main(again) == 2
    assert "already holds a finished run (run.json)" in capsys.readouterr().err
