import itertools
import json
from pathlib import Path

import pytest

from embrecipe.errors import BudgetError, InputError
from embrecipe.models.methods import BiasOnly, BlockFreezing, FullFineTuning, LoRA
from embrecipe.training.budget import lr_at_fraction, step_lr_fraction
from embrecipe.training.config import TrainConfig, default_lr
from embrecipe.training.trainer import train, train_until_stopped


def _cfg(model, data, **kw):
    base = dict(model=model, data=data, budget=1.5e9, batch_size=16, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


# Pythia's published pre-training peak LRs (Biderman et al. 2023), restated here independently of the table.
PYTHIA_PEAKS = {"14m": 1e-3, "31m": 1e-3, "70m": 1e-3, "160m": 6e-4, "410m": 3e-4, "1b": 3e-4, "1.4b": 2e-4,
                "2.8b": 1.6e-4, "6.9b": 1.2e-4, "12b": 1.2e-4}


@pytest.mark.parametrize("size", sorted(PYTHIA_PEAKS))
def test_default_lr_is_a_tenth_of_published_pythia_peak(size):
    assert default_lr(f"EleutherAI/pythia-{size}") == pytest.approx(PYTHIA_PEAKS[size] / 10)
    assert default_lr(f"EleutherAI/pythia-{size}-deduped") == pytest.approx(PYTHIA_PEAKS[size] / 10)


def test_default_lr_is_a_tenth_of_pretraining():
    assert default_lr("EleutherAI/pythia-160m") == pytest.approx(6e-5)
    assert default_lr("EleutherAI/pythia-1.4b") == pytest.approx(2e-5)
    assert default_lr("/x/smollm2-L8") == pytest.approx(3e-4)
    assert default_lr("some/unknown") == pytest.approx(1e-4)


def test_lr_by_spent_fraction_warmup_cosine_zero_at_budget():
    assert lr_at_fraction(0.0, 0.1) == 0.0 and lr_at_fraction(0.05, 0.1) == pytest.approx(0.5)
    assert lr_at_fraction(0.1, 0.1) == pytest.approx(1.0)
    assert lr_at_fraction(0.55, 0.1) == pytest.approx(0.5)
    assert lr_at_fraction(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at_fraction(1.7, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at_fraction(0.5, 0.0) == pytest.approx(0.5)
    vals = [lr_at_fraction(f / 100, 0.1) for f in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(vals))  # monotone after warm-up


def test_schedule_positive_for_every_step_that_fits_whatever_the_batch_lengths():
    import random

    rng = random.Random(0)
    for _ in range(200):
        budget, spent, lrs = 1e6, 0.0, []
        while True:
            cost = rng.choice([1e3, 5e3, 2e4, 9e4])  # batches far from the mean
            if spent + cost > budget:
                break
            lrs.append(lr_at_fraction(step_lr_fraction(spent, cost, budget), 0.1))
            spent += cost
        assert all(x > 0 for x in lrs)
        # what is left is below one step (<= 9 % of the budget), so the last step's middle lies past
        # 1 - 0.09 - 0.045 of the budget: the cosine's last stretch, not stopped half-way
        assert lrs[-1] <= lr_at_fraction(0.865, 0.1)


def test_run_with_batches_shorter_than_the_mean_never_steps_at_lr_zero(tiny_models, tmp_path):
    """Long and very short pairs, bucketed: the drawn batches are mostly shorter than the mean, so the run
    takes more steps than planned from the mean -- under a step-based cosine those extra steps ran at LR 0."""
    from embrecipe.data.pairs import load_pairs

    rows = [{"query": f"q{i}", "pos": f"p{i}"} for i in range(80)]
    rows += [{"query": " ".join(f"long{i} word{j}" for j in range(30)), "pos": " ".join(["text"] * 60)}
             for i in range(16)]
    path = tmp_path / "skewed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_pairs(str(path))
    rec = None
    for seed in range(6):  # find a draw whose batches run past the planned step count (deterministic)
        rec = train(_cfg(tiny_models["llama"], data, budget=1.2e9, seed=seed, lr=1e-3))
        if rec.steps > rec.details["planned_steps"]:
            break
    assert rec.steps > rec.details["planned_steps"], "the skewed data should draw short batches"
    assert len(rec.details["step_lrs"]) == rec.steps
    assert all(x > 0 for x in rec.details["step_lrs"])
    assert rec.model_flops <= rec.budget
    assert max(rec.details["step_lrs"]) <= 1e-3 + 1e-12


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("method", [FullFineTuning(), BlockFreezing(1), BiasOnly(), LoRA(rank=2)],
                         ids=lambda m: m.key)
def test_budget_stop_overshoot_less_than_one_step(tiny_models, tiny_pair_data, arch, method):
    if arch == "llama" and isinstance(method, BiasOnly):
        pytest.skip("no biases in Llama")
    rec = train(_cfg(tiny_models[arch], tiny_pair_data, method=method, budget=1e9))
    assert rec.model_flops <= rec.budget
    # the step that was not taken would have exceeded the budget: unspent < one step's cost
    max_step_cost = rec.details["flops_per_token"] * 16 * 3 * 75  # upper bound on one batch's tokens
    assert rec.budget - rec.model_flops < max_step_cost
    assert rec.model_flops == pytest.approx(rec.details["flops_per_token"] * rec.tokens)
    assert abs(rec.steps - rec.details["planned_steps"]) <= max(2, 0.1 * rec.details["planned_steps"])
    assert rec.details["hardware_flops"] >= rec.model_flops
    assert rec.loss_curve[-1][0] == rec.model_flops


def test_too_small_budget_states_minimum(tiny_models, tiny_pair_data):
    with pytest.raises(BudgetError, match="minimum is about"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, budget=1e4))


def test_no_repeat_limits_budget(tiny_models, tiny_pair_data):
    with pytest.raises(BudgetError, match="allow repetition"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, budget=1e11, allow_repeat=False))


def test_bad_config_values(tiny_models, tiny_pair_data):
    for kw in (dict(budget=-1), dict(batch_size=1), dict(lr=0.0), dict(precision="fp8")):
        with pytest.raises((InputError, BudgetError)):
            train(_cfg(tiny_models["llama"], tiny_pair_data, **kw))
    with pytest.raises(InputError, match="no more than one batch"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, batch_size=1000))


