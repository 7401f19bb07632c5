"""Contrastive pairs: load, validate strictly, split.

Accepted inputs (each row is one ``(query, positive[, negatives])`` example):

- JSONL (optionally ``.gz``) in the FlagEmbedding/BGE format ``{"query": str, "pos": str | [str], "neg": [str]}`` (``pos`` one text: a string or a one-element list; a longer list is an error naming file:line);
- CSV/TSV or Parquet with ``(anchor, positive[, negative])`` or ``(query, pos[, neg])`` columns;
- a local Hugging Face ``datasets`` directory (``save_to_disk``), a ``DatasetDict`` choosing ``split``.

Column names can be given explicitly; otherwise the first match of :data:`QUERY_COLUMNS`,
:data:`POSITIVE_COLUMNS`, :data:`NEGATIVE_COLUMNS` is used. Every malformed row is reported as
``FILE:LINE: what is wrong``.

Example::

    >>> from embrecipe.data.pairs import load_pairs          # doctest: +SKIP
    >>> pairs = load_pairs("train.jsonl")              # doctest: +SKIP
    >>> train, val = pairs.split_off(0.05, seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError

QUERY_COLUMNS = ("query", "anchor", "sentence1", "question", "text1")
POSITIVE_COLUMNS = ("pos", "positive", "sentence2", "answer", "text2", "document")
NEGATIVE_COLUMNS = ("neg", "negative", "negatives", "hard_negative")


@dataclass
class PairData:
    """Parallel lists of queries, positives and (optionally) a fixed number of hard negatives per pair."""

    queries: list[str]
    positives: list[str]
    negatives: list[list[str]] = field(default_factory=list)  # one list per pair, or empty
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.positives):
            raise InputError(f"{self.source}: {len(self.queries)} queries but {len(self.positives)} positives")
        if self.negatives and len(self.negatives) != len(self.queries):
            raise InputError(f"{self.source}: negatives given for {len(self.negatives)} of {len(self.queries)} rows")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def num_negatives(self) -> int:
        return min((len(n) for n in self.negatives), default=0)

    def columns(self, hard_negatives: int = 0) -> list[list[str]]:
        """Text columns for the loss: queries, positives, then ``hard_negatives`` negative columns."""
        if hard_negatives > self.num_negatives:
            raise InputError(
                f"{self.source}: asked for {hard_negatives} hard negatives per pair but some rows have only "
                f"{self.num_negatives}"
            )
        cols = [self.queries, self.positives]
        cols += [[n[i] for n in self.negatives] for i in range(hard_negatives)]
        return cols

    def subset(self, indices: Sequence[int], source: str | None = None) -> PairData:
        return PairData(
            [self.queries[i] for i in indices],
            [self.positives[i] for i in indices],
            [self.negatives[i] for i in indices] if self.negatives else [],
            source or self.source,
        )

    def split_off(self, fraction: float, seed: int = 0) -> tuple[PairData, PairData]:
        """(rest, held-out) with ``fraction`` of the rows held out, chosen reproducibly by ``seed``."""
        if not 0 < fraction < 1:
            raise InputError(f"validation fraction must be in (0, 1), got {fraction}")
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        n_val = max(1, int(round(fraction * len(self))))
        val, rest = sorted(idx[:n_val]), sorted(idx[n_val:])
        return self.subset(rest, f"{self.source}[train]"), self.subset(val, f"{self.source}[validation]")

    def fingerprint(self) -> str:
        """Content hash (order-sensitive), for run keys: same file content ⇒ same fingerprint."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.queries[i].encode())
            h.update(b"\0")
            h.update(self.positives[i].encode())
            h.update(b"\0")
            if self.negatives:
                h.update("\0".join(self.negatives[i]).encode())
            h.update(b"\1")
        return h.hexdigest()[:16]


# Pairs the tokens-per-pair estimate tokenizes: spread across the file, 2000 pin the mean to well under 1 %.
TOKENS_SAMPLE = 2000


