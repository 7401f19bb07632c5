"""Tiny, randomly initialised decoder checkpoints built on the fly, for tests and the smoke job.

They are real Hugging Face checkpoints (config, safetensors weights, a fast tokenizer trained here on a few
sentences) so every code path that loads "a model directory" is exercised without a network.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "return the sum of two arrays element wise",
    "load a model from a local directory or the hub",
    "compute the mean of the token embeddings ignoring padding",
    "a contrastive loss pulls matching pairs together and pushes others apart",
    "split the data set into train validation and test parts by source",
    "open a file and read every line as a json object",
    "the learning rate warms up linearly and then decays with a cosine",
]

ARCHITECTURES = ("gpt_neox", "llama", "gpt2", "qwen2")


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    # No pad token on purpose: decoders usually ship without one, and embrecipe must set pad = EOS.
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", bos_token="<eos>")


def tiny_config(arch: str, *, layers: int = 2, hidden: int = 32, vocab_size: int = 320):
    """A small config of the named architecture (2 heads, intermediate 2× hidden, 128 positions)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            **common, intermediate_size=2 * hidden, max_position_embeddings=128, rotary_pct=0.25,
            eos_token_id=1, bos_token_id=1, use_parallel_residual=True,
        )
    if arch == "llama":
        return tf.LlamaConfig(
            **common, intermediate_size=2 * hidden, max_position_embeddings=128, num_key_value_heads=1,
            eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            **common, intermediate_size=2 * hidden, max_position_embeddings=128, num_key_value_heads=1,
            eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
        )
    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=2, n_positions=128,
            eos_token_id=1, bos_token_id=1,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHITECTURES}")


def make_tiny_decoder(out_dir: str | Path, arch: str = "gpt_neox", *, layers: int = 2, hidden: int = 32,
                      seed: int = 0) -> Path:
    """Write a tiny random-initialised decoder checkpoint (base model + tokenizer) to ``out_dir``."""
    import torch
    from transformers import AutoModel

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = _tokenizer(320)
    # Some tokenizer classes (Qwen2) add tokens on load: leave room so ids never exceed the vocabulary.
    config = tiny_config(arch, layers=layers, hidden=hidden, vocab_size=len(tokenizer) + 16)
    model = AutoModel.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_pairs(n: int = 64, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic (query, pos) pairs made from the corpus above: word windows of the same sentence."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = _CORPUS[i % len(_CORPUS)].split()
        a = rng.randint(0, max(0, len(words) - 4))
        q = " ".join(words[a : a + 3 + rng.randint(0, 2)])
        rows.append({"query": f"{q} {i}", "pos": f"{_CORPUS[i % len(_CORPUS)]} {i}"})
    return rows
