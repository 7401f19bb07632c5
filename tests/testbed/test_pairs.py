import gzip
import importlib.metadata
import json
import shutil

import pytest

from embrecipe.errors import InputError
from embrecipe.testbed import pairs as tp


@pytest.fixture(scope="module")
def shipped():
    return {s: tp.read_pairs(tp.testbed_pairs_path(s)) for s in tp.SPLITS}


@pytest.fixture(scope="module")
def provenance():
    return json.loads((tp.shipped_dir() / "PROVENANCE.json").read_text())


def test_shipped_files_match_provenance_checksums(provenance):
    assert tp.verify_shipped() == []
    assert set(provenance["files"]) == {f"{s}.jsonl.gz" for s in tp.SPLITS}


def test_checksum_check_catches_a_changed_file(tmp_path):
    copy = tmp_path / "pairs"
    shutil.copytree(tp.shipped_dir(), copy)
    with gzip.open(copy / "test.jsonl.gz", "at") as f:
        f.write('{"query": "x", "pos": "y"}\n')
    problems = tp.verify_shipped(copy)
    assert len(problems) == 1 and "test.jsonl.gz" in problems[0]


def test_size_counts_and_provenance_per_pair(shipped, provenance):
    counts = {s: len(rows) for s, rows in shipped.items()}
    assert sum(counts.values()) >= 30_000
    assert counts == provenance["counts"]
    assert min(counts.values()) >= 2_000  # held-out splits large enough for 1024-pair batches
    for rows in shipped.values():
        for r in rows[:: max(1, len(rows) // 500)]:
            src = r["source"]
            assert set(src) == {"package", "version", "module", "object", "kind"}
            assert src["version"] == provenance["packages"][src["package"]]["version"]
            assert src["kind"] in ("summary-body", "name-summary")
            assert 0 < len(r["query"]) <= tp.MAX_CHARS + 2 and 0 < len(r["pos"]) <= tp.MAX_CHARS + 2


def test_splits_are_disjoint_by_source_package(shipped):
    packages = {s: {r["source"]["package"] for r in rows} for s, rows in shipped.items()}
    assert not packages["train"] & packages["validation"]
    assert not packages["train"] & packages["test"]
    assert not packages["validation"] & packages["test"]
    for split, pkgs in packages.items():
        assert all(tp.split_of(p) == split for p in pkgs)


def test_no_text_is_repeated_anywhere(shipped):
    texts = [t for rows in shipped.values() for r in rows for t in (r["query"], r["pos"])]
    assert len(texts) == len(set(texts))


def test_rebuild_is_deterministic_and_reproduces_the_shipped_pairs(shipped, provenance):
    # mteb is processed first in a full build, so its pairs do not depend on the other packages.
    version = importlib.metadata.version("mteb")
    first, prov = tp.build_pairs(["mteb"])
    second, _ = tp.build_pairs(["mteb"])
    assert tp._gzip_jsonl(first["test"]) == tp._gzip_jsonl(second["test"])
    assert prov["counts"]["test"] > 100
    if version != provenance["packages"]["mteb"]["version"]:
        pytest.skip(f"installed mteb {version} differs from the shipped build's")
    shipped_mteb = [r for r in shipped["test"] if r["source"]["package"] == "mteb"]
    assert [json.loads(p.to_json()) for p in first["test"]] == shipped_mteb


def test_write_pairs_writes_gzip_jsonl_and_provenance(tmp_path):
    prov = tp.write_pairs(tmp_path, ["tqdm", "PyYAML", "not-a-real-distribution"])
    assert prov["missing_packages"] == ["not-a-real-distribution"]
    assert prov["counts"]["test"] > 0 and prov["counts"]["validation"] > 0  # tqdm → test, PyYAML → validation
    assert tp.verify_shipped(tmp_path) == []
    rows = tp.read_pairs(tmp_path / "test.jsonl.gz")
    assert {r["source"]["package"] for r in rows} == {"tqdm"}


def test_docstring_splitting_strips_rest_and_stops_at_sections():
    doc = (
        "Compute the :func:`mean <numpy.mean>` of ``x`` along an axis.\n\n"
        "The mean is taken over the flattened array by default, and the result is a new array whose\n"
        "shape is the input shape without the reduced axis.\n\n"
        "Parameters\n----------\nx : array\n    The input.\n"
    )
    summary, body = tp._split_doc(doc)
    assert summary == "Compute the mean of x along an axis."
    assert body.startswith("The mean is taken") and "Parameters" not in body and "input." not in body
    summary, body = tp._split_doc("Return the value.\nArgs:\n    x: the thing\n")
    assert summary == "Return the value." and body == ""
    # The introduction to a code block that was cut off is dropped with it.
    _, body = tp._split_doc("Do it.\n\nThe values are scaled first. The following example shows how::\n\n    f(1)\n")
    assert body == "The values are scaled first."


@pytest.mark.parametrize("text, ok", [
    ("Return the sum of the two arrays.", True),
    ("foo(a, b=1) -> int", False),                       # a signature line, not prose
    ("Auto-generated file, do not edit by hand.", False),
    ("Short one", False),
    ("Berechnet die Summe über alle Einträge des Arrays.", False),
    ("x = np.zeros((3, 4)); y = x[:, 1:] ** 2 + 1", False),
])
def test_summary_filter(text, ok):
    assert tp._good_summary(text) is ok


def test_unknown_split_is_a_user_error():
    with pytest.raises(InputError, match="unknown split"):
        tp.testbed_pairs_path("dev")