def test_deterministic_on_cpu(tiny_models, tiny_pair_data):
    a = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, budget=4e8))
    b = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, budget=4e8))
    assert a.loss_curve == b.loss_curve


def test_training_reduces_validation_loss(tiny_models, tiny_pair_data):
    from embrecipe.models.loading import load_sentence_transformer
    from embrecipe.training.loss import heldout_loss

    # The raw model's loss on the validation pairs the trainer holds out (same fraction, same seed).
    _, val = tiny_pair_data.split_off(0.25, seed=0)
    before = heldout_loss(load_sentence_transformer(tiny_models["gpt_neox"]), val.queries, val.positives,
                          batch_size=16)
    rec = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, budget=3e9, val_fraction=0.25, lr=3e-3))
    first = rec.loss_curve[0][1]
    assert rec.final_train_loss < first
    assert rec.details["val_pairs"] == len(val)
    assert rec.final_val_loss < before


def test_gradcache_equals_uncached_loss_and_gradients(tiny_models, tiny_pair_data):
    import torch

    from embrecipe.models.loading import apply_method, load_sentence_transformer
    from embrecipe.training.loss import symmetric_infonce

    results = []
    for mini in (None, 3):
        model = load_sentence_transformer(tiny_models["gpt_neox"])
        apply_method(model, FullFineTuning())
        q = model.preprocess(tiny_pair_data.queries[:10])
        p = model.preprocess(tiny_pair_data.positives[:10])
        feats = [{k: v for k, v in f.items() if k != "modality"} for f in (q, p)]
        loss = symmetric_infonce(model, mini_batch_size=mini)(feats, None)
        loss.backward()
        results.append((float(loss), {n: t.grad.clone() for n, t in model.named_parameters() if t.grad is not None}))
    (l0, g0), (l1, g1) = results
    assert l0 == pytest.approx(l1, rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-3, atol=1e-5)  # fp32 summation order differs


def test_gradcache_run_matches_plain_run(tiny_models, tiny_pair_data):
    # fp32: under bf16 autocast the logged loss is quantised to 1/32 near 5.8, coarser than the tolerance
    a = train(_cfg(tiny_models["llama"], tiny_pair_data, budget=5e8, precision="fp32"))
    b = train(_cfg(tiny_models["llama"], tiny_pair_data, budget=5e8, mini_batch_size=4, precision="fp32"))
    assert a.model_flops == b.model_flops
    assert b.details["hardware_flops"] > a.details["hardware_flops"]  # the extra forward is metered as hardware FLOPs
    assert a.final_train_loss == pytest.approx(b.final_train_loss, rel=1e-3)


