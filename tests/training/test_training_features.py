"""Issue 15 features on the tiny models: tracking, Hub push + model card, prompts, last-token pooling with EOS,
hard-negative mining, and the FLOP meter's count of prompt and negative tokens."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from embrecipe.cli import main
from embrecipe.training.batching import Batches
from embrecipe.training.trainer import TrainConfig, train, train_until_stopped


def _cfg(model, data, **kw):
    base = dict(model=model, data=data, budget=4e8, batch_size=16, progress=False, seed=0, report_to="none")
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------- tracking
def test_tensorboard_logs_loss_vs_step_and_vs_flops(tiny_models, tiny_pair_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from embrecipe.training.tracking import flops_step

    out = tmp_path / "tb"
    rec = train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(out), report_to="tensorboard",
                     val_fraction=0.2))
    assert rec.details["tracking"] == {"backends": ["tensorboard"], "log_dir": str(out / "runs")}
    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/model_flops", "train/tokens_per_s", "train/model_flops_per_s",
            "train/loss_vs_mflops", "eval/loss"} <= tags
    by_step = acc.Scalars("train/loss")
    assert [e.step for e in by_step] == list(range(1, rec.steps + 1))
    # the same losses the record's FLOP-indexed curve holds, once keyed on steps and once on FLOPs
    curve = rec.loss_curve
    assert [e.value for e in by_step] == pytest.approx([loss for _, loss in curve], rel=1e-5)
    by_flops = acc.Scalars("train/loss_vs_mflops")
    assert [e.step for e in by_flops] == [flops_step(f) for f, _ in curve]
    assert acc.Scalars("train/model_flops")[-1].value == pytest.approx(rec.model_flops, rel=1e-6)  # float32
    lrs = [e.value for e in acc.Scalars("train/lr")]
    # the LR each step used (set from the FLOPs spent), as the record has it; warm-up, then decay
    assert lrs == pytest.approx(rec.details["step_lrs"], rel=1e-5)
    assert max(lrs) <= rec.lr * (1 + 1e-6) and lrs[-1] < 0.5 * max(lrs)
    assert acc.Scalars("eval/loss")[-1].value == pytest.approx(rec.final_val_loss, rel=1e-5)


def test_report_to_resolution_and_errors(monkeypatch):
    from embrecipe.training import tracking
    from embrecipe.training.tracking import TrackingError, resolve_report_to

    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow", "trackio") else real_find_spec(name, *a))
    for name in ("wandb", "mlflow", "trackio"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert resolve_report_to("none") == []
    assert resolve_report_to("auto") == ["tensorboard"]
    assert resolve_report_to(None) == ["tensorboard"]
    assert resolve_report_to("all") == ["tensorboard"]  # every installed backend, HF-style
    with pytest.raises(TrackingError, match=r"wandb.*not installed"):
        resolve_report_to("wandb")
    with pytest.raises(TrackingError, match="unknown"):
        resolve_report_to("tensorbored")
    with pytest.raises(TrackingError, match="cannot be combined"):
        resolve_report_to("none,tensorboard")


def test_report_to_missing_backend_is_one_line_cli_error(tiny_models, tiny_pairs_file, tmp_path, monkeypatch,
                                                          capsys):
    from embrecipe.training import tracking

    monkeypatch.setattr(tracking, "is_installed", lambda b: b == "tensorboard")
    rc = main(["train", "--model", tiny_models["llama"], "--data", tiny_pairs_file, "--budget", "4e8",
               "--batch-size", "16", "--out", str(tmp_path / "x"), "--report-to", "mlflow", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "mlflow" in err and "not installed" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_wandb_and_mlflow_paths_without_network(monkeypatch, tmp_path):
    """Fake wandb/mlflow modules: the right backend is chosen, grouped by sweep, and fed the step metrics."""
    from embrecipe.training.tracking import open_tracker, step_metrics

    calls: list[tuple] = []

    class FakeRun:
        def define_metric(self, name, step_metric=None):
            calls.append(("wandb.define_metric", name, step_metric))

        def log(self, metrics, step):
            calls.append(("wandb.log", step, dict(metrics)))

        def finish(self):
            calls.append(("wandb.finish",))

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kw: calls.append(("wandb.init", kw)) or FakeRun()
    fake_mlflow = types.ModuleType("mlflow")
    fake_mlflow.set_experiment = lambda name: calls.append(("mlflow.set_experiment", name))
    fake_mlflow.start_run = lambda **kw: calls.append(("mlflow.start_run", kw))
    fake_mlflow.log_params = lambda p: calls.append(("mlflow.log_params", p))
    fake_mlflow.log_metrics = lambda m, step: calls.append(("mlflow.log_metrics", step, dict(m)))
    fake_mlflow.log_metric = lambda k, v, step: calls.append(("mlflow.log_metric", k, step))
    fake_mlflow.end_run = lambda: calls.append(("mlflow.end_run",))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)

    tracker = open_tracker("wandb,mlflow", log_dir=tmp_path / "logs", run_name="cell-a", group="my-sweep",
                           config={"lr": 1e-3, "method": {"name": "full"}})
    assert tracker.backends == ["wandb", "mlflow"]
    m = step_metrics(loss=2.0, lr=1e-3, model_flops=3e9, tokens=1000, train_time_s=2.0)
    tracker.log(7, m)
    tracker.close()
    init = next(c[1] for c in calls if c[0] == "wandb.init")
    assert init["group"] == "my-sweep" and init["name"] == "cell-a" and init["config"] == {"lr": 1e-3}
    assert ("wandb.define_metric", "train/loss_vs_flops", "train/model_flops") in calls
    logged = next(c for c in calls if c[0] == "wandb.log")
    assert logged[1] == 7 and logged[2]["train/loss"] == 2.0 and logged[2]["train/tokens_per_s"] == 500.0
    assert ("mlflow.set_experiment", "my-sweep") in calls
    assert ("mlflow.log_metric", "train/loss_vs_mflops", 3000) in calls
    assert ("wandb.finish",) in calls and ("mlflow.end_run",) in calls


def test_sweep_tracks_one_run_per_cell_grouped_by_sweep(tmp_path):
    from embrecipe.sweep.cells import expand
    from embrecipe.sweep.grid import grid_from_dict

    raw = {"name": "toy", "trainer": "synthetic", "models": ["toy-h64-l2"], "methods": {"full": {}},
           "budgets": [1e12, 1e13], "tokens_per_pair": 60, "min_steps": 1, "train": {"batch_size": 32}}
    cells, _ = expand(grid_from_dict(raw, base_dir=tmp_path))
    assert len(cells) == 2
    dirs = {c.config["tracking_dir"] for c in cells}
    assert dirs == {str(tmp_path / "runs" / "toy" / c.key) for c in cells}
    assert {c.config["tracking_group"] for c in cells} == {"toy"}
    # where a run logs, and to which backend, is no part of what the run is: same keys either way
    tracked, _ = expand(grid_from_dict({**raw, "train": {"batch_size": 32, "report_to": "none"}},
                                       base_dir=tmp_path))
    assert [c.key for c in tracked] == [c.key for c in cells]


def test_new_settings_leave_existing_run_keys_alone():
    from embrecipe.runs.store import run_key

    d = TrainConfig(model="m", data="d.jsonl", budget=1e9).to_dict()
    assert not {"query_prompt", "doc_prompt", "report_to", "tracking_dir", "run_name", "tracking_group"} & d.keys()
    tracked = {**d, "report_to": "wandb", "tracking_dir": "x", "run_name": "r", "tracking_group": "g"}
    assert run_key(tracked) == run_key(d)  # where and how a run is tracked is not what the run is
    assert run_key({**d, "query_prompt": "query: "}) != run_key(d)  # a prompt is


# ------------------------------------------------------------------------------------------- the Hub
def test_push_to_hub_uses_sentence_transformers_and_card_carries_run_facts(tiny_models, tiny_pairs_file, tmp_path,
                                                                           monkeypatch):
    from sentence_transformers import SentenceTransformer

    pushed = {}

    def fake_push(self, repo_id, **kw):  # no network: record what would be uploaded
        pushed.update(repo_id=repo_id, **kw)
        pushed["readme"] = (Path(kw["local_model_path"]) / "README.md").read_text()
        return f"https://huggingface.co/{repo_id}/commit/fake"

    monkeypatch.setattr(SentenceTransformer, "push_to_hub", fake_push)
    out = tmp_path / "m"
    rc = main(["train", "--model", tiny_models["gpt_neox"], "--data", tiny_pairs_file, "--budget", "4e8",
               "--batch-size", "16", "--lr", "3e-4", "--out", str(out), "--quiet", "--report-to", "none",
               "--push-to-hub", "me/tiny-embedder", "--hub-private"])
    assert rc == 0
    assert pushed["repo_id"] == "me/tiny-embedder" and pushed["local_model_path"] == str(out)
    assert pushed["private"] is True
    record = json.loads((out / "run.json").read_text())
    card = pushed["readme"]
    # sentence-transformers rendered it (its sections), with the run's facts in it
    assert "### Full Model Architecture" in card and "library_name: sentence-transformers" in card
    assert f"`budget (model FLOPs)`: {record['budget']:.4g}" in card
    assert f"`model FLOPs spent`: {record['model_flops']:.4g}" in card
    assert "`learning rate`: 0.0003" in card and "`method`: full" in card
    assert record["data_fingerprint"] in card
    assert 'SentenceTransformer("me/tiny-embedder")' in card  # the usage snippet names the repository


def test_push_to_hub_bad_repo_fails_before_training(tiny_models, tiny_pairs_file, tmp_path):
    rc = main(["train", "--model", tiny_models["gpt_neox"], "--data", tiny_pairs_file, "--budget", "4e8",
               "--out", str(tmp_path / "m"), "--push-to-hub", "a/b/c", "--quiet"])
    assert rc == 2 and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------- prompts, EOS
def _neox_class_tokenizer_model(tiny_models, tmp_path) -> str:
    """The tiny GPT-NeoX checkpoint with its tokenizer loaded as transformers' GPTNeoXTokenizer: that class
    rebuilds its post-processor on load, the case where an appended EOS is lost unless the export records it."""

    import shutil

    dst = tmp_path / "neox-tok"
    shutil.copytree(tiny_models["gpt_neox"], dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "GPTNeoXTokenizer"
    # and a chat template, which sentence-transformers 6 would otherwise wrap every text in at encode time
    cfg["chat_template"] = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(dst)


@pytest.mark.parametrize("arch", ["llama", "neox-tokenizer-class"])
def test_lasttoken_pools_eos_in_training_and_in_the_saved_model(tiny_models, tiny_pair_data, tmp_path, arch):
    import torch
    from sentence_transformers import SentenceTransformer

    from embrecipe.models.loading import load_sentence_transformer, set_prompts
    from embrecipe.training import batching

    base = tiny_models["llama"] if arch == "llama" else _neox_class_tokenizer_model(tiny_models, tmp_path)
    out = tmp_path / f"lt-{arch}"
    prompts = dict(query_prompt="query: ", doc_prompt="passage: ")
    train(_cfg(base, tiny_pair_data, pooling="lasttoken", out=str(out), **prompts))

    # training-time features, built by the trainer's own code path on a training-time model
    tmodel = load_sentence_transformer(base, pooling="lasttoken")
    set_prompts(tmodel, **prompts)
    tok = tmodel[0].tokenizer
    texts = ["return the sum of two arrays", "open a file"]
    cols, plens = batching.prompted_columns(tmodel, [texts, texts], prompts["query_prompt"], prompts["doc_prompt"])
    ids = batching.tokenize(tok, cols[0], 75)
    assert all(seq[-1] == tok.eos_token_id for seq in ids)  # EOS appended: the pooled token
    feats = batching.pad_batch(ids, tok.pad_token_id)

    saved = SentenceTransformer(str(out), device="cpu")
    inference = saved.preprocess([prompts["query_prompt"] + t for t in texts])
    assert torch.equal(inference["input_ids"], feats["input_ids"])  # the saved model appends EOS too
    batching.add_prompt_lengths([feats], plens[:1])
    with torch.no_grad():
        trained_path = saved(dict(feats))["sentence_embedding"].numpy()
    np.testing.assert_allclose(saved.encode_query(texts), trained_path, rtol=1e-5, atol=1e-6)


def test_prompts_saved_excluded_from_mean_pooling_and_counted_as_flops(tiny_models, tiny_pair_data, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embrecipe.training import batching

    model = tiny_models["gpt_neox"]
    prompts = dict(query_prompt="query: ", doc_prompt="passage: ")
    kw = dict(budget=1e15, length_bucketing=False, stop_after_steps=3)
    plain = train_until_stopped(_cfg(model, tiny_pair_data, **kw))
    prompted = train_until_stopped(_cfg(model, tiny_pair_data, **kw, **prompts))
    # the FLOP meter counts every token the model processed, prompt tokens included, exactly
    tok = AutoTokenizer.from_pretrained(model)
    batches = Batches([0] * len(tiny_pair_data), 16, 0, False).epoch(0)[:3]

    def n(text):
        return len(tok(text, truncation=True, max_length=75)["input_ids"])

    extra = sum(n(prompts["query_prompt"] + tiny_pair_data.queries[i]) - n(tiny_pair_data.queries[i])
                + n(prompts["doc_prompt"] + tiny_pair_data.positives[i]) - n(tiny_pair_data.positives[i])
                for b in batches for i in b)
    assert extra > 0 and prompted["tokens"] - plain["tokens"] == extra
    per_token = prompted["model_flops"] / prompted["tokens"]
    assert prompted["model_flops"] - plain["model_flops"] == pytest.approx(per_token * extra, rel=1e-12)

    out = tmp_path / "prompted"
    train(_cfg(model, tiny_pair_data, out=str(out), **prompts))
    saved_cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert saved_cfg["prompts"] == {"query": "query: ", "document": "passage: "}
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    saved = SentenceTransformer(str(out), device="cpu")
    # mean pooling over the text's tokens only: the prompt changes the context, not which tokens are averaged
    feats = saved.preprocess(["query: open a file"], prompt="query: ")
    assert feats["prompt_length"] == batching.prompted_columns(saved, [["x"]], "query: ", None)[1][0]
    with torch.no_grad():
        emb = saved(dict(feats))["sentence_embedding"]
        tokens = saved[0](dict(feats))["token_embeddings"]
    np.testing.assert_allclose(emb[0].numpy(), tokens[0, feats["prompt_length"]:].mean(0).numpy(), rtol=1e-5,
                               atol=1e-6)


# ------------------------------------------------------------------------------------------- hard negatives
def test_mine_negatives_cli_writes_bge_jsonl_that_training_uses(tiny_models, tiny_pairs_file, tmp_path):
    from embrecipe.data.pairs import load_pairs

    out = tmp_path / "neg.jsonl"
    rc = main(["data", "mine-negatives", tiny_pairs_file, "--model", tiny_models["gpt_neox"], "--out", str(out),
               "--num-negatives", "2", "--batch-size", "64"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(set(r) == {"query", "pos", "neg"} and len(r["neg"]) == 2 for r in rows)
    assert all(r["pos"][0] not in r["neg"] for r in rows)  # a pair's own positive is never its negative
    src = load_pairs(tiny_pairs_file)
    positives = set(src.positives)
    assert all(n in positives for r in rows for n in r["neg"])  # negatives come from the corpus
    mined = load_pairs(out)
    assert mined.num_negatives == 2
    rec = train(_cfg(tiny_models["gpt_neox"], str(out), hard_negatives=2))
    assert rec.steps >= 1 and rec.config.to_dict()["hard_negatives"] == 2


def test_mine_negatives_rejects_bad_input(tiny_models, tiny_pairs_file, tmp_path, capsys):
    rc = main(["data", "mine-negatives", tiny_pairs_file, "--model", tiny_models["gpt_neox"], "--out",
               str(tmp_path / "n.jsonl"), "--num-negatives", "0"])
    assert rc == 2 and "--num-negatives" in capsys.readouterr().err
    rc = main(["data", "mine-negatives", tiny_pairs_file, "--model", tiny_models["gpt_neox"], "--out",
               str(tmp_path / "n.csv")])
    assert rc == 2 and not (tmp_path / "n.csv").exists()


def test_flop_meter_counts_hard_negative_tokens_exactly(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from embrecipe.data.pairs import load_pairs
    from embrecipe.testing import tiny_pairs

    rows = tiny_pairs(48)
    path = tmp_path / "neg.jsonl"
    path.write_text("".join(json.dumps({**r, "neg": [rows[(i + 7) % 48]["pos"], rows[(i + 13) % 48]["query"]]})
                            + "\n" for i, r in enumerate(rows)))
    data = load_pairs(path)
    model = tiny_models["llama"]
    kw = dict(budget=1e15, length_bucketing=False, stop_after_steps=2)
    runs = {k: train_until_stopped(_cfg(model, data, hard_negatives=k, **kw)) for k in (0, 1, 2)}
    tok = AutoTokenizer.from_pretrained(model)
    batches = Batches([0] * len(data), 16, 0, False).epoch(0)[:2]

    def neg_tokens(k):
        return sum(len(tok(data.negatives[i][j], truncation=True, max_length=75)["input_ids"])
                   for b in batches for i in b for j in range(k))

    per_token = runs[0]["model_flops"] / runs[0]["tokens"]
    for k in (1, 2):
        assert runs[k]["tokens"] - runs[0]["tokens"] == neg_tokens(k) > 0
        assert runs[k]["model_flops"] - runs[0]["model_flops"] == pytest.approx(per_token * neg_tokens(k),
                                                                                rel=1e-12)


@pytest.mark.slow
def test_run_trains_with_prompts_and_pushes_the_planned_model(tmp_path, monkeypatch, capsys):
    """`embrecipe run`: prompts reach the trainer, and --push-to-hub uploads the trained folder (faked push)."""
    from sentence_transformers import SentenceTransformer

    from embrecipe.laws import LawSet, ScalingLaw
    from embrecipe.models.family import shape_of_checkpoint
    from embrecipe.testing import make_tiny_decoder, tiny_pairs

    pushed = {}
    monkeypatch.setattr(SentenceTransformer, "push_to_hub",
                        lambda self, repo_id, **kw: pushed.update(repo_id=repo_id, **kw) or "fake-url")
    model = make_tiny_decoder(tmp_path / "m2", layers=2, hidden=32)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(120)))
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 10.0, "alpha": 0.3, "B": 100.0, "beta": 0.4}
    laws = LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
                  family=[{"name": "m2", "path": str(model), "shape": shape_of_checkpoint(str(model)).to_dict()}],
                  tokens_per_pair=40.0, batch_size=8, provenance="hand-made test card")
    card = laws.save(tmp_path / "card.json")
    out = tmp_path / "out"
    rc = main(["run", "--budget", "3e8", "--laws", str(card), "--data", str(data), "--out", str(out),
               "--max-seq-length", "32", "--eval", "none", "--query-prompt", "query: ", "--report-to", "none",
               "--push-to-hub", "me/planned"])
    assert rc == 0 and "pushed to the Hub: fake-url" in capsys.readouterr().out
    assert pushed["repo_id"] == "me/planned" and pushed["local_model_path"] == str(out)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["query_prompt"] == "query: " and record["tracking"]["backends"] == []
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "
