"""`embrecipe run` and `plan` as a newcomer meets them: portable cards, nothing left behind by a failed run, plans
measured on the user's data (issue 21). Cheap: the synthetic trainer or a tiny random decoder."""

from __future__ import annotations

import json

import pytest

from embrecipe.cli import main
from embrecipe.laws import LawSet, ScalingLaw
from embrecipe.sweep.synthetic import toy_shape


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


def test_packaged_card_names_models_portably():
    """The shipped card holds no absolute paths: testbed names, with shapes and content hashes."""
    from embrecipe.planning.planner import default_card_path, family_from_laws, load_laws

    text = default_card_path().read_text()
    assert "/root/" not in text and "/.cache/" not in text
    laws = load_laws(None)
    assert [m["path"] for m in laws.family] == [f"smollm2-L{k}" for k in (2, 4, 8, 16, 30)]
    assert all(m.get("content_hash") and m["shape"]["name"] == m["path"] for m in laws.family)
    assert all(set(by_model) <= {m["path"] for m in laws.family} for by_model in laws.recipe.values())
    assert [m.path for m in family_from_laws(laws)] == [m["path"] for m in laws.family]


def test_old_card_with_absolute_testbed_paths_loads_with_portable_names(tmp_path):
    from embrecipe.planning.planner import default_card_path

    d = json.loads(default_card_path().read_text())
    old = "/home/someone/.cache/embrecipe/testbed/"
    for m in d["family"]:
        m["path"] = m["shape"]["name"] = old + m["name"]
    d["recipe"] = {v: {old + k: e for k, e in by_model.items()} for v, by_model in d["recipe"].items()}
    d["family_fingerprint"] = "0123456789abcdef"  # what the old formula (hashing the paths too) stored
    (tmp_path / "old.json").write_text(json.dumps(d))
    laws = LawSet.load(tmp_path / "old.json")
    assert [m["path"] for m in laws.family] == [f"smollm2-L{k}" for k in (2, 4, 8, 16, 30)]
    assert "smollm2-L4" in laws.recipe["full"]
    assert laws.family_fingerprint == LawSet.load(default_card_path()).family_fingerprint


def test_family_at_another_path_is_the_same_family_and_keeps_the_fitted_lr(tmp_path, capsys):
    """A family file naming the card's models at other paths (same content) matches the card: no fingerprint
    warning, and the LR is the one fitted for that model, not the nearest size's."""
    from embrecipe.planning.planner import load_laws

    laws = load_laws(None)
    members = [{"name": m["name"], "path": f"/data/models/{m['name']}-copy",
                "shape": {**m["shape"], "name": f"/data/models/{m['name']}-copy"}} for m in laws.family]
    fam = tmp_path / "family.json"
    fam.write_text(json.dumps({"name": "moved", "members": members}))
    assert main(["plan", "--budget", "3e13", "--family", str(fam), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert not any("family fingerprint" in w for w in p["warnings"])
    assert all("nearest" not in c["lr_note"] and c["lr"] is not None for c in p["candidates"])


def test_run_with_a_testbed_model_not_built_names_the_command_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBRECIPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["run", "--budget", "3e13", "--data", _pairs(tmp_path), "--out", str(out), "--eval", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embrecipe testbed models --layers" in err[0] and str(tmp_path / "home") in err[0]
    assert not out.exists()


def _tiny_card(tmp_path, **extra):
    """A hand-made card over a tiny random decoder that has a tokenizer (not a fitted card: it only has to
    make the planner choose), fitted on 'other data' with 20 tokens per pair and 28,712 pairs."""
    from embrecipe.models.family import shape_of_checkpoint
    from embrecipe.testing import make_tiny_decoder

    model = make_tiny_decoder(tmp_path / "m2", layers=2, hidden=32)
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 10.0, "alpha": 0.3, "B": 100.0, "beta": 0.4}
    laws = LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
                  family=[{"name": "m2", "path": str(model), "shape": shape_of_checkpoint(str(model)).to_dict()}],
                  tokens_per_pair=20.0, batch_size=8, unique_pairs=28712, data_fingerprint="0123456789abcdef",
                  provenance="hand-made test card", **extra)
    return str(laws.save(tmp_path / "tiny.json")), model


def test_plan_with_data_measures_it_and_says_the_card_was_fitted_on_other_data(tmp_path, capsys):
    pytest.importorskip("transformers")
    card, _ = _tiny_card(tmp_path)
    data = _pairs(tmp_path, 120)
    assert main(["plan", "--budget", "3e8", "--laws", card, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["plan", "--budget", "3e8", "--laws", card, "--data", data, "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["unique_pairs"] == 120 and before["unique_pairs"] == 28712
    assert before["tokens_per_pair"] == 20.0 and 30 < p["tokens_per_pair"] < 75  # tiny_pairs: ~48
    best = p["best"]
    assert best["steps"] == int(best["tokens"] // (p["tokens_per_pair"] * 8))
    assert best["epochs"] == pytest.approx(best["tokens"] / (120 * p["tokens_per_pair"]))
    other = [w for w in p["warnings"] if "fitted on other data" in w]
    assert len(other) == 1 and "not of yours" in other[0]
    # text output: the same, one line
    assert main(["plan", "--budget", "3e8", "--laws", card, "--data", data]) == 0
    assert capsys.readouterr().out.count("fitted on other data") == 1


@pytest.mark.slow
def test_run_plans_the_steps_the_trainer_runs_on_the_users_data(tmp_path, capsys):
    """The issue's case in small: the card's tokens per pair (49.5, the data's 21.6) made the plan say 7 steps where
    the trainer ran 17. Here the card says 20 and the data has ~48: planned with the card's, 2.4x too many steps;
    with --data measured, the planned steps are the trained ones."""
    pytest.importorskip("torch")
    card, _ = _tiny_card(tmp_path)
    data, out = _pairs(tmp_path, 120), tmp_path / "out"
    assert main(["run", "--budget", "3e8", "--laws", card, "--data", data, "--out", str(out), "--eval", "none",
                 "--max-seq-length", "75"]) == 0
    planned = json.loads((out / "plan.json").read_text())["best"]
    trained = json.loads((out / "run.json").read_text())
    steps = trained.get("steps") or trained["training"]["steps"]
    assert abs(planned["steps"] - steps) <= max(1, 0.1 * steps), (planned["steps"], steps)


def test_testbed_names_of_both_ladders_are_portable_and_name_their_build_command(tmp_path):
    """Cards and family files name testbed members of either ladder by name; a member that is not built is
    one line naming the one command that builds it (with --family for the Qwen ladder)."""
    from embrecipe.errors import InputError
    from embrecipe.models.refs import build_command, portable, resolve_model, testbed_layers

    assert portable("/home/u/.cache/embrecipe/testbed/qwen2.5-coder-0.5b-L4") == "qwen2.5-coder-0.5b-L4"
    assert portable("/root/.cache/embrecipe/testbed/smollm2-L8") == "smollm2-L8"
    assert testbed_layers("qwen2.5-coder-0.5b-L16") == 16 and testbed_layers("EleutherAI/pythia-70m") is None
    assert build_command("qwen2.5-coder-0.5b-L2") == "embrecipe testbed models --family qwen2.5-coder-0.5b --layers 2"
    assert build_command("smollm2-L2") == "embrecipe testbed models --layers 2"
    with pytest.raises(InputError, match=r"family qwen2\.5-coder-0\.5b --layers 2"):
        resolve_model("qwen2.5-coder-0.5b-L2", home=tmp_path)