def test_resume_after_interruption_matches_uninterrupted(tiny_models, tiny_pair_data, tmp_path):
    kw = dict(budget=1.2e9, method=LoRA(rank=2), lr=2e-3)
    full = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, out=str(tmp_path / "a"), **kw))
    part = train_until_stopped(_cfg(tiny_models["gpt_neox"], tiny_pair_data, out=str(tmp_path / "b"),
                                    checkpoint_every=3, stop_after_steps=7, **kw))
    assert part["status"] == "interrupted" and part["step"] == 7
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists()
    resumed = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, out=str(tmp_path / "b"), checkpoint_every=3,
                         resume=True, **kw))
    assert resumed.model_flops == full.model_flops
    assert resumed.steps == full.steps
    assert resumed.final_train_loss == pytest.approx(full.final_train_loss, rel=0.01)
    assert not (tmp_path / "b" / "checkpoint").exists()  # cleaned up after export


def test_stop_hook_raises_out_of_train_and_returns_state_from_train_until_stopped(tiny_models, tiny_pair_data):
    from embrecipe.errors import EmbrecipeError
    from embrecipe.training.trainer import TrainingStopped

    with pytest.raises(TrainingStopped) as stopped:
        train(_cfg(tiny_models["llama"], tiny_pair_data, stop_after_steps=2))
    assert stopped.value.state["status"] == "interrupted" and stopped.value.state["step"] == 2
    state = train_until_stopped(_cfg(tiny_models["llama"], tiny_pair_data, stop_after_steps=2))
    assert state["step"] == 2 and len(state["step_flops"]) == 2 and state["model_flops"] == sum(state["step_flops"])
    with pytest.raises(EmbrecipeError, match="before stop_after_steps"):  # the budget ends first: no stop to report
        train_until_stopped(_cfg(tiny_models["llama"], tiny_pair_data, stop_after_steps=10**6))


def test_loop_state_reads_checkpoints_without_the_later_per_step_lists():
    from embrecipe.training.budget import LoopState

    old = {"step": 3, "epoch": 0, "pos": 3, "model_flops": 30, "hardware_flops": 40, "tokens": 9,
           "padded_tokens": 12, "loss_curve": [[10, 2.0]], "train_time_s": 0.5}
    state = LoopState.from_dict(old)
    assert state.step == 3 and state.step_times == [] and state.step_lrs == [] and state.step_flops == []
    assert list(state.to_dict())[: len(old)] == list(old)  # state.json keeps the order checkpoints were written in


def test_resume_refuses_other_config(tiny_models, tiny_pair_data, tmp_path):
    train_until_stopped(_cfg(tiny_models["llama"], tiny_pair_data, out=str(tmp_path / "r"), checkpoint_every=2,
                             stop_after_steps=3))
    with pytest.raises(InputError, match="different configuration"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(tmp_path / "r"), resume=True, lr=1e-2))


@pytest.mark.parametrize("method", [FullFineTuning(), LoRA(rank=2)], ids=lambda m: m.key)
def test_export_reloads_as_sentence_transformer(tiny_models, tiny_pair_data, tmp_path, method):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / method.key
    rec = train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, method=method, budget=4e8, out=str(out)))
    model = SentenceTransformer(str(out))
    emb = model.encode(["hello world"])
    assert emb.shape == (1, 32)
    saved = json.loads((out / "run.json").read_text())
    assert saved["model_flops"] == rec.model_flops and saved["budget"] == 4e8
    assert {"config", "versions", "seed", "tokens", "loss_curve", "final_train_loss", "final_val_loss",
            "wall_time_s"} <= saved.keys()
    card = (out / "README.md").read_text()
    assert "model FLOPs spent" in card and method.name in card
    assert not (out / "adapter_config.json").exists()  # LoRA merged by default
    # the reloaded model embeds exactly as the trained one did
    import numpy as np

    model2 = SentenceTransformer(str(out))
    np.testing.assert_allclose(model2.encode(["abc def"]), model.encode(["abc def"]), rtol=1e-5)
    with pytest.raises(InputError, match="already holds a finished run"):
        train(_cfg(tiny_models["gpt_neox"], tiny_pair_data, method=method, budget=4e8, out=str(out)))


