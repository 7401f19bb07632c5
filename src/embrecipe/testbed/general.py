"""The general-purpose sample: a few-MB slice of the offline corpus that ships with embrecipe.

Why: the shipped docstring pairs teach a model to embed code documentation; the demo and the README's examples
should teach general-purpose embeddings. This sample takes, per corpus split, the same number of pairs from
each of the four big sources of ``embrecipe testbed corpus`` — Bible paraphrases, chit-chat turn → reply,
dictionary headword → definition, and docstrings — so no one domain dominates.

The corpus's split by source is kept: rows are drawn from the corpus's own train/validation/test files
(a Bible book, a conversation, a dictionary letter or a package is wholly in one split), so no evaluated
text's source was trained on. None of it is evaluation data (the corpus build refuses STS/MTEB/… files).

Deterministic: rows of each (split, source) are taken in file order at evenly spaced positions (no RNG);
gzip with mtime 0. ``PROVENANCE.json`` records the corpus's content hash, the counts and each file's sha256.
Rebuild with ``embrecipe testbed sample --out DIR`` from a built corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from embrecipe.errors import EmbrecipeError
from embrecipe.resources import resource_path, shipped_split
from embrecipe.testbed import corpus

SOURCES = ("bible", "chitchat", "dictionary", "docstrings")
PER_SOURCE = {"train": 6000, "validation": 500, "test": 500}
SPLITS = ("train", "validation", "test")
NAME = "general-sample-v1"


def shipped_dir() -> Path:
    return resource_path("general")


def general_pairs_path(split: str = "train") -> Path:
    """The shipped general-purpose sample file of ``split`` (gzip JSONL: query, pos, source)."""
    return shipped_split("general", split, what="sample file", rebuild="embrecipe testbed sample")


def evenly_spaced(rows: list[Any], n: int) -> list[Any]:
    """``n`` rows at evenly spaced positions (all of them when there are fewer), in their order.

    >>> evenly_spaced(list(range(10)), 3)
    [0, 3, 6]
    """
    if n >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def sample_rows(rows: Iterable[Mapping[str, Any]], per_source: int,
                sources: Iterable[str] = SOURCES) -> list[dict[str, Any]]:
    """Up to ``per_source`` rows of each source (``source.corpus_source``), sources in the given order."""
    by_source: dict[str, list[dict[str, Any]]] = {s: [] for s in sources}
    for r in rows:
        src = (r.get("source") or {}).get("corpus_source")
        if src in by_source:
            by_source[src].append(dict(r))
    out: list[dict[str, Any]] = []
    for src, rs in by_source.items():
        if not rs:
            raise EmbrecipeError(f"the corpus has no {src!r} rows to sample")
        out += evenly_spaced(rs, per_source)
    return out


def _gzip_rows(rows: Iterable[Mapping[str, Any]]) -> bytes:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    return gzip.compress(text.encode(), mtime=0)


def write_sample(corpus_path: str | Path, out: str | Path,
                 per_source: Mapping[str, int] = PER_SOURCE) -> dict[str, Any]:
    """Sample a built corpus folder into ``out`` ({split}.jsonl.gz + PROVENANCE.json); returns the provenance."""
    from embrecipe.testbed.pairs import read_pairs

    src = Path(corpus_path)
    prov_in = json.loads((src / "PROVENANCE.json").read_text())
    bad = corpus.verify_corpus(src)
    if bad:
        raise EmbrecipeError(f"corpus {src}: does not verify ({bad[0]}); rebuild it with embrecipe testbed corpus")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for split in SPLITS:
        rows = sample_rows(read_pairs(src / f"{split}.jsonl.gz"), per_source[split])
        data = _gzip_rows(rows)
        tmp = out / f".{split}.jsonl.gz.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / f"{split}.jsonl.gz")
        files[f"{split}.jsonl.gz"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                      "pairs": len(rows)}
        counts[split] = {s: sum(1 for r in rows if r["source"]["corpus_source"] == s) for s in SOURCES}
    prov = {
        "name": NAME,
        "description": "General-purpose sample of the offline corpus (embrecipe.testbed.general): per split, "
                       "evenly spaced rows of each source, from the corpus's own split files",
        "build_command": f"embrecipe testbed sample --out DIR  (corpus: {prov_in.get('name')})",
        "corpus": {"name": prov_in.get("name"), "content_hash": prov_in.get("content_hash")},
        "per_source": dict(per_source),
        "counts": counts,
        "files": files,
    }
    (out / "PROVENANCE.json").write_text(json.dumps(prov, indent=2) + "\n")
    return prov
