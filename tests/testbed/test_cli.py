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
