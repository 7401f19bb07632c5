import json
import os

from embrecipe.cli import main


def test_testbed_models_reuses_a_verified_member_and_writes_the_family(smollm_home, smollm_l2, capsys):
    before = os.stat(smollm_l2 / "model.safetensors").st_mtime_ns
    assert main(["testbed", "models", "--layers", "2", "--home", str(smollm_home)]) == 0
    out = capsys.readouterr().out
    assert "smollm2-L2" in out and "N=    7.08M" in out
    assert os.stat(smollm_l2 / "model.safetensors").st_mtime_ns == before  # reused, not rebuilt
    family = json.loads((smollm_l2.parent / "smollm2-family.json").read_text())
    assert [m["name"] for m in family["members"]] == ["smollm2-L2"]


def test_testbed_models_rejects_bad_layers(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["testbed", "models", "--layers", "two"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_testbed_pairs_cli(tmp_path, capsys):
    assert main(["testbed", "pairs", "--out", str(tmp_path), "--packages", "tqdm,not-installed-xyz"]) == 0
    out = capsys.readouterr().out
    assert "not installed (skipped): not-installed-xyz" in out
    prov = json.loads((tmp_path / "PROVENANCE.json").read_text())
    assert prov["packages"]["tqdm"]["split"] == "test" and prov["counts"]["test"] > 0


def test_demo_runs_end_to_end_on_a_tiny_budget(smollm_home, tmp_path, monkeypatch, capsys):
    """`embrecipe demo`, the README's first command: testbed model → budgeted training → raw vs trained
    evaluation, here at a tiny budget, batch and evaluation set (the default job is the same code at 6e12)."""
    monkeypatch.setenv("EMBRECIPE_HOME", str(smollm_home))
    out = tmp_path / "demo"
    argv = ["demo", "--budget", "1e11", "--batch-size", "8", "--eval-pairs", "16", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/3] testbed model" in printed and "[3/3] evaluating raw vs trained on 16" in printed
    result = json.loads((out / "demo.json").read_text())
    train = result["train"]
    assert train["status"] == "completed" and train["steps"] >= 2
    assert 0 < train["model_flops"] <= 1e11  # the budget is never exceeded
    assert train["final_val_loss"] is not None
    assert [row["model"].split(":")[0] for row in result["eval"]] == ["raw", "trained"]
    trained = out / "smollm2-L2-full-1e+11-general"
    assert (trained / "run.json").is_file() and (trained / "config_sentence_transformers.json").is_file()
    # a second call reuses the finished run instead of training again
    assert main(argv) == 0
    assert "finished run found; reusing it" in capsys.readouterr().out
