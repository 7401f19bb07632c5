"""Hard-negative mining with sentence-transformers' ``mine_hard_negatives``, written as BGE JSONL.

For every (query, positive) pair, an embedding model ranks the corpus (all positives, plus an optional extra
corpus) by similarity to the query and keeps the ``num_negatives`` closest texts that are not the pair's own
positive (``range_min``/``range_max``/``max_score``/``relative_margin`` filter out likely false negatives, as in
sentence-transformers). Rows for which too few negatives survive are dropped, and counted. The output is the
FlagEmbedding/BGE format ``{"query": str, "pos": [str], "neg": [str, ...]}`` that ``embrecipe train
--hard-negatives N`` reads; the trainer's FLOP meter counts the negatives' tokens like any other text.

Example::

    >>> from embrecipe.data.negatives import mine_negatives
    >>> stats = mine_negatives("pairs.jsonl", "runs/my-model", "pairs-neg.jsonl", num_negatives=3)  # doctest: +SKIP
    >>> stats.rows_written, stats.rows_dropped                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embrecipe.data.pairs import PairData, load_pairs
from embrecipe.errors import InputError


@dataclass(frozen=True)
class MiningStats:
    rows_in: int
    rows_written: int
    num_negatives: int
    out: str

    @property
    def rows_dropped(self) -> int:
        return self.rows_in - self.rows_written


def load_embedding_model(model: str, *, max_seq_length: int = 75) -> Any:
    """A SentenceTransformer folder as saved (e.g. an embrecipe run), else a decoder with mean pooling."""
    from sentence_transformers import SentenceTransformer

    from embrecipe.models.loading import load_sentence_transformer

    path = Path(model)
    if (path / "modules.json").exists():
        st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        st.max_seq_length = max_seq_length
        return st
    return load_sentence_transformer(model, max_seq_length=max_seq_length)


def bge_rows(queries: list[str], positives: list[str], negatives: list[list[str]]) -> list[dict[str, Any]]:
    """Parallel lists → BGE JSONL rows (``pos`` as a one-element list, as FlagEmbedding writes it)."""
    return [{"query": q, "pos": [p], "neg": list(n)} for q, p, n in zip(queries, positives, negatives, strict=True)]


def mine_negatives(
    data: str | Path | PairData,
    model: str | Any,
    out: str | Path,
    *,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    relative_margin: float | None = None,
    sampling: str = "top",
    batch_size: int = 32,
    query_prompt: str | None = None,
    doc_prompt: str | None = None,
    corpus: list[str] | None = None,
    max_seq_length: int = 75,
    seed: int = 0,
) -> MiningStats:
    """Mine ``num_negatives`` hard negatives per pair of ``data`` with ``model``; write BGE JSONL to ``out``."""
    import datasets
    import torch
    from sentence_transformers.util import mine_hard_negatives

    if num_negatives < 1:
        raise InputError(f"--num-negatives must be >= 1, got {num_negatives}")
    if sampling not in ("top", "random"):
        raise InputError(f"--sampling must be top or random, got {sampling!r}")
    pairs = data if isinstance(data, PairData) else load_pairs(data)
    candidates = len(set(pairs.positives) | set(corpus or []))
    if candidates <= num_negatives:
        raise InputError(f"{pairs.source}: {candidates} distinct candidate texts cannot give {num_negatives} "
                         f"negatives per query")
    out = Path(out)
    if out.suffix not in (".jsonl",):
        raise InputError(f"--out {out}: write the mined pairs as .jsonl (the BGE format --hard-negatives reads)")
    st = load_embedding_model(str(model), max_seq_length=max_seq_length) if isinstance(model, (str, Path)) else model
    torch.manual_seed(seed)  # "random" sampling draws from torch's RNG
    ds = datasets.Dataset.from_dict({"query": pairs.queries, "pos": pairs.positives})
    mined = mine_hard_negatives(
        ds, st, anchor_column_name="query", positive_column_name="pos", corpus=corpus,
        range_min=range_min, range_max=range_max, max_score=max_score, relative_margin=relative_margin,
        num_negatives=num_negatives, sampling_strategy=sampling, query_prompt=query_prompt,
        corpus_prompt=doc_prompt, output_format="n-tuple", batch_size=batch_size, use_faiss=False,
        verbose=False,
    )
    neg_cols = [f"negative_{i}" for i in range(1, num_negatives + 1)]
    neg_lists = [list(mined[c]) for c in neg_cols] if len(mined) else []
    negatives = [[col[i] for col in neg_lists] for i in range(len(mined))]
    rows = bge_rows(list(mined["query"]), list(mined["pos"]), negatives) if len(mined) else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)  # never a half-written file under the final name
    return MiningStats(rows_in=len(pairs), rows_written=len(rows), num_negatives=num_negatives, out=str(out))