def spread_indices(n: int, sample: int | None = TOKENS_SAMPLE) -> list[int]:
    """``sample`` row indices spread evenly over ``n`` rows (every row when ``sample`` is None or >= ``n``).

    >>> spread_indices(10, 4)
    [0, 2, 5, 7]
    """
    k = n if sample is None else min(int(sample), n)
    return [i * n // k for i in range(k)]


def with_prompts(columns: Sequence[Sequence[str]], query_prompt: str | None,
                 doc_prompt: str | None) -> list[list[str]]:
    """The texts a run trains on: the query prompt prepended to the first column (queries), the document prompt
    to the others (positives, negatives). The trainer meters these tokens and the planner plans with them.

    >>> with_prompts([["q"], ["p"]], "query: ", None)
    [['query: q'], ['p']]
    """
    prompts = [query_prompt] + [doc_prompt] * (len(columns) - 1)
    return [[p + t for t in col] if p else list(col) for p, col in zip(prompts, columns, strict=True)]


def estimate_tokens_per_pair(pairs: PairData | str | os.PathLike[str] | Sequence[Sequence[str]],
                             tokenizer: Any = None, *, max_seq_length: int = 75, hard_negatives: int = 0,
                             sample: int | None = TOKENS_SAMPLE,
                             tokenize: Callable[[list[str]], Sequence[Sequence[int]]] | None = None) -> float:
    """Mean tokens per pair (query, positive and ``hard_negatives`` negatives, each truncated at
    ``max_seq_length``) over ``sample`` pairs spread evenly across the data; every pair when ``sample`` is None.

    The one estimate of tokens per pair (the sweep's cells, the planner's ``--data``, the trainer's step plan).
    Spread, not the file's head: files are often sorted (by source, by length), and the first 2000 pairs of the
    testbed's train split average 41.7 tokens against 49.5 overall, which made study v1's planned steps 16 %
    too many. ``pairs``: pairs, their file, or the text columns themselves (the trainer's, prompts prepended);
    ``tokenizer``: a Hugging Face tokenizer or the checkpoint (path or hub id) whose tokenizer to load;
    ``tokenize``: texts -> token ids instead (the trainer's cached tokenizer).
    """
    if isinstance(pairs, (str, os.PathLike)):
        pairs = load_pairs(Path(pairs))
    columns = pairs.columns(hard_negatives) if isinstance(pairs, PairData) else pairs
    if tokenize is None:
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            from embrecipe.models.refs import resolve_model

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(str(tokenizer)))
        tok = tokenizer

        def tokenize(texts: list[str]) -> Sequence[Sequence[int]]:
            return tok(texts, truncation=True, max_length=max_seq_length, padding=False)["input_ids"]

    idx = spread_indices(len(columns[0]), sample)
    if not idx:
        raise InputError("no pairs to count tokens in")
    texts = [list(col) if len(idx) == len(col) else [col[i] for i in idx] for col in columns]
    return sum(len(ids) for col in texts for ids in tokenize(col)) / len(idx)


def unique_pairs(data: PairData) -> int:
    """How many distinct (query, positive) pairs ``data`` holds."""
    return len(set(zip(data.queries, data.positives, strict=True)))


def duplicate_fraction(data: PairData) -> float:
    """Fraction of the rows whose (query, positive) pair already occurred in an earlier row (0 for no repeats)."""
    if len(data) == 0:
        return 0.0
    return 1.0 - unique_pairs(data) / len(data)


def _pick(columns: Iterable[str], wanted: str | None, candidates: Sequence[str], what: str, where: str,
          required: bool = True) -> str | None:
    cols = list(columns)
    if wanted is not None:
        if wanted not in cols:
            raise InputError(f"{where}: no column {wanted!r} for the {what}; columns are: {', '.join(cols)}")
        return wanted
    for c in candidates:
        if c in cols:
            return c
    if required:
        raise InputError(
            f"{where}: no {what} column (looked for {', '.join(candidates)}); columns are: {', '.join(cols)}"
        )
    return None


