"""`embrecipe run` and `plan` as a newcomer meets them: portable cards, nothing left behind by a failed run, plans
measured on the user's data (issue 21). Cheap: the synthetic trainer or a tiny random decoder."""

from __future__ import annotations

import json

import pytest

from embrecipe.cli import main
from embrecipe.laws import LawSet, ScalingLaw
from embrecipe.synthetic import toy_shape


def _card(tmp_path, path: str, name: str = "card.json", **extra) -> str:
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 10.0, "alpha": 0.3, "B": 100.0, "beta": 0.4}
    laws = LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
                  family=[{"name": "m2", "path": path, "shape": toy_shape(32, 2).to_dict()}],
                  tokens_per_pair=40.0, batch_size=8, provenance="hand-made test card", **extra)
    return str(laws.save(tmp_path / name))


def _pairs(tmp_path, n: int = 200) -> str:
    from embrecipe.testing import tiny_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(n)))
    return str(data)


def test_failed_run_leaves_nothing_in_out_and_the_rerun_advice_names_run_flags(tmp_path, capsys):
    """A run whose training fails (here: the planned model is missing) writes no plan.json; a refused --out names
    --overwrite / --resume, which `run` accepts."""
    pytest.importorskip("torch")
    card, data, out = _card(tmp_path, str(tmp_path / "no-such-model")), _pairs(tmp_path), tmp_path / "out"
    argv = ["run", "--budget", "3e8", "--laws", card, "--data", data, "--out", str(out), "--eval", "none"]
    assert main(argv) == 2
    assert not (out / "plan.json").exists()
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    # the synthetic trainer knows toy models by name
    argv[argv.index(card)] = _card(tmp_path, "toy-h32-l2", "toy.json")
    assert main([*argv, "--train-fn", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and not (out / "plan.json").exists()
    # the advice is a flag `run` has: it trains into the folder (keeping the user's file) and writes the plan
    assert main([*argv, "--train-fn", "synthetic", "--overwrite"]) == 0
    assert json.loads((out / "plan.json").read_text())["best"]["path"] == "toy-h32-l2"
    assert (out / "notes.txt").read_text() == "mine"
