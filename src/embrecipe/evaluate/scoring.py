"""Scoring a model: the held-out contrastive loss, the tasks of :mod:`embrecipe.evaluate.tasks` through the real
``mteb`` 2 (its metrics: nDCG@10, Spearman, ...), and the record and table of the results.

Results go to ``OUT/mteb`` (mteb's result cache layout) and ``OUT/eval.json`` (embrecipe's record), and
:func:`format_table` prints them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.evaluate.tasks import load_split, tasks_for

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

DEFAULT_MAX_SEQ_LENGTH = 75


def package_version(package: str) -> str:
    """Installed version of ``package``; a source checkout on PYTHONPATH (e.g. a GPU box) has no metadata."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed" if package != "embrecipe" else f"{__import__('embrecipe').__version__} (source)"


# --------------------------------------------------------------------------------------------------- model
def load_model(path: str | os.PathLike[str], *, max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
               pooling: str = "mean") -> SentenceTransformer:
    """A SentenceTransformer from ``path``: a saved SentenceTransformer (``modules.json``) as it is, or a plain
    HF decoder checkpoint with ``pooling`` (mean by default). ``max_seq_length`` (75, the training length)
    truncates every model the same way so numbers are comparable; None keeps the model's own."""
    from embrecipe.models.loading import load_sentence_transformer

    p = Path(path)
    if not p.exists():
        raise InputError(f"model {path}: no such directory")
    if (p / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(p), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"model {path}: cannot load it as a SentenceTransformer ({exc})") from exc
        if max_seq_length:
            model.max_seq_length = max_seq_length
        return model
    return load_sentence_transformer(p, pooling=pooling, max_seq_length=max_seq_length or 512)


def heldout(model: SentenceTransformer, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 1024,
            scale: float = 40.0) -> float:
    """Held-out symmetric InfoNCE (the training objective) on ``rows``."""
    from embrecipe.training.loss import heldout_loss

    prompts = getattr(model, "prompts", None) or {}  # a model trained with prompts is scored with them
    return float(heldout_loss(model, [r["query"] for r in rows], [r["pos"] for r in rows],
                              batch_size=batch_size, scale=scale, query_prompt=prompts.get("query"),
                              doc_prompt=prompts.get("document")))


# --------------------------------------------------------------------------------------------- running
def run_mteb(model: SentenceTransformer | Any, tasks: Sequence[Any], out: Path | None = None,
             batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Run ``tasks`` with mteb; results also land in ``out`` (mteb's cache layout) when given. ``model`` is a
    SentenceTransformer or anything ``mteb.evaluate`` takes (e.g. :func:`_lookup_encoder`'s encoder).
    Returns ``{task: {"main_score", "metric", "scores"}}``."""
    import mteb

    cache = mteb.ResultCache(cache_path=out) if out else None
    metrics = {t.metadata.name: t.metadata.main_score for t in tasks}
    result = mteb.evaluate(model, tasks=list(tasks), cache=cache, overwrite_strategy="always",
                           encode_kwargs={"batch_size": batch_size}, show_progress_bar=False)
    scores: dict[str, dict[str, Any]] = {}
    for tr in result.task_results:
        split = tr.scores.get("test") or next(iter(tr.scores.values()))
        entry = split[0] if split else {}
        scores[tr.task_name] = {
            # Mean over every evaluated split and subset, as MTEB's leaderboard reports a task.
            "main_score": float(tr.get_score()) if entry else math.nan,
            "metric": metrics.get(tr.task_name, "main_score"),
            # nAUC calibration metrics triple the record's size and are not used by embrecipe.
            "scores": {k: v for k, v in entry.items() if isinstance(v, int | float) and not k.startswith("nauc")},
        }
    return scores


def write_record(out_dir: Path, record: Mapping[str, Any]) -> None:
    """``OUT/eval.json``, atomically (temporary file, then renamed)."""
    from embrecipe.jsonio import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "eval.json", record)


def evaluate(
    model_path: str | os.PathLike[str],
    *,
    split: str = "test",
    pairs: str | os.PathLike[str] | None = None,
    tasks: str = "local",
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 1024,
    max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
    pooling: str = "mean",
    model: SentenceTransformer | None = None,
) -> dict[str, Any]:
    """Held-out loss + MTEB tasks for one model; writes ``OUT/eval.json`` and ``OUT/mteb`` when ``out``."""

    start = time.time()
    rows = load_split(split, pairs, limit)
    task_list = tasks_for(tasks, rows)
    st = model if model is not None else load_model(model_path, max_seq_length=max_seq_length, pooling=pooling)
    if not st.model_card_data.model_name:
        # mteb files results under the model's name; without one every local model shares one folder.
        st.model_card_data.model_name = f"local/{Path(model_path).resolve().name}"
    out_dir = Path(out) if out else None
    loss = heldout(st, rows, batch_size=batch_size)
    results = run_mteb(st, task_list, out_dir / "mteb" if out_dir else None)
    record = {
        "model": str(model_path),
        "pairs": str(pairs) if pairs else f"testbed:{split}",
        "num_pairs": len(rows),
        "max_seq_length": st.max_seq_length,
        "heldout_loss": loss,
        "heldout_batch_size": min(batch_size, len(rows)),
        "tasks": results,
        "versions": {p: package_version(p) for p in ("embrecipe", "mteb", "sentence-transformers",
                                                                "transformers", "torch")},
        "seconds": round(time.time() - start, 1),
    }
    if out_dir:
        write_record(out_dir, record)
    return record


def format_table(records: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """A markdown table: one row per record (model), held-out loss and each task's main score."""
    if isinstance(records, Mapping):
        records = [records]
    task_names = list(dict.fromkeys(t for r in records for t in r.get("tasks", {})))
    head = ["model", "held-out loss"] + [
        f"{t} ({next(r['tasks'][t]['metric'] for r in records if t in r.get('tasks', {}))})" for t in task_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in records:
        cells = [str(r.get("name") or r["model"]), f"{r['heldout_loss']:.4f}"]
        cells += [f"{r['tasks'][t]['main_score']:.4f}" if t in r.get("tasks", {}) else "–" for t in task_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