def test_keep_adapter_saves_adapter_only(tiny_models, tiny_pair_data, tmp_path):
    out = tmp_path / "adapter"
    train(_cfg(tiny_models["llama"], tiny_pair_data, method=LoRA(rank=2), budget=4e8, out=str(out),
               keep_adapter=True))
    assert (out / "adapter_config.json").exists() and (out / "run.json").exists()


def test_hard_negatives(tiny_models, tmp_path):
    from embrecipe.testing import tiny_pairs

    rows = tiny_pairs(40)
    p = tmp_path / "neg.jsonl"
    p.write_text("".join(json.dumps({**r, "neg": [rows[(i + 7) % 40]["pos"]]}) + "\n" for i, r in enumerate(rows)))
    plain = train(_cfg(tiny_models["llama"], str(p), budget=4e8))
    hard = train(_cfg(tiny_models["llama"], str(p), budget=4e8, hard_negatives=1))
    # a negative column adds tokens per pair, so the same budget buys fewer steps
    assert hard.tokens_per_pair > plain.tokens_per_pair
    assert hard.steps < plain.steps


def test_tokenization_cache_reuses_only_identical_inputs(tiny_models):
    from transformers import AutoTokenizer

    from embrecipe.training import batching

    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    texts = ["return the sum of two arrays", "load a model from a local directory"]
    batching._TOKEN_CACHE.clear()
    first = batching.tokenize(tok, texts, 75)
    assert first == batching.tokenize_uncached(tok, texts, 75)
    assert batching.tokenize(tok, list(texts), 75) is first  # equal texts, same tokenizer: a hit
    assert batching.tokenize(tok, texts, 3) == batching.tokenize_uncached(tok, texts, 3)  # other length: a miss
    assert all(len(ids) <= 3 for ids in batching.tokenize(tok, texts, 3))
    assert batching.tokenize(tok, texts[::-1], 75) == first[::-1]


def test_truncation_count_is_kept_per_worker_and_equals_the_uncounted_one(tiny_models, monkeypatch):
    """A sweep worker counts the truncated texts of a corpus once, not once per cell (it re-tokenizes every text
    that fills max_len: ~12 s per cell on the testbed corpus at max_len 32)."""
    from transformers import AutoTokenizer

    from embrecipe.training import batching

    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    texts = ["return the sum of two arrays and a third one", "load", "a model from a local directory on disk"]
    fp = batching.tokenizer_fingerprint(tok)
    ids = batching.tokenize(tok, texts, 4, fp)
    batching._TRUNCATED_CACHE.clear()
    expected = batching.count_truncated(tok, texts, ids, 4)
    assert expected == sum(len(x) > 4 for x in batching.tokenize_uncached(tok, texts, 64)) == 2
    assert batching.count_truncated(tok, texts, ids, 4, fp) == expected
    calls = []
    monkeypatch.setattr(batching, "tokenize_uncached", lambda *a: calls.append(a) or [])
    assert batching.count_truncated(tok, list(texts), ids, 4, fp) == expected  # a hit: nothing re-tokenized
    assert calls == []
    assert batching.count_truncated(tok, texts, ids, 4) == 0 and len(calls) == 1  # without fingerprint: counted


# --------------------------------------------------------------------------------------- hardening (issue 13)


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_divergence_reason_flags_non_finite_and_runaway_losses():
    from embrecipe.training.budget import RUNAWAY_FACTOR, divergence_reason

    assert divergence_reason(float("nan"), None, 16) == "loss is nan"
    assert divergence_reason(float("inf"), 2.0, 16) == "loss is inf"
    assert divergence_reason(2.5, None, 16) is None
    assert divergence_reason(2.5, 2.8, 16) is None
    # the bound is RUNAWAY_FACTOR x max(first loss, ln B): a tiny first loss does not make it trigger-happy
    assert divergence_reason(RUNAWAY_FACTOR * 2.8 * 0.99, 0.01, 16) is None
    assert "ran away" in divergence_reason(RUNAWAY_FACTOR * 2.8 * 1.01, 0.01, 16)


def test_json_safe_makes_records_strict_json():
    from embrecipe.jsonio import json_safe

    rec = {"loss_curve": [[1.0, float("nan")], [2.0, 3.0]], "final": float("inf"), "n": 3, "s": "x"}
    assert json.dumps(json_safe(rec), allow_nan=False) == \
        '{"loss_curve": [[1.0, null], [2.0, 3.0]], "final": null, "n": 3, "s": "x"}'


