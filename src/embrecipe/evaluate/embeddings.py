"""Split evaluation, for a GPU machine without ``mteb``: :func:`embed_eval_texts` encodes the held-out pairs and
computes the held-out loss there (torch / transformers / sentence-transformers only) into one ``.npz``, and
:func:`evaluate_embeddings` scores the local tasks from that file here, through mteb, without the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.evaluate.scoring import (
    DEFAULT_MAX_SEQ_LENGTH,
    heldout,
    load_model,
    package_version,
    run_mteb,
    write_record,
)
from embrecipe.evaluate.tasks import load_split, tasks_for

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

_VERSIONED = ("embrecipe", "sentence-transformers", "transformers", "torch")


def _texts_sha256(rows: Sequence[Mapping[str, Any]]) -> str:
    """sha256 over every row's query and pos, in order (length-prefixed, so the split between texts counts)."""
    h = hashlib.sha256()
    for r in rows:
        for text in (r["query"], r["pos"]):
            b = str(text).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def embed_eval_texts(
    model: str | os.PathLike[str] | SentenceTransformer,
    out_npz: str | os.PathLike[str],
    *,
    split: str = "test",
    pairs: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 1024,
    encode_batch_size: int = 256,
    max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
    pooling: str = "mean",
) -> Path:
    """Encode the held-out pairs and compute the held-out loss into ``out_npz``, for
    :func:`evaluate_embeddings` to score elsewhere. Needs no ``mteb``: runs where only torch, transformers and
    sentence-transformers are installed.

    The file holds ``query`` and ``pos`` ([n, d] float32, not normalised, one row per pair), ``heldout_loss``,
    ``heldout_batch_size`` (``batch_size`` as in :func:`evaluate`: pairs per batch of in-batch negatives) and
    ``meta`` (JSON: split, pairs, limit, num_pairs, max_seq_length, model, a sha256 of the texts, versions).
    ``encode_batch_size`` is only the encoder's batch. Written atomically (temporary file, then renamed).
    """

    import numpy as np

    rows = load_split(split, pairs, limit)
    if isinstance(model, str | os.PathLike):
        model_name = str(model)
        st = load_model(model, max_seq_length=max_seq_length, pooling=pooling)
        import torch

        if torch.cuda.is_available():  # this half is meant for the GPU box; load_model() loads onto the CPU
            st.to("cuda")
    else:
        st = model
        model_name = st.model_card_data.model_name or type(st).__name__

    def encode(texts: list[str]) -> Any:
        return np.asarray(st.encode(texts, batch_size=encode_batch_size, convert_to_numpy=True,
                                    normalize_embeddings=False, show_progress_bar=False), dtype=np.float32)

    queries = [r["query"] for r in rows]
    positives = [r["pos"] for r in rows]
    # mteb strips retrieval documents (``_corpus_to_dict``): texts that strip differently are encoded as mteb
    # will ask for them, so scores match evaluate() on any data.
    known = set(queries) | set(positives)
    extra = sorted({t.strip() for t in known} - known)
    q, p = encode(queries), encode(positives)
    x = encode(extra) if extra else np.zeros((0, q.shape[1]), dtype=np.float32)
    loss = heldout(st, rows, batch_size=batch_size)
    meta = {
        "split": split, "pairs": str(pairs) if pairs else None, "limit": limit, "num_pairs": len(rows),
        "max_seq_length": st.max_seq_length, "model": model_name, "pooling": pooling,
        "similarity_fn_name": str(getattr(st, "similarity_fn_name", None) or "cosine"),
        "texts_sha256": _texts_sha256(rows), "extra_texts": extra,
        "versions": {n: package_version(n) for n in _VERSIONED},
    }
    out = Path(out_npz)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, query=q, pos=p, extra=x, heldout_loss=np.float64(loss),
                 heldout_batch_size=np.int64(min(batch_size, len(rows))), meta=np.array(json.dumps(meta)))
    tmp.replace(out)
    return out