def _text(value: Any, what: str, where: str) -> str:
    if isinstance(value, list):
        if len(value) == 0:
            raise InputError(f"{where}: {what!r} is an empty list")
        if len(value) > 1:
            # Training uses one positive per pair; silently keeping the first would drop the others.
            raise InputError(f"{where}: {what!r} holds {len(value)} texts; give one (a string or a one-element "
                             "list), or write one row per positive")
        value = value[0]  # BGE data stores positives as a (usually one-element) list
    if not isinstance(value, str):
        raise InputError(f"{where}: {what!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: {what!r} is empty")
    return value


def _negatives(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"{where}: 'neg' must be a list of non-empty strings")
    return list(value)


def _rows_from_records(records: Iterator[tuple[str, dict[str, Any]]], source: str, query_column: str | None,
                       pos_column: str | None, neg_column: str | None) -> PairData:
    queries: list[str] = []
    positives: list[str] = []
    negatives: list[list[str]] = []
    qc = pc = nc = None
    any_neg = False
    for where, rec in records:
        if qc is None:
            qc = _pick(rec.keys(), query_column, QUERY_COLUMNS, "query", where)
            pc = _pick(rec.keys(), pos_column, POSITIVE_COLUMNS, "positive", where)
            nc = _pick(rec.keys(), neg_column, NEGATIVE_COLUMNS, "negatives", where, required=False)
        if qc not in rec:
            raise InputError(f"{where}: missing {qc!r}")
        if pc not in rec:
            raise InputError(f"{where}: missing {pc!r}")
        queries.append(_text(rec[qc], qc, where))
        positives.append(_text(rec[pc], pc, where))
        negs = _negatives(rec.get(nc), where) if nc else []
        any_neg = any_neg or bool(negs)
        negatives.append(negs)
    if not queries:
        raise InputError(f"{source}: no rows")
    return PairData(queries, positives, negatives if any_neg else [], source)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                yield where, rec
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def _table_records(path: Path, frame: Any, header_lines: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, rec in enumerate(frame.to_dict(orient="records")):
        rec = {k: (None if _isnan(v) else _maybe_list(v)) for k, v in rec.items()}
        yield f"{path}:{i + 1 + header_lines}", rec


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def _maybe_list(v: Any) -> Any:
    if hasattr(v, "tolist") and not isinstance(v, str):
        return v.tolist()
    return v


def load_pairs(
    path: str | Path,
    *,
    query_column: str | None = None,
    pos_column: str | None = None,
    neg_column: str | None = None,
    split: str | None = None,
) -> PairData:
    """Load and validate pairs from JSONL / CSV / TSV / Parquet / a local ``datasets`` directory."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data {path}: no such file or directory")
    name = path.name.lower()
    cols = dict(query_column=query_column, pos_column=pos_column, neg_column=neg_column)
    if path.is_dir():
        return _load_datasets_dir(path, split, **cols)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        return _rows_from_records(_jsonl_records(path), str(path), **cols)
    if name.endswith((".csv", ".tsv")):
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", dtype=str, keep_default_na=False)
        except Exception as exc:
            raise InputError(f"{path}: cannot parse as {'TSV' if name.endswith('.tsv') else 'CSV'} ({exc})") from None
        frame = frame.replace("", None)
        return _rows_from_records(_table_records(path, frame, header_lines=1), str(path), **cols)
    if name.endswith(".parquet"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise InputError(f"{path}: cannot read as Parquet ({exc})") from None
        return _rows_from_records(_table_records(path, frame, header_lines=0), f"{path} (row)", **cols)
    raise InputError(f"data {path}: unknown format; use .jsonl[.gz], .csv, .tsv, .parquet or a datasets directory")


def _load_datasets_dir(path: Path, split: str | None, **cols: Any) -> PairData:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(f"data {path}: not a saved Hugging Face datasets directory ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        chosen = split or ("train" if "train" in ds else None)
        if chosen not in ds:
            raise InputError(f"data {path}: choose a split with --split ({', '.join(ds)})")
        ds = ds[chosen]
    source = f"{path}" + (f"[{split}]" if split else "")
    records = ((f"{source} row {i + 1}", rec) for i, rec in enumerate(ds))
    return _rows_from_records(records, source, **cols)
