import json

import pytest

from embrecipe.data.pairs import load_pairs
from embrecipe.errors import InputError


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_jsonl_bge_format(tmp_path):
    p = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in [
        {"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"]},
        {"query": "q2", "pos": "p2", "neg": ["n3", "n4"]},
    ]) + "\n\n")
    d = load_pairs(p)
    assert d.queries == ["q1", "q2"] and d.positives == ["p1", "p2"]
    assert d.num_negatives == 2 and d.columns(1)[2] == ["n1", "n3"]


def test_csv_tsv_parquet_anchor_positive(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"anchor": ["a", "b"], "positive": ["x", "y"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.tsv", "d.parquet"):
        d = load_pairs(tmp_path / name)
        assert d.queries == ["a", "b"] and d.positives == ["x", "y"]


def test_datasets_directory(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"query": ["a"], "pos": ["b"]})}).save_to_disk(
        str(tmp_path / "ds"))
    assert load_pairs(tmp_path / "ds").positives == ["b"]


@pytest.mark.parametrize("text, message", [
    ('{"query": "a", "pos": "b"}\n{"query": "a"\n', r"d.jsonl:2: invalid JSON"),
    ('{"query": "a", "pos": "b"}\n{"query": "", "pos": "b"}\n', r"d.jsonl:2: 'query' is empty"),
    ('{"query": "a", "pos": 3}\n', r"d.jsonl:1: 'pos' must be a string"),
    ('{"query": "a", "pos": []}\n', r"d.jsonl:1: 'pos' is an empty list"),
    ('{"query": "a", "pos": "b"}\n{"query": "a", "pos": ["b", "c"]}\n', r"d.jsonl:2: 'pos' holds 2 texts"),
    ('{"query": "a", "pos": "b"}\n{"query": "c"}\n', r"d.jsonl:2: missing 'pos'"),
    ('[1, 2]\n', r"d.jsonl:1: expected a JSON object"),
    ('{"query": "a", "pos": "b", "neg": [1]}\n', r"d.jsonl:1: 'neg' must be a list"),
    ('', r"no rows"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, text, message):
    p = _write(tmp_path, "d.jsonl", text)
    with pytest.raises(InputError, match=message):
        load_pairs(p)


def test_csv_error_line_counts_header(tmp_path):
    p = _write(tmp_path, "d.csv", "query,pos\na,b\nc,\n")
    with pytest.raises(InputError, match=r"d.csv:3: 'pos'"):
        load_pairs(p)


def test_wrong_columns_and_formats(tmp_path):
    p = _write(tmp_path, "d.jsonl", '{"text": "a"}\n')
    with pytest.raises(InputError, match="no query column"):
        load_pairs(p)
    with pytest.raises(InputError, match="no column 'q'"):
        load_pairs(_write(tmp_path, "e.jsonl", '{"query": "a", "pos": "b"}\n'), query_column="q")
    with pytest.raises(InputError, match="unknown format"):
        load_pairs(_write(tmp_path, "d.txt", "x"))
    with pytest.raises(InputError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")


def test_split_and_fingerprint(tiny_pair_data):
    train, val = tiny_pair_data.split_off(0.25, seed=1)
    assert len(train) + len(val) == len(tiny_pair_data) and len(val) == 24
    assert not set(train.queries) & set(val.queries)
    assert tiny_pair_data.fingerprint() == tiny_pair_data.subset(range(len(tiny_pair_data))).fingerprint()
    assert train.fingerprint() != tiny_pair_data.fingerprint()


def test_too_many_hard_negatives(tiny_pair_data):
    with pytest.raises(InputError, match="hard negatives"):
        tiny_pair_data.columns(1)


def test_duplicate_fraction():
    from embrecipe.data.pairs import PairData, duplicate_fraction

    assert duplicate_fraction(PairData(["a", "b", "c"], ["x", "y", "z"])) == 0.0
    assert duplicate_fraction(PairData(["a", "a", "a", "b"], ["x", "x", "y", "x"])) == 0.25
    assert duplicate_fraction(PairData(["q"] * 10, ["d"] * 10)) == 0.9


def test_tokens_per_pair_and_model_shape_resolve_a_testbed_name_under_embrecipe_home(tmp_path, monkeypatch,
                                                                                  tiny_pairs_file):
    """A grid may name a testbed member (``smollm2-L2``): the sweep's token estimate and shape must load it from
    $EMBRECIPE_HOME/testbed, not ask the Hub for a repo of that name."""
    from embrecipe.data.pairs import estimate_tokens_per_pair
    from embrecipe.models.family import shape_of_checkpoint
    from embrecipe.models.refs import MANIFEST
    from embrecipe.testing import make_tiny_decoder

    member = tmp_path / "home" / "testbed" / "smollm2-L2"
    make_tiny_decoder(member, "llama", layers=2)
    files = sorted(p.name for p in member.iterdir())
    (member / MANIFEST).write_text(json.dumps({"layers": 2, "files": files}))
    monkeypatch.setenv("EMBRECIPE_HOME", str(tmp_path / "home"))
    by_name = estimate_tokens_per_pair(tiny_pairs_file, "smollm2-L2", max_seq_length=32)
    assert by_name == estimate_tokens_per_pair(tiny_pairs_file, str(member), max_seq_length=32) > 0
    assert shape_of_checkpoint("smollm2-L2").num_blocks == 2
    monkeypatch.setenv("EMBRECIPE_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match="embrecipe testbed models --layers 2"):
        shape_of_checkpoint("smollm2-L2")
