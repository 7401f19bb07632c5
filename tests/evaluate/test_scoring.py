import json
import os
import time

import pytest

from embrecipe import evaluate as ev
from embrecipe.errors import EmbrecipeError, InputError


@pytest.fixture(scope="module")
def tiny_st(tiny_models):
    return ev.load_model(tiny_models["llama"])


def test_local_tasks_run_end_to_end_and_store_results(tiny_models, tmp_path):
    record = ev.evaluate(tiny_models["llama"], limit=48, batch_size=16, out=tmp_path)
    assert record["num_pairs"] == 48 and record["heldout_batch_size"] == 16
    assert 0 < record["heldout_loss"] < 100
    assert set(record["tasks"]) == {"LocalDocRetrieval", "LocalDocRelatedness"}
    retrieval = record["tasks"]["LocalDocRetrieval"]
    assert retrieval["metric"] == "ndcg_at_10" and 0 <= retrieval["main_score"] <= 1
    assert retrieval["main_score"] == retrieval["scores"]["ndcg_at_10"]
    assert -1 <= record["tasks"]["LocalDocRelatedness"]["main_score"] <= 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["tasks"] == record["tasks"]
    mteb_files = {p.name for p in (tmp_path / "mteb").rglob("*.json")}
    assert {"LocalDocRetrieval.json", "LocalDocRelatedness.json"} <= mteb_files
    table = ev.format_table(record)
    assert "LocalDocRetrieval (ndcg_at_10)" in table and f"{record['heldout_loss']:.4f}" in table


def _write_retrieval_dir(d, docs):
    d.mkdir()
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(docs))))
    return d


def test_user_retrieval_folder_is_wired_by_id(tiny_st, tmp_path):
    docs = ["open a file and read every line", "the learning rate warms up linearly",
            "split the data by source package", "a contrastive loss pulls pairs together",
            "compute the mean of the token embeddings", "return the sum of two arrays"]
    task = ev.retrieval_task_from_dir(_write_retrieval_dir(tmp_path / "beir", docs), name="Ident")
    # Each query is its document's exact text, so a correctly wired task scores a perfect nDCG@10.
    scores = ev.run_mteb(tiny_st, [task])
    assert scores["Ident"]["main_score"] == pytest.approx(1.0)


def test_user_sts_file_runs(tiny_st, tmp_path):
    path = tmp_path / "sts.tsv"
    rows = [("a cat sits on the mat", "a cat sits on the mat", 5), ("open the file", "open the file now", 4),
            ("the sum of arrays", "a learning rate schedule", 0), ("split by package", "split by source", 3)]
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    task = ev.sts_task_from_file(path, name="TinySTS")
    scores = ev.run_mteb(tiny_st, [task])
    assert -1 <= scores["TinySTS"]["main_score"] <= 1 and scores["TinySTS"]["metric"] == "cosine_spearman"


def test_bad_user_files_name_file_and_line(tmp_path):
    bad = tmp_path / "sts.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "score": 2}\n')
    with pytest.raises(InputError, match=r"sts.jsonl:2"):
        ev.sts_task_from_file(bad)
    d = tmp_path / "beir"
    d.mkdir()
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (d / "qrels.tsv").write_text("q1\td9\t1\n")
    with pytest.raises(InputError, match="unknown document ids"):
        ev.retrieval_task_from_dir(d)


def test_relatedness_task_is_graded_by_provenance():
    rows = ev.load_split("test", limit=400)
    task = ev.doc_relatedness_task(rows, per_level=40)
    task.load_data()
    data = task.dataset["test"]
    levels = sorted(set(data["score"]))
    assert levels == [0.0, 1.0, 2.0, 3.0]
    assert all(data["score"].count(lv) == 40 for lv in levels)
    pos = {r["query"]: r["pos"] for r in rows}
    same = [(a, b) for a, b, s in zip(data["sentence1"], data["sentence2"], data["score"], strict=True) if s == 3]
    assert all(pos[a] == b for a, b in same)


def test_paper_tasks_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(ev.PAPER_TASKS) == 15
    start = time.monotonic()
    with pytest.raises(EmbrecipeError, match="Hugging Face Hub") as err:
        ev.resolve_tasks("paper15", None)
    assert time.monotonic() - start < 5
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("endpoint", [
    "http://10.255.255.1:9",  # unroutable: the connect hangs (or a sandbox proxy answers 404)
    "http://hub.invalid",  # no DNS answer
])
def test_hub_probe_gives_up_quickly(monkeypatch, endpoint):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    assert ev.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 3


def test_hub_probe_accepts_a_real_http_answer(monkeypatch):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert ev.hub_reachable(timeout=2.0) is True
    finally:
        server.shutdown()


def test_unknown_mteb_task_is_a_user_error(monkeypatch):
    monkeypatch.setattr(ev.tasks, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(InputError, match=r"unknown MTEB task.*NoSuchTaskXYZ"):
        ev.resolve_tasks("NoSuchTaskXYZ", None)


def test_eval_cli(tiny_models, tmp_path, capsys):
    from embrecipe.cli import main

    assert main(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert main(["eval", "--model", tiny_models["llama"], "--tasks", "paper15"]) == 2
    assert "not reachable" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["eval", "--model", tiny_models["llama"], "--limit", "24", "--batch-size", "8",
                 "--tasks", "LocalDocRetrieval", "--out", str(out)]) == 0
    assert "LocalDocRetrieval (ndcg_at_10)" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["num_pairs"] == 24


def test_paper15_preset_names_real_mteb_tasks_in_english(monkeypatch):
    monkeypatch.setattr(ev.tasks, "hub_reachable", lambda timeout=3.0: True)
    tasks = ev.resolve_tasks("paper15", None)  # metadata only: nothing is downloaded
    assert [t.metadata.name for t in tasks] == list(ev.PAPER_TASKS)
    sts22 = next(t for t in tasks if t.metadata.name == "STS22")
    assert sts22.hf_subsets == ["en"]


def test_limit_keeps_evenly_spaced_pairs_as_the_help_says():
    from embrecipe.cli import build_parser

    full, sub = ev.load_split("test"), ev.load_split("test", limit=10)
    assert sub == [full[i * len(full) // 10] for i in range(10)] != full[:10]
    sub_parsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("eval", "testbed"):
        parser = sub_parsers[command]
        if command == "testbed":
            parser = next(a for a in parser._actions if a.dest and a.choices).choices["baselines"]
        limit_help = next(a.help for a in parser._actions if a.dest == "limit")
        assert "evenly spaced" in limit_help and "first" not in limit_help
