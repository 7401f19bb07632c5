"""Issue 21, item 10: the model card names its base model portably; building one more ladder member keeps the
members built earlier in the family file."""

from pathlib import Path

from embrecipe.testbed import models as tm
from embrecipe.training.model_card import card_facts, portable_name


def test_portable_name_keeps_hub_ids_and_drops_local_directories(tmp_path):
    member = tmp_path / "testbed" / "smollm2-L4"
    member.mkdir(parents=True)
    assert portable_name(str(member)) == "smollm2-L4"
    assert portable_name("/root/.cache/embrecipe/testbed/smollm2-L8/") == "smollm2-L8"
    assert portable_name("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert portable_name(None) is None


def test_exported_card_holds_no_local_path(tiny_models, tiny_pairs_file, tmp_path):
    from embrecipe.training.config import TrainConfig
    from embrecipe.training.trainer import train

    out = tmp_path / "model"
    record = train(TrainConfig(model=tiny_models["llama"], data=tiny_pairs_file, max_steps=1, batch_size=16,
                               progress=False, out=str(out), report_to="none"))
    facts = card_facts(record)
    assert facts["base model"] == Path(tiny_models["llama"]).name
    readme = (out / "README.md").read_text()
    assert tiny_models["llama"] not in readme and str(Path(tiny_pairs_file).parent) not in readme


def test_building_one_more_member_keeps_the_earlier_ones(tmp_path, monkeypatch):
    home = tmp_path / "home"
    root = tm.testbed_home(home)
    for k in (2, 8, 30):  # built earlier
        (root / tm.member_name(k)).mkdir(parents=True)
    (root / tm.member_name(16)).mkdir()  # a broken leftover: not verified, not listed

    def fake_ensure(k, home_arg, force=False):
        (root / tm.member_name(k)).mkdir(parents=True, exist_ok=True)
        return root / tm.member_name(k)

    written = {}
    monkeypatch.setattr(tm, "ensure_model", fake_ensure)
    monkeypatch.setattr(tm, "verify", lambda d, layers=None: Path(d).name != tm.member_name(16))
    monkeypatch.setattr(tm, "write_family", lambda dirs, out: written.setdefault("dirs", [Path(d) for d in dirs]))
    tm.build_ladder([4], home)
    assert [d.name for d in written["dirs"]] == ["smollm2-L2", "smollm2-L4", "smollm2-L8", "smollm2-L30"]
