"""The fast paths keep the numerics: same losses as the slow reference paths on a fixed short run."""

import pytest

from embrecipe.training.trainer import TrainConfig, train


def _run(model, data, **kw):
    return train(TrainConfig(model=model, data=data, budget=6e8, batch_size=16, progress=False, lr=2e-3, **kw))


def test_sdpa_attention_matches_eager(tiny_models, tiny_pair_data):
    """The fast attention path computes the same embeddings as the eager reference, padded batches included
    (texts of different lengths: the padding mask must be honoured the same way), for both decoder families."""
    import torch

    from embrecipe.models.loading import load_sentence_transformer

    texts = [*tiny_pair_data.queries[:6], tiny_pair_data.positives[0] * 3, "a"]
    for arch in ("llama", "gpt_neox"):
        out = {}
        for attn in ("sdpa", "eager"):
            model = load_sentence_transformer(tiny_models[arch], attn_implementation=attn)
            with torch.no_grad():
                out[attn] = model.encode(texts, batch_size=len(texts), convert_to_tensor=True)
        assert out["sdpa"].shape == (len(texts), out["sdpa"].shape[1]) and out["sdpa"].abs().sum() > 0
        torch.testing.assert_close(out["sdpa"], out["eager"], rtol=1e-4, atol=1e-5)


def test_padding_to_the_batch_longest_equals_padding_to_max_length(tiny_models, tiny_pair_data):
    """Length bucketing only removes padding: a batch's loss does not depend on how far it is padded."""
    import torch

    from embrecipe.models.loading import load_sentence_transformer
    from embrecipe.training.loss import symmetric_infonce

    model = load_sentence_transformer(tiny_models["gpt_neox"])
    tok = model[0].tokenizer
    losses = []
    for padding in ("longest", "max_length"):
        feats = [dict(tok(col[:12], padding=padding, max_length=75, truncation=True, return_tensors="pt"))
                 for col in (tiny_pair_data.queries, tiny_pair_data.positives)]
        with torch.no_grad():
            losses.append(float(symmetric_infonce(model)(feats, None)))
    assert feats[0]["input_ids"].shape[1] == 75
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_bucketing_reduces_padding_and_keeps_training(tiny_models, tiny_pair_data):
    bucketed = _run(tiny_models["llama"], tiny_pair_data)
    plain = _run(tiny_models["llama"], tiny_pair_data, length_bucketing=False)
    assert bucketed.details["padded_tokens"] / bucketed.tokens < plain.details["padded_tokens"] / plain.tokens
    # different batches, same objective: both runs learn (the loss falls from its start)
    for rec in (bucketed, plain):
        assert rec.final_train_loss < rec.loss_curve[0][1]


def test_all_fast_paths_together_match_the_unoptimised_path(tiny_models, tiny_pair_data):
    """SDPA + bucketing vs eager + random batches, on a run where bucketing cannot change batch *membership*.

    With one batch per epoch (batch = the pool but one pair: the trainer refuses a pool of one batch) bucketing
    only reorders pairs inside the batch (both paths take the same seeded shuffle's first n - 1 pairs), and the
    symmetric InfoNCE is invariant to a joint permutation of queries and positives, so a fixed multi-step run
    must end at the same loss (within 1 %) whichever path computed it.
    """
    n = len(tiny_pair_data) - 1
    # fp32: on a CPU with bf16 units `auto` trains in bf16, whose rounding differs between the paths compared
    kw = dict(budget=3e9, batch_size=n, progress=False, lr=2e-3, allow_repeat=True, precision="fp32")
    fast = train(TrainConfig(model=tiny_models["llama"], data=tiny_pair_data, **kw))
    slow = train(TrainConfig(model=tiny_models["llama"], data=tiny_pair_data, attn_implementation="eager",
                             length_bucketing=False, **kw))
    assert fast.steps == slow.steps >= 3
    assert fast.final_train_loss < fast.loss_curve[0][1]  # it trained
    assert fast.final_train_loss == pytest.approx(slow.final_train_loss, rel=0.01)
