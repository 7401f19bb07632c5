"""The one JSON/YAML file reader (law cards, family files, grids) and the one family fingerprint."""

from __future__ import annotations

import pytest

from embrecipe.errors import InputError
from embrecipe.jsonio import read_mapping, write_text_atomic


def test_read_mapping_reads_json_and_yaml_and_names_file_and_line(tmp_path):
    write_text_atomic(tmp_path / "a.json", '{"a": 1}')
    write_text_atomic(tmp_path / "a.yaml", "a: 1\n")
    assert read_mapping(tmp_path / "a.json", "law card") == read_mapping(tmp_path / "a.yaml", "law card") == {"a": 1}
    assert not list(tmp_path.glob("*.tmp"))

    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(InputError, match=r"^law card .*bad\.json:2: not valid JSON") as err:
        read_mapping(tmp_path / "bad.json", "law card")
    assert "\n" not in str(err.value)
    (tmp_path / "bad.yaml").write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(InputError, match=r"^family file .*bad\.yaml:\d+: not valid YAML") as err:
        read_mapping(tmp_path / "bad.yaml", "family file")
    assert "\n" not in str(err.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="does not hold a mapping"):
        read_mapping(tmp_path / "list.json", "law card")
    with pytest.raises(InputError, match=r"grid file .*missing\.yaml does not exist"):
        read_mapping(tmp_path / "missing.yaml", "grid file")
    # A grid is YAML whatever its name.
    (tmp_path / "grid.txt").write_text("models: [a]\n")
    assert read_mapping(tmp_path / "grid.txt", "grid file", yaml_always=True) == {"models": ["a"]}


def test_family_fingerprint_is_the_one_the_packaged_card_stores(tmp_path):
    from embrecipe.models.family import Family
    from embrecipe.planning.planner import family_from_laws, load_laws

    card = load_laws(None)
    family = Family(name="study", members=family_from_laws(card))
    assert family.fingerprint() == card.family_fingerprint
    family.save(tmp_path / "fam.json")
    assert Family.load(tmp_path / "fam.json").fingerprint() == card.family_fingerprint
