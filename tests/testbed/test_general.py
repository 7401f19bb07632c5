"""The shipped general-purpose sample: small, balanced, split by source, reproducible from the corpus."""

import hashlib
import json

import pytest

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.testbed import general
from embrecipe.testbed.pairs import read_pairs


def _rows(split):
    return read_pairs(general.general_pairs_path(split))


def test_shipped_files_match_their_provenance_and_are_small():
    prov = json.loads((general.shipped_dir() / "PROVENANCE.json").read_text())
    total = 0
    for split in general.SPLITS:
        path = general.general_pairs_path(split)
        meta = prov["files"][path.name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
        assert len(_rows(split)) == meta["pairs"] == 4 * general.PER_SOURCE[split]
        total += path.stat().st_size
    assert total < 4e6  # "a few MB at most"
    assert prov["corpus"]["content_hash"] == json.loads(
        (general.shipped_dir().parent / "corpus" / "embrecipe-corpus-v1.json").read_text())["content_hash"]


@pytest.mark.parametrize("split", general.SPLITS)
def test_every_split_has_the_four_sources_in_equal_parts(split):
    counts = {}
    for r in _rows(split):
        counts[r["source"]["corpus_source"]] = counts.get(r["source"]["corpus_source"], 0) + 1
    assert counts == {s: general.PER_SOURCE[split] for s in general.SOURCES}


def _unit(row):
    """The unit the corpus splits by: a Bible book or a conversation (recorded as the row's module), a
    headword's first letter, or a docstring package."""
    s = row["source"]
    src = s["corpus_source"]
    if src == "dictionary":
        return src, s["object"][:1].lower()
    return src, s["package"] if src == "docstrings" else s["module"]


def test_held_out_sources_and_texts_are_never_in_training():
    train = _rows("train")
    train_units = {_unit(r) for r in train}
    train_texts = {t.lower() for r in train for t in (r["query"], r["pos"])}
    for split in ("validation", "test"):
        rows = _rows(split)
        assert not {_unit(r) for r in rows} & train_units, split
        assert not {t.lower() for r in rows for t in (r["query"], r["pos"])} & train_texts, split


def test_sampling_is_even_and_keeps_source_order():
    rows = [{"query": f"q{i}", "pos": f"p{i}", "source": {"corpus_source": src}}
            for src in ("dictionary", "bible", "readme", "chitchat", "docstrings") for i in range(10)]
    out = general.sample_rows(rows, 2)
    assert [r["source"]["corpus_source"] for r in out] == ["bible"] * 2 + ["chitchat"] * 2 + [
        "dictionary"] * 2 + ["docstrings"] * 2
    assert [r["query"] for r in out[:2]] == ["q0", "q5"]
    with pytest.raises(EmbrecipeError, match="no 'bible' rows"):
        general.sample_rows(rows[:10], 2)


def test_unknown_split_is_refused():
    with pytest.raises(InputError, match="unknown split 'dev'"):
        general.general_pairs_path("dev")


def test_general_retrieval_is_built_from_the_prose_rows_only():
    from embrecipe.evaluate.tasks import general_retrieval_task, tasks_for

    rows = _rows("test")
    task = general_retrieval_task(rows[:: 10])
    prose = [r for r in rows[:: 10] if r["source"]["corpus_source"] != "docstrings"]
    assert task.metadata.name == "GeneralRetrieval"
    assert len(task.metadata.description) > 0 and len(prose) == 150
    with pytest.raises(InputError, match="GeneralRetrieval needs held-out rows"):
        tasks_for("GeneralRetrieval", [r for r in rows if r["source"]["corpus_source"] == "docstrings"])


def _built_corpus():
    from embrecipe.testbed import corpus

    d = corpus.corpus_dir(None)
    return d if (d / "PROVENANCE.json").is_file() else None


@pytest.mark.skipif(_built_corpus() is None, reason="the corpus is not built here (embrecipe testbed corpus)")
def test_rebuilding_from_the_corpus_reproduces_the_shipped_files(tmp_path):
    prov = general.write_sample(_built_corpus(), tmp_path)
    shipped = json.loads((general.shipped_dir() / "PROVENANCE.json").read_text())
    if prov["corpus"]["content_hash"] != shipped["corpus"]["content_hash"]:
        pytest.skip("the corpus built here differs from the reference build")
    assert prov["files"] == shipped["files"]


def test_demo_trains_on_the_general_sample_by_default_and_reports_both_domains():
    import argparse

    from embrecipe.cli import demo

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    assert args.data == "general" and args.general_eval_pairs > 0
    row = {"model": "trained: x", "heldout_loss": 5.0,
           "tasks": {"LocalDocRetrieval": {"main_score": 0.25}, "LocalDocRelatedness": {"main_score": 0.2}},
           "general": {"heldout_loss": 4.0, "tasks": {"GeneralRetrieval": {"main_score": 0.5}}}}
    table = demo.demo_table([row])
    assert "GeneralRetrieval (nDCG@10)" in table.splitlines()[0]
    assert table.splitlines()[2] == "| trained: x | 5.0000 | 0.2500 | 0.2000 | 4.0000 | 0.5000 |"
