"""Issue 11's fast paths keep the numerics: packed (unpadded) execution, deferred loss syncs, compile modes."""

import random

import pytest

from embrecipe.errors import InputError, TrainingDiverged
from embrecipe.training.packing import auto_row_length, pack_rows, packed_layout
from embrecipe.training.runtime import compile_mode, use_fused_adamw
from embrecipe.training.trainer import TrainConfig, train


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_places_every_text_once_within_the_row(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 75) for _ in range(rng.randint(1, 300))]
    rows = pack_rows(lengths, 192)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 192 for r in rows)
    # first-fit decreasing is within 11/9 OPT + 1 bins; OPT >= total/row
    assert len(rows) <= 11 / 9 * (sum(lengths) / 192) + 2


def test_pack_rows_refuses_a_text_longer_than_a_row():
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([10, 200], 128)


def test_packed_layout_positions_and_segments():
    lay = packed_layout([[5, 6, 7], [8], [9, 9]], row_length=4, pad_id=0)
    # FFD: row 0 = text 0 (3 tokens) + text 1 (1 token); row 1 = text 2 + 2 filler tokens
    assert lay["input_ids"].tolist() == [[5, 6, 7, 8], [9, 9, 0, 0]]
    assert lay["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert lay["segment"].tolist() == [[0, 0, 0, 1], [2, 2, 3, 3]]
    assert lay["lengths"].tolist() == [3, 1, 2]
    assert auto_row_length(75) == 192 and auto_row_length(16) == 128


@pytest.mark.parametrize("attn,method", [("sdpa", "full"), ("eager", "full"), ("sdpa", "lora")])
def test_packed_embeddings_equal_padded_mean_pooling(tiny_models, tiny_pair_data, attn, method):
    """The core claim: each text's packed embedding is the padded model's embedding (fp32, within rounding)."""
    import torch

    from embrecipe.models.loading import apply_method, load_sentence_transformer
    from embrecipe.models.methods import LoRA
    from embrecipe.training.batching import packed_batch, tokenize
    from embrecipe.training.packing import packed_embeddings

    model = load_sentence_transformer(tiny_models["llama"], attn_implementation=attn)
    if method == "lora":  # the adapter-wrapped model takes the packed inputs too
        apply_method(model, LoRA(rank=4))
        with torch.no_grad():  # non-zero B, so the adapter really changes the output
            for n, prm in model.named_parameters():
                if "lora_B" in n:
                    prm.normal_(0, 0.1)
    model.eval()
    tok = model[0].tokenizer
    texts = tiny_pair_data.positives[:24]
    seqs = tokenize(tok, texts, 75)
    assert len({len(s) for s in seqs}) > 3  # varied lengths, so padding and packing really differ
    batch = packed_batch(seqs, 96, tok.pad_token_id, torch.device("cpu"), attn, torch.float32)
    assert batch["input_ids"].shape[0] < len(texts)  # several texts share a row
    with torch.no_grad():
        packed = packed_embeddings(model, batch)
        padded = model.encode(texts, convert_to_tensor=True, batch_size=len(texts))
    rel = (packed - padded).norm(dim=1) / padded.norm(dim=1)
    assert float(rel.max()) < 1e-4


def test_packed_training_matches_padded_training(tiny_models, tiny_pair_data):
    # fp32: under bf16 the two paths round differently (the comparison would measure bf16, not packing)
    kw = dict(model=tiny_models["llama"], data=tiny_pair_data, budget=6e8, batch_size=16, progress=False, lr=2e-3,
              precision="fp32")
    packed = train(TrainConfig(packing="on", pack_length=96, **kw))
    padded = train(TrainConfig(packing="off", **kw))
    assert packed.details["execution"]["packing"] is True and padded.details["execution"]["packing"] is False
    assert packed.model_flops == padded.model_flops and packed.steps == padded.steps >= 3
    for (f1, a), (f2, b) in zip(packed.loss_curve, padded.loss_curve, strict=True):
        assert f1 == f2 and a == pytest.approx(b, rel=2e-3)
    assert packed.details["padded_tokens"] != padded.details["padded_tokens"]  # rows, not padded batches, were executed


def test_packing_on_refuses_what_it_cannot_compute(tiny_models, tiny_pair_data):
    kw = dict(model=tiny_models["llama"], data=tiny_pair_data, budget=6e8, batch_size=16, progress=False)
    with pytest.raises(InputError, match="packing: GradCache"):
        train(TrainConfig(packing="on", mini_batch_size=4, **kw))
    with pytest.raises(InputError, match="packing: packing pools by mean only"):
        train(TrainConfig(packing="on", pooling="last-token", **kw))
    with pytest.raises(InputError, match="pack_length"):
        train(TrainConfig(packing="on", pack_length=10, **kw))
    # auto quietly falls back to padded batches where packing would change the result (or is not worth it)
    rec = train(TrainConfig(packing="auto", mini_batch_size=4, **kw))
    assert rec.details["execution"]["packing"] is False and rec.details["execution"]["why_not_packed"]


def test_deferred_loss_sync_keeps_the_loss_curve(tiny_models, tiny_pair_data):
    """Reading the loss every step or every 1000 steps: identical records (only the sync points differ)."""
    kw = dict(model=tiny_models["llama"], data=tiny_pair_data, budget=6e8, batch_size=16, progress=False, lr=2e-3)
    every = train(TrainConfig(sync_every=1, **kw))
    rarely = train(TrainConfig(sync_every=1000, **kw))
    assert every.loss_curve == rarely.loss_curve
    assert len(every.details["step_times_s"]) == every.steps == len(every.loss_curve)


def test_non_finite_loss_is_caught_at_the_sync_point(tiny_models, tiny_pair_data):
    kw = dict(model=tiny_models["llama"], data=tiny_pair_data, budget=6e8, batch_size=16, progress=False)
    # diverges within a few steps; with sync_every 1000 the losses reach the host only at the end of the run
    with pytest.raises(TrainingDiverged) as caught:
        train(TrainConfig(lr=1e30, sync_every=1000, **kw))
    rec = caught.value.record
    assert rec.status == "failed" and "diverged at step" in rec.failure
    assert any(w in rec.failure for w in ("nan", "inf", "ran away"))


def test_cuda_only_modes_are_disabled_cleanly_on_cpu():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("cudagraphs", cpu) == "default"
    assert compile_mode("cudagraphs", cuda) == "cudagraphs"
    assert compile_mode("none", cpu) == "none"
    assert use_fused_adamw(cuda) and use_fused_adamw(cpu)
    with pytest.raises(InputError, match="compile"):
        TrainConfig(model="m", data="d", budget=1.0, compile="max").validate()
    with pytest.raises(InputError, match="sync_every"):
        TrainConfig(model="m", data="d", budget=1.0, sync_every=0).validate()


def test_packing_refuses_a_pooling_that_excludes_prompts(tiny_models, tiny_pair_data):
    # packed pooling averages every token of a text; prompts excluded from pooling need the padded path
    with pytest.raises(InputError, match="include_prompt"):
        train(TrainConfig(model=tiny_models["llama"], data=tiny_pair_data, budget=6e8, batch_size=16,
                          progress=False, packing="on", query_prompt="query: "))
