"""Batching: tokenize once, order the pairs into batches, and turn a batch into model inputs.

Texts are tokenized once per run (and cached per worker: a sweep trains many cells on the same data), so each
step only slices token ids. :class:`Batches` fixes the batch order from the seed alone, which is what lets a
resumed run continue with the very batches it would have drawn. A step's inputs are padded to its longest text
or, on CUDA, packed into unpadded rows (:mod:`embrecipe.training.packing`); both go to the device through pinned memory.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any


class Batches:
    """Deterministic batch order over pre-tokenized pairs: epoch-seeded shuffles, optional length bucketing.

    Bucketing sorts a window of 64 batches by length before cutting it into batches and then shuffles the batch
    order, so each batch holds texts of similar length (less padding) while pairs stay randomly grouped for
    in-batch negatives at the window scale.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucketing: bool) -> None:
        self.lengths, self.batch_size, self.seed, self.bucketing = lengths, batch_size, seed, bucketing
        self.n = len(lengths)
        self.per_epoch = self.n // batch_size

    def epoch(self, e: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + e)
        idx = list(range(self.n))
        rng.shuffle(idx)
        batches: list[list[int]] = []
        window = self.batch_size * 64
        for w in range(0, self.per_epoch * self.batch_size, window):
            chunk = idx[w : min(w + window, self.per_epoch * self.batch_size)]
            if self.bucketing:
                chunk.sort(key=lambda i: self.lengths[i])
            batches += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.bucketing:
            rng.shuffle(batches)
        return batches