def test_diverging_run_fails_with_strict_record_and_no_model(tiny_models, tiny_pair_data, tmp_path):
    from embrecipe.errors import EmbrecipeError, TrainingDiverged

    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="diverged at step") as info:
        train(_cfg(tiny_models["llama"], tiny_pair_data, lr=1e6, out=str(out), checkpoint_every=2))
    assert isinstance(info.value, EmbrecipeError)  # the CLI prints one line and exits 2
    rec = _strict_json(out / "run.json")
    assert rec["status"] == "failed" and rec["failure"].startswith("diverged at step")
    assert rec["steps"] < rec["planned_steps"]  # stopped at that step
    assert info.value.record.status == "failed"
    assert not (out / "model.safetensors").exists() and not (out / "modules.json").exists()


def test_new_config_checks():
    for kw, match in ((dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(weight_decay=-5.0), "weight_decay"),
                      (dict(checkpoint_every=-1), "checkpoint_every"), (dict(log_every=0), "log_every"),
                      (dict(max_grad_norm=-1.0), "max_grad_norm"), (dict(val_size_cap=1), "val_size_cap"),
                      (dict(resume=True, overwrite=True), "contradict")):
        with pytest.raises(InputError, match=match):
            TrainConfig(model="m", data="d", budget=1e9, **kw).validate()


def test_config_from_dict_checks_types_like_a_grid_needs():
    from embrecipe.training.config import config_from_dict

    base = {"model": "m", "data": "d.jsonl", "budget": 1e12, "method": {"name": "full"}}
    assert config_from_dict(base).budget == 1e12
    with pytest.raises(InputError, match=r"grid.yaml: lr must be a number, got str '1.0e6' \(YAML"):
        config_from_dict({**base, "lr": "1.0e6"}, source="grid.yaml")
    with pytest.raises(InputError, match="batch_size must be an integer"):
        config_from_dict({**base, "batch_size": 32.5})
    with pytest.raises(InputError, match=r"missing training setting.*data"):
        config_from_dict({k: v for k, v in base.items() if k != "data"})
    with pytest.raises(InputError, match="weight_decay"):
        config_from_dict({**base, "weight_decay": -5})


def test_every_setting_is_type_checked_from_its_annotation():
    """The types come from TrainConfig's annotations, not a table: a setting the table forgot (sync_every,
    pack_length, packing, compile, the prompts) once reached the trainer as text and raised a raw TypeError."""
    import dataclasses

    from embrecipe.training.config import config_from_dict

    base = {"model": "m", "data": "d.jsonl", "budget": 1e12}
    assert config_from_dict({**base, "sync_every": 8, "query_prompt": "q: "}).sync_every == 8
    with pytest.raises(InputError, match="sync_every must be an integer, got str '32'"):
        config_from_dict({**base, "sync_every": "32"})
    for f in dataclasses.fields(TrainConfig):
        if f.name != "method":
            with pytest.raises(InputError, match=f"config: {f.name} must be"):
                config_from_dict({**base, f.name: [1]})


def test_validation_set_of_one_pair_is_refused_before_training(tiny_models, tiny_pair_data):
    with pytest.raises(InputError, match="1 validation pair"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, val_data=tiny_pair_data.subset([0])))


def test_out_checks_before_training(tiny_models, tiny_pair_data, tmp_path, monkeypatch):
    import embrecipe.training.preflight as preflight

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(a_file)))
    with pytest.raises(InputError, match="is a file"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(a_file / "sub")))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"not empty.*--overwrite"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(busy)))
    with pytest.raises(InputError, match="nothing to resume"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(tmp_path / "fresh"), resume=True))
    monkeypatch.setattr(preflight, "_writable", lambda d: False)
    with pytest.raises(InputError, match="not writable"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(tmp_path / "ro")))


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_out_is_refused(tiny_models, tiny_pair_data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(ro / "run")))
    finally:
        ro.chmod(0o755)