def _read_embeddings(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import zipfile

    import numpy as np

    if not path.is_file():
        raise InputError(f"embeddings {path}: not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        for key in ("query", "pos", "heldout_loss", "heldout_batch_size"):
            if key not in arrays:
                raise KeyError(key)
    except KeyError as exc:
        raise InputError(f"embeddings {path}: no {exc.args[0]!r} entry (not written by embed_eval_texts)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"embeddings {path}: not a readable .npz from embed_eval_texts "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(meta, dict) or "texts_sha256" not in meta:
        raise InputError(f"embeddings {path}: its meta has no texts_sha256 (not written by embed_eval_texts)")
    return arrays, meta


def _lookup_encoder(table: Mapping[str, Any], *, name: str, similarity: str, source: Path) -> Any:
    """An mteb encoder (``AbsEncoder``) that answers from ``table`` (text → vector) instead of running a model."""
    import numpy as np
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    dim = len(next(iter(table.values())))
    meta = ModelMeta.create_empty(overwrites={
        "name": name if "/" in name else f"local/{name}", "revision": "precomputed", "embed_dim": dim,
        "similarity_fn_name": ScoringFunction(similarity), "modalities": ["text"]})

    class PrecomputedEncoder(AbsEncoder):
        def __init__(self) -> None:
            self.model = None
            self.mteb_model_meta = meta

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                   prompt_type: Any = None, **kwargs: Any) -> Any:
            texts = [t for batch in inputs for t in batch["text"]]
            missing = [t for t in texts if t not in table]
            if missing:
                raise InputError(
                    f"embeddings {source}: task {task_metadata.name} needs {len(missing)} text(s) that were not "
                    f"embedded (e.g. {missing[0][:60]!r}); the file holds only the held-out pairs' texts, so "
                    "only the local tasks can be scored from it")
            if not texts:
                return np.zeros((0, dim), dtype=np.float32)
            return np.stack([table[t] for t in texts])

    return PrecomputedEncoder()


def evaluate_embeddings(
    npz: str | os.PathLike[str],
    *,
    split: str | None = None,
    pairs: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    tasks: str = "local",
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """:func:`evaluate`'s record from a file of :func:`embed_eval_texts`, without the model.

    ``split``, ``pairs`` and ``limit`` default to the values stored in the file; the reloaded rows must hash
    to the stored texts' sha256 (else :class:`InputError`). The task texts are looked up in the stored vectors,
    so only tasks built from the held-out pairs (``local``, ``LocalDocRetrieval``, ``LocalDocRelatedness``) can
    run. ``name`` names the model in the record and in mteb's cache (default: the model folder's name).
    """

    start = time.time()
    path = Path(npz)
    arrays, meta = _read_embeddings(path)
    split = split or meta.get("split") or "test"
    pairs = pairs if pairs is not None else meta.get("pairs")
    limit = limit if limit is not None else meta.get("limit")
    rows = load_split(split, pairs, limit)
    if _texts_sha256(rows) != meta["texts_sha256"]:
        raise InputError(f"embeddings {path}: its texts do not match the held-out pairs "
                         f"({pairs or f'testbed:{split}'}, limit {limit}, {len(rows)} pairs; the file has "
                         f"{meta.get('num_pairs')}): embed them again or pass the split/pairs/limit used")
    q, p, x = arrays["query"], arrays["pos"], arrays.get("extra")
    extra = list(meta.get("extra_texts") or [])
    if q.shape[0] != len(rows) or p.shape != q.shape or q.ndim != 2 or (
            extra and (x is None or x.shape != (len(extra), q.shape[1]))):
        raise InputError(f"embeddings {path}: arrays of shape {q.shape} / {p.shape} do not fit {len(rows)} pairs")
    table: dict[str, Any] = {}
    for texts, vecs in (([r["query"] for r in rows], q), ([r["pos"] for r in rows], p), (extra, x)):
        for t, v in zip(texts, vecs if texts and vecs is not None else (), strict=True):
            table.setdefault(t, v)
    task_list = tasks_for(tasks, rows)
    model_name = str(meta.get("model") or path.stem)
    encoder = _lookup_encoder(table, name=name or Path(model_name).name or path.stem,
                              similarity=meta.get("similarity_fn_name") or "cosine", source=path)
    out_dir = Path(out) if out else None
    results = run_mteb(encoder, task_list, out_dir / "mteb" if out_dir else None)
    versions = dict(meta.get("versions") or {})  # those that computed the embeddings ...
    versions.update({n: package_version(n) for n in ("embrecipe", "mteb")})  # ... and the scorer
    record = {
        "model": model_name,
        **({"name": name} if name else {}),
        "embeddings": str(path),
        "pairs": str(pairs) if pairs else f"testbed:{split}",
        "num_pairs": len(rows),
        "max_seq_length": meta.get("max_seq_length"),
        "heldout_loss": float(arrays["heldout_loss"]),
        "heldout_batch_size": int(arrays["heldout_batch_size"]),
        "tasks": results,
        "versions": versions,
        "seconds": round(time.time() - start, 1),
    }
    if out_dir:
        write_record(out_dir, record)
    return record
