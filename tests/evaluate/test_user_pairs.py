"""Issue 21, item 5: `eval` on the user's own pairs, in every format `train` reads, without testbed provenance."""

import json

import pandas as pd
import pytest

from embrecipe import evaluate as ev
from embrecipe.errors import InputError
from embrecipe.testing import tiny_pairs


def _bge_jsonl(path, n=24):
    path.write_text("".join(json.dumps({"query": r["query"], "pos": [r["pos"]], "neg": []}) + "\n"
                            for r in tiny_pairs(n)))
    return path


def test_bge_pos_lists_csv_and_parquet_load_like_train(tmp_path):
    rows = tiny_pairs(24)
    jsonl = ev.load_split(pairs=_bge_jsonl(tmp_path / "p.jsonl"))
    csv_path = tmp_path / "p.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    parquet = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    expected = [{"query": r["query"], "pos": r["pos"]} for r in rows]
    assert jsonl == ev.load_split(pairs=csv_path) == ev.load_split(pairs=parquet) == expected


def test_a_multi_positive_list_is_the_loaders_one_line_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["a", "b"]}) + "\n")
    with pytest.raises(InputError, match=rf"{path}:1: 'pos' holds 2 texts"):
        ev.load_split(pairs=path)


def test_default_local_tasks_need_no_provenance_on_user_pairs(tiny_models, tmp_path, capsys):
    from embrecipe.cli import main

    pairs = _bge_jsonl(tmp_path / "mine.jsonl")
    assert main(["eval", "--model", tiny_models["llama"], "--pairs", str(pairs), "--batch-size", "8",
                 "--out", str(tmp_path / "ev")]) == 0
    record = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(record["tasks"]) == {"LocalDocRetrieval"} and record["num_pairs"] == 24
    assert 0 < record["heldout_loss"] < 100


def test_testbed_pairs_keep_their_provenance_and_relatedness_task():
    rows = ev.load_split("test", limit=40)
    assert ev.tasks.has_provenance(rows)
    names = [t.metadata.name for t in ev.resolve_tasks("local", rows)]
    assert names == ["LocalDocRetrieval", "LocalDocRelatedness"]
    with pytest.raises(InputError, match="provenance"):
        ev.resolve_tasks("LocalDocRelatedness", [{"query": "a", "pos": "b"}] * 8)