def pad_batch(seqs: list[list[int]], pad_id: int) -> dict[str, Any]:
    import numpy as np
    import torch

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def to_device(tensors: dict[str, Any], device: Any) -> dict[str, Any]:
    """Host tensors → device. On CUDA through pinned memory with ``non_blocking``: the copy is queued behind the
    previous step's kernels instead of stalling the host until they finish."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in tensors.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in tensors.items()}


def packed_batch(seqs: list[list[int]], row_length: int, pad_id: int, device: Any, attn_implementation: str,
                  mask_dtype: Any, rows_multiple: int = 1) -> dict[str, Any]:
    """One text column as packed rows on ``device`` (see :mod:`embrecipe.training.packing`)."""
    import numpy as np
    import torch

    from embrecipe.training.packing import packed_attention_mask, packed_layout

    lay = packed_layout(seqs, row_length, pad_id)
    extra = -len(lay["input_ids"]) % rows_multiple
    if extra:  # filler rows: a few fixed row counts for CUDA graphs (one captured graph per shape)
        filler = {"input_ids": np.full((extra, row_length), pad_id, dtype=np.int64),
                  "position_ids": np.tile(np.arange(row_length, dtype=np.int64), (extra, 1)),
                  "segment": np.full((extra, row_length), len(seqs), dtype=np.int64)}
        lay.update({k: np.concatenate([lay[k], v]) for k, v in filler.items()})
    out = to_device({k: torch.from_numpy(v) for k, v in lay.items()}, device)
    out["attention_mask"] = packed_attention_mask(out["segment"], attn_implementation, mask_dtype)
    return out


# A sweep worker trains many cells on the same data with the same tokenizer (every member of a depth ladder
# shares it); tokenizing ~57k texts costs seconds per run, so a worker keeps the last few results.
_TOKEN_CACHE: dict[tuple[str, int, str], list[list[int]]] = {}
_TOKEN_CACHE_MAX = 4
_TRUNCATED_CACHE: dict[tuple[str, int, str], int] = {}  # count_truncated's counts, kept alike


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are call-time state of the backend, not part of what the tokenizer is
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(f"{type(tokenizer).__name__}|{text}".encode()).hexdigest()


def _cache_key(fingerprint: str, texts: list[str], max_len: int) -> tuple[str, int, str]:
    """What a worker's caches key ``texts`` by: the tokenizer, the length and the texts' content."""
    return fingerprint, int(max_len), hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """Keep ``value`` under ``key``, the oldest entry out when the cache holds :data:`_TOKEN_CACHE_MAX`."""
    if len(cache) >= _TOKEN_CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def tokenize(tokenizer: Any, texts: list[str], max_len: int, fingerprint: str | None = None) -> list[list[int]]:
    """``texts`` → token ids (truncated to ``max_len``), from the cache when this worker has seen them.
    ``fingerprint``: :func:`tokenizer_fingerprint` of ``tokenizer`` when the caller already has it (~0.4 s)."""
    key = _cache_key(fingerprint or tokenizer_fingerprint(tokenizer), texts, max_len)
    hit = _TOKEN_CACHE.get(key)
    if hit is not None:
        return hit
    return _remember(_TOKEN_CACHE, key, tokenize_uncached(tokenizer, texts, max_len))


def tokenize_uncached(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), 4096):
        enc = tokenizer(texts[start : start + 4096], truncation=True, max_length=max_len, padding=False)
        out += enc["input_ids"]
    return out


def count_truncated(tokenizer: Any, texts: list[str], ids: list[list[int]], max_len: int,
                    fingerprint: str | None = None) -> int:
    """How many of ``texts`` are longer than ``max_len`` tokens (``ids``: their tokens, truncated to ``max_len``).

    Only a text that fills ``max_len`` can have been cut, so only those are tokenized again, one token longer.
    With ``fingerprint`` (:func:`tokenizer_fingerprint`) the count is kept like :func:`tokenize`'s ids: on a
    large corpus with short ``max_len`` most texts fill it, and recounting cost a sweep worker ~12 s per cell."""
    key = None if fingerprint is None else _cache_key(fingerprint, texts, max_len)
    if key in _TRUNCATED_CACHE:
        return _TRUNCATED_CACHE[key]
    full = [t for t, x in zip(texts, ids, strict=True) if len(x) >= max_len]
    count = sum(len(x) > max_len for x in tokenize_uncached(tokenizer, full, max_len + 1)) if full else 0
    return count if key is None else _remember(_TRUNCATED_CACHE, key, count)


def prompted_columns(model: Any, columns: list[list[str]], query_prompt: str | None,
                      doc_prompt: str | None) -> tuple[list[list[str]], list[int | None]]:
    """Prepend the query prompt to the first column and the document prompt to the others.

    Returns the texts the loss sees (the FLOP meter counts their tokens, prompt included) and, per column, the
    prompt's token count that ``Pooling(include_prompt=False)`` excludes — measured by sentence-transformers
    itself, so training pools exactly the tokens ``encode_query``/``encode_document`` pool later."""
    from embrecipe.data.pairs import with_prompts
    from embrecipe.models.loading import prompt_length

    prompts = [query_prompt] + [doc_prompt] * (len(columns) - 1)
    return with_prompts(columns, query_prompt, doc_prompt), [prompt_length(model, p) for p in prompts]


def add_prompt_lengths(feats: list[dict[str, Any]], prompt_lengths: list[int | None]) -> None:
    for f, n in zip(feats, prompt_lengths, strict=True):
        if n:
            f["prompt_length"] = n


@dataclass(frozen=True)
class ShardInputs:
    """How this rank's shard of a batch becomes model inputs, one dict per text column: padded to the longest
    text (``row_length`` 0) or packed into rows of ``row_length`` tokens. Every rank builds the same global batch
    and keeps its shard, so ``padded`` tokens (the hardware FLOP meter) count all ``world`` ranks."""

    tok_cols: list[list[list[int]]]
    pad_id: int
    device: Any
    prompt_lengths: list[int | None]
    world: int = 1
    row_length: int = 0
    attn_implementation: str = "sdpa"
    mask_dtype: Any = None
    rows_multiple: int = 1  # packed rows rounded up to a multiple of this (CUDA graphs: few shapes)

    def build(self, shard: list[int]) -> tuple[list[dict[str, Any]], int]:
        """(the model inputs of ``shard``, the padded tokens they hold across ranks)."""
        feats = []
        padded = 0
        for col in self.tok_cols:
            if self.row_length:
                f = packed_batch([col[i] for i in shard], self.row_length, self.pad_id, self.device,
                                 self.attn_implementation, self.mask_dtype, rows_multiple=self.rows_multiple)
            else:
                f = to_device(pad_batch([col[i] for i in shard], self.pad_id), self.device)
            feats.append(f)
            padded += f["input_ids"].numel() * self.world
        add_prompt_lengths(feats, self.prompt_lengths)
        return feats, padded