def test_overwrite_writes_into_a_non_empty_out(tiny_models, tiny_pair_data, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    train(_cfg(tiny_models["llama"], tiny_pair_data, budget=3e8, out=str(busy), overwrite=True))
    assert (busy / "notes.txt").read_text() == "mine" and _strict_json(busy / "run.json")["status"] == "completed"


def test_disk_space_is_checked_before_training(tiny_models, tiny_pair_data, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from embrecipe.errors import OutOfDiskSpace
    from embrecipe.training.preflight import disk_bytes_needed

    assert disk_bytes_needed(1000, 100, checkpoints=False) < disk_bytes_needed(1000, 100, checkpoints=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OutOfDiskSpace, match="1 KB free on its disk but the run needs about"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, out=str(tmp_path / "full")))
    assert not (tmp_path / "full").exists()


def test_failed_export_keeps_the_trained_weights(tiny_models, tiny_pair_data, tmp_path, monkeypatch):
    import errno

    from sentence_transformers import SentenceTransformer

    from embrecipe.errors import OutOfDiskSpace

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    kw = dict(budget=6e8, checkpoint_every=50, out=str(out))
    with monkeypatch.context() as m:
        m.setattr(SentenceTransformer, "save", full_disk)
        with pytest.raises(OutOfDiskSpace, match=r"kept in .*checkpoint.*--resume"):
            train(_cfg(tiny_models["llama"], tiny_pair_data, **kw))
    assert (out / "checkpoint" / "params.safetensors").exists()
    assert not (out / "run.json").exists() and not (out / ".export.tmp").exists()
    reference = train(_cfg(tiny_models["llama"], tiny_pair_data, **{**kw, "out": str(tmp_path / "ref")}))
    resumed = train(_cfg(tiny_models["llama"], tiny_pair_data, resume=True, **kw))  # exports, trains nothing
    assert resumed.steps == reference.steps
    assert resumed.final_train_loss == pytest.approx(reference.final_train_loss)
    assert resumed.final_val_loss == reference.final_val_loss
    assert (out / "modules.json").exists() and not (out / "checkpoint").exists()


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this object would create the marker file
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_resume_never_runs_code_from_a_planted_checkpoint(tiny_models, tiny_pair_data, tmp_path, layout):
    import torch

    out = tmp_path / "run"
    kw = dict(out=str(out), checkpoint_every=2)
    train_until_stopped(_cfg(tiny_models["llama"], tiny_pair_data, stop_after_steps=2, **kw))
    ckpt = out / "checkpoint"
    assert (ckpt / "state.json").exists() and (ckpt / "params.safetensors").exists()
    if layout == "legacy":  # the old single-file layout: no state.json
        (ckpt / "state.json").unlink()
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Planted(marker), "fingerprint": "x"}, ckpt / "state.pt")
    with pytest.raises(InputError, match="loaded safely"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, resume=True, **kw))
    assert not marker.exists()


def test_many_duplicate_pairs_warn(tiny_models, tiny_pair_data):
    from embrecipe.data.pairs import PairData
    from embrecipe.errors import EmbrecipeWarning

    # a third of the rows repeat earlier ones: trained, with a warning (all rows one pair is refused: see
    # tests/training/test_targets.py::test_one_repeated_pair_is_refused_not_trained)
    queries = tiny_pair_data.queries[:40] + tiny_pair_data.queries[:20]
    positives = tiny_pair_data.positives[:40] + tiny_pair_data.positives[:20]
    same = PairData(queries, positives, source="dups.jsonl")
    with pytest.warns(EmbrecipeWarning, match="dups.jsonl: 33% of the pairs repeat"):
        train(_cfg(tiny_models["llama"], same, budget=3e8))


def test_encoder_models_are_refused(tiny_models, tmp_path):
    import shutil

    import transformers as tf

    from embrecipe.models.loading import load_sentence_transformer, not_a_decoder

    assert not_a_decoder(tf.LlamaConfig()) is None and not_a_decoder(tf.GPT2Config()) is None
    assert "bidirectional encoder" in not_a_decoder(tf.BertConfig())
    assert not_a_decoder(tf.BertConfig(is_decoder=True)) is None
    assert "encoder-decoder" in not_a_decoder(tf.T5Config())
    assert "no causal language model" in not_a_decoder(tf.DistilBertConfig())
    bert = tmp_path / "bert"
    cfg = tf.BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    tf.BertModel(cfg).save_pretrained(bert)
    for f in Path(tiny_models["llama"]).iterdir():
        if "token" in f.name or f.name == "special_tokens_map.json":
            shutil.copy(f, bert / f.name)
    with pytest.raises(InputError, match=r"bidirectional encoder.*decoder"):
        load_sentence_transformer(str(bert))


def test_is_disk_full_reads_oserrors_chains_and_library_messages():
    import errno

    from embrecipe.errors import OutOfDiskSpace, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(OutOfDiskSpace("x"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("x"))
