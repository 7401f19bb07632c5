"""Evaluation of an embedding model: held-out contrastive loss and MTEB tasks through the real ``mteb`` 2.

Three kinds of tasks:

- **local** (offline, the default) — built from the testbed pairs' held-out split
  (:func:`embrecipe.testbed.pairs.testbed_pairs_path`) or from the user's own files:

  * ``LocalDocRetrieval`` (nDCG@10): each pair's query searches a corpus made of every positive of the split;
    its own positive is the one relevant document.
  * ``LocalDocRelatedness`` (Spearman of cosine similarity): text pairs graded by *provenance* — 3 = the two
    halves of one pair, 2 = same module, 1 = same package, 0 = different packages. This is a structural
    proxy, **not** human similarity judgments: no honestly graded STS data is available offline. Users with
    real STS data pass it with ``sts:FILE``.
  * ``retrieval:DIR`` — a BEIR-style folder: ``corpus.jsonl`` (``{"_id"|"id", "text", "title"?}``),
    ``queries.jsonl`` (``{"_id"|"id", "text"}``) and ``qrels.tsv`` (``query-id  corpus-id  score``, tab
    separated, header optional) or ``qrels.jsonl`` (``{"query-id", "corpus-id", "score"}``).
  * ``sts:FILE`` — JSONL (``{"sentence1", "sentence2", "score"}``), or TSV/CSV with those column headers.

- **paper15** — the study's 15 MTEB tasks (:data:`PAPER_TASKS`), fetched by mteb from the Hugging Face Hub;
- any other MTEB task by name.

Hub tasks need a network: offline (``HF_HUB_OFFLINE=1`` or no connection within a few seconds) they fail at
once with one line instead of hanging in download retries.

Results go to ``OUT/mteb`` (mteb's result cache layout) and ``OUT/eval.json`` (embrecipe's record), and
:func:`format_table` prints them.

Split evaluation, for a GPU machine without ``mteb``: :func:`embed_eval_texts` encodes the held-out pairs and
computes the held-out loss there (torch / transformers / sentence-transformers only) into one ``.npz``, and
:func:`evaluate_embeddings` scores the local tasks from that file here, through mteb, without the model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EmbrecipeError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

PAPER_TASKS = (
    "MedrxivClusteringS2S", "StackExchangeClusteringP2P", "ArguAna", "CQADupstackGisRetrieval",
    "CQADupstackAndroidRetrieval", "QuoraRetrieval", "BIOSSES", "SICK-R", "STS22", "SummEval",
    "ImdbClassification", "Banking77Classification", "AmazonReviewsClassification",
    "SprintDuplicateQuestions", "StackOverflowDupQuestions",
)
LOCAL_TASKS = ("LocalDocRetrieval", "LocalDocRelatedness")
DEFAULT_MAX_SEQ_LENGTH = 75
RELATEDNESS_PER_LEVEL = 250

_COMMON_METADATA: dict[str, Any] = {
    "reference": None,
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": None,
    "dialect": [],
    "domains": ["Programming", "Written"],
    "task_subtypes": [],
    "license": "not specified",
    "annotations_creators": "derived",
    "modalities": ["text"],
    "sample_creation": "found",
    "bibtex_citation": "",
}


def _version(package: str) -> str:
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
    from .modeling import load_sentence_transformer

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


# ------------------------------------------------------------------------------------------ pairs / loss
def load_split(split: str = "test", pairs: str | os.PathLike[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"query", "pos", "source"?}`` of ``pairs`` (a JSONL[.gz] file) or the shipped testbed split;
    ``limit`` keeps an evenly spaced subset of that many rows (deterministic)."""
    from .testbed.pairs import read_pairs, testbed_pairs_path

    path = Path(pairs) if pairs else testbed_pairs_path(split)
    if not path.is_file():
        raise InputError(f"pairs file {path}: not found")
    rows = read_pairs(path)
    if limit is not None and limit < len(rows):
        # An even stride, not the first N: files are ordered by package, and a prefix would be one package.
        rows = [rows[i * len(rows) // limit] for i in range(max(limit, 0))]
    if len(rows) < 2:
        raise InputError(f"pairs file {path}: needs at least 2 pairs for in-batch negatives")
    return rows


def heldout(model: SentenceTransformer, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 1024,
            scale: float = 40.0) -> float:
    """Held-out symmetric InfoNCE (the training objective) on ``rows``."""
    from .loss import heldout_loss

    prompts = getattr(model, "prompts", None) or {}  # a model trained with prompts is scored with them
    return float(heldout_loss(model, [r["query"] for r in rows], [r["pos"] for r in rows],
                              batch_size=batch_size, scale=scale, query_prompt=prompts.get("query"),
                              doc_prompt=prompts.get("document")))


# ------------------------------------------------------------------------------------------- local tasks
def _metadata(name: str, type_: str, main_score: str, description: str, path: str) -> Any:
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(name=name, description=description, type=type_, main_score=main_score,
                        dataset={"path": path, "revision": "1"}, **_COMMON_METADATA)


def retrieval_task(name: str, queries: Mapping[str, str], corpus: Mapping[str, str],
                   qrels: Mapping[str, Mapping[str, int]], *, description: str = "",
                   titles: Mapping[str, str] | None = None) -> Any:
    """An mteb ``AbsTaskRetrieval`` over in-memory data (ids → texts; qrels: query id → {doc id: grade})."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    missing_q = [q for q in qrels if q not in queries]
    missing_d = [d for rel in qrels.values() for d in rel if d not in corpus]
    if missing_q or missing_d:
        raise InputError(f"task {name}: qrels name {len(missing_q)} unknown query ids and {len(missing_d)} "
                         f"unknown document ids (e.g. {(missing_q + missing_d)[0]!r})")
    if not qrels:
        raise InputError(f"task {name}: no relevance judgements")
    q_ds = Dataset.from_dict({"id": list(queries), "text": list(queries.values())})
    c_ds = Dataset.from_dict({"id": list(corpus), "text": list(corpus.values()),
                              "title": [(titles or {}).get(k, "") for k in corpus]})
    split = {"queries": q_ds, "corpus": c_ds, "relevant_docs": {q: dict(r) for q, r in qrels.items()},
             "top_ranked": None}

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True

    meta = _metadata(name, "Retrieval", "ndcg_at_10", description or f"Local retrieval task {name}.",
                     f"local/{name}")
    cls = type(f"_{name}", (AbsTaskRetrieval,), {"metadata": meta, "load_data": load_data})
    return cls()


def sts_task(name: str, sentence1: Sequence[str], sentence2: Sequence[str], scores: Sequence[float], *,
             description: str = "") -> Any:
    """An mteb ``AbsTaskSTS`` over in-memory sentence pairs with graded similarity ``scores``."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS

    if not (len(sentence1) == len(sentence2) == len(scores)) or len(scores) < 3:
        raise InputError(f"task {name}: needs ≥3 rows with sentence1, sentence2 and score")
    if len(set(scores)) < 2:
        raise InputError(f"task {name}: all scores are equal, Spearman correlation is undefined")
    data: dict[str, list[Any]] = {"sentence1": list(sentence1), "sentence2": list(sentence2),
                                  "score": [float(s) for s in scores]}

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = DatasetDict({"test": Dataset.from_dict(data)})
        self.data_loaded = True

    meta = _metadata(name, "STS", "cosine_spearman", description or f"Local STS task {name}.", f"local/{name}")
    cls = type(f"_{name}", (AbsTaskSTS,), {"metadata": meta, "load_data": load_data,
                                           "min_score": min(data["score"]), "max_score": max(data["score"])})
    return cls()


def doc_retrieval_task(rows: Sequence[Mapping[str, Any]], name: str = "LocalDocRetrieval") -> Any:
    """Queries → corpus of all positives of ``rows``; each query's own positive is its one relevant doc."""
    queries = {f"q{i}": r["query"] for i, r in enumerate(rows)}
    corpus = {f"d{i}": r["pos"] for i, r in enumerate(rows)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(rows))}
    return retrieval_task(name, queries, corpus, qrels,
                          description="Docstring pairs of held-out packages: find each query's positive.")


def doc_relatedness_task(rows: Sequence[Mapping[str, Any]], name: str = "LocalDocRelatedness",
                         per_level: int | None = None, seed: int = 0) -> Any:
    """Text pairs graded 3/2/1/0 by provenance (same pair / module / package / none); see the module doc.

    Needs rows with ``source.package`` and ``source.module``. Sampling is seeded, so the task is fixed for
    a given split. ``per_level`` defaults to a quarter of the rows, at most :data:`RELATEDNESS_PER_LEVEL`,
    so the task costs about as much encoding as the retrieval task.
    """
    rng = random.Random(seed)
    if per_level is None:
        per_level = min(RELATEDNESS_PER_LEVEL, max(4, len(rows) // 4))
    items = [(r["source"]["package"], r["source"]["module"], i) for i, r in enumerate(rows)
             if isinstance(r.get("source"), Mapping) and "package" in r["source"] and "module" in r["source"]]
    if len(items) < 4:
        raise InputError(f"task {name}: needs pairs with source.package and source.module provenance")

    def text(i: int) -> str:
        r = rows[i]
        return r["query"] if rng.random() < 0.5 else r["pos"]

    by_module: dict[tuple[str, str], list[int]] = {}
    by_package: dict[str, list[int]] = {}
    for pkg, mod, i in items:
        by_module.setdefault((pkg, mod), []).append(i)
        by_package.setdefault(pkg, []).append(i)
    s1: list[str] = []
    s2: list[str] = []
    sc: list[float] = []
    seen: set[tuple[int, int, int]] = set()

    def add(a: int, b: int, level: int, text_a: str | None = None, text_b: str | None = None) -> None:
        key = (min(a, b), max(a, b), level)
        if (a == b and level != 3) or key in seen:
            return
        seen.add(key)
        s1.append(text_a if text_a is not None else text(a))
        s2.append(text_b if text_b is not None else text(b))
        sc.append(float(level))

    modules = [m for m in sorted(by_module) if len(by_module[m]) >= 2]
    packages = sorted(by_package)
    multi_module = [p for p in packages if len({mod for (pk, mod) in by_module if pk == p}) >= 2]
    for _ in range(per_level * 4):  # bounded: sparse levels simply end up with fewer pairs
        if sc.count(3.0) < per_level:
            i = rng.choice(items)[2]
            add(i, i, 3, rows[i]["query"], rows[i]["pos"])
        if modules and sc.count(2.0) < per_level:
            a, b = rng.sample(by_module[rng.choice(modules)], 2)
            add(a, b, 2)
        if multi_module and sc.count(1.0) < per_level:
            p = rng.choice(multi_module)
            a, b = rng.sample(by_package[p], 2)
            if rows[a]["source"]["module"] != rows[b]["source"]["module"]:
                add(a, b, 1)
        if len(packages) >= 2 and sc.count(0.0) < per_level:
            pa, pb = rng.sample(packages, 2)
            add(rng.choice(by_package[pa]), rng.choice(by_package[pb]), 0)
    return sts_task(name, s1, s2, sc, description=(
        "Docstring texts graded by provenance (3 same pair, 2 same module, 1 same package, 0 different "
        "packages): a structural relatedness proxy, not human similarity judgements."))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    return rows


def _read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    delimiter = "\t" if path.suffix in (".tsv", ".txt") else ","
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def _id(row: Mapping[str, Any], path: Path, n: int) -> str:
    value = row.get("_id", row.get("id"))
    if value is None:
        raise InputError(f"{path}:{n}: missing '_id' (or 'id')")
    return str(value)


def retrieval_task_from_dir(directory: str | os.PathLike[str], name: str | None = None) -> Any:
    """A retrieval task from a BEIR-style folder (see the module doc for the files)."""
    d = Path(directory)
    name = name or f"LocalRetrieval-{d.name}"
    need = [d / "corpus.jsonl", d / "queries.jsonl"]
    qrels_path = next((p for p in (d / "qrels.tsv", d / "qrels.jsonl", d / "qrels" / "test.tsv") if p.is_file()),
                      None)
    for p in need:
        if not p.is_file():
            raise InputError(f"retrieval folder {d}: {p.name} not found (needs corpus.jsonl, queries.jsonl, "
                             f"qrels.tsv)")
    if qrels_path is None:
        raise InputError(f"retrieval folder {d}: qrels.tsv (or qrels.jsonl) not found")
    corpus, titles, queries = {}, {}, {}
    for n, r in enumerate(_read_jsonl(need[0]), 1):
        i = _id(r, need[0], n)
        corpus[i] = str(r.get("text", ""))
        if r.get("title"):
            titles[i] = str(r["title"])
    for n, r in enumerate(_read_jsonl(need[1]), 1):
        queries[_id(r, need[1], n)] = str(r.get("text", ""))
    qrels: dict[str, dict[str, int]] = {}
    if qrels_path.suffix == ".jsonl":
        raw = _read_jsonl(qrels_path)
    else:
        with qrels_path.open(encoding="utf-8") as f:
            lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
        if lines and lines[0][0] in ("query-id", "query_id", "qid"):
            lines = lines[1:]
        raw = [{"query-id": x[0], "corpus-id": x[1], "score": x[2] if len(x) > 2 else 1} for x in lines]
    for n, r in enumerate(raw, 1):
        try:
            score = int(float(r.get("score", 1)))
            qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = score
        except (KeyError, ValueError) as exc:
            raise InputError(f"{qrels_path}:{n}: expected query-id, corpus-id, score ({exc})") from exc
    return retrieval_task(name, queries, corpus, qrels, titles=titles)


def sts_task_from_file(path: str | os.PathLike[str], name: str | None = None) -> Any:
    """An STS task from JSONL / TSV / CSV rows with ``sentence1``, ``sentence2`` and ``score``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"STS file {p}: not found")
    rows = _read_table(p)
    s1, s2, sc = [], [], []
    for n, r in enumerate(rows, 1):
        try:
            s1.append(str(r["sentence1"]))
            s2.append(str(r["sentence2"]))
            sc.append(float(r["score"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{p}:{n}: expected sentence1, sentence2 and a numeric score ({exc})") from exc
    return sts_task(name or f"LocalSTS-{p.stem}", s1, s2, sc)


# -------------------------------------------------------------------------------------------- hub tasks
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT``) answers an HTTP request within ``timeout`` seconds.

    An HTTP answer is required, not just a TCP connect: sandboxes and captive proxies accept connections to
    anything and then fail every download.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/") + "/"
    ok = [False]

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout) as r:
                ok[0] = r.status < 400
        except (urllib.error.URLError, OSError, ValueError):
            pass

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return ok[0]


def hub_tasks(names: Sequence[str], *, probe_timeout: float = 3.0) -> list[Any]:
    """MTEB tasks by name (their data comes from the Hub); fails fast offline or on an unknown name."""
    # The probe comes first: loading mteb's task registry alone takes seconds.
    if not hub_reachable(probe_timeout):
        raise EmbrecipeError(
            f"MTEB task(s) {', '.join(names)} download their data from the Hugging Face Hub, which is not "
            "reachable (HF_HUB_OFFLINE is set or no connection); use --tasks local or local files instead")
    import mteb

    try:
        # English subsets only, as in the study (STS22 and AmazonReviews are multilingual).
        tasks = list(mteb.get_tasks(tasks=list(names), languages=["eng"], exclusive_language_filter=True))
    except (KeyError, ValueError) as exc:
        raise InputError(f"unknown MTEB task in {', '.join(names)}: {str(exc).splitlines()[0]}") from exc
    found = {t.metadata.name for t in tasks}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise InputError(f"unknown MTEB task(s): {', '.join(unknown)}")
    return tasks


def resolve_tasks(spec: str, rows: Sequence[Mapping[str, Any]] | None) -> list[Any]:
    """Tasks named by a ``--tasks`` spec: comma-separated ``local``, ``paper15``, ``LocalDocRetrieval``,
    ``LocalDocRelatedness``, ``retrieval:DIR``, ``sts:FILE`` or MTEB task names."""
    tasks: list[Any] = []
    hub: list[str] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "local":
            tasks += [doc_retrieval_task(rows or []), doc_relatedness_task(rows or [])]
        elif item == "LocalDocRetrieval":
            tasks.append(doc_retrieval_task(rows or []))
        elif item == "LocalDocRelatedness":
            tasks.append(doc_relatedness_task(rows or []))
        elif item == "paper15":
            hub += list(PAPER_TASKS)
        elif item.startswith("retrieval:"):
            tasks.append(retrieval_task_from_dir(item.split(":", 1)[1]))
        elif item.startswith("sts:"):
            tasks.append(sts_task_from_file(item.split(":", 1)[1]))
        else:
            hub.append(item)
    if hub:
        # Checked before any local work so an offline user learns at once, not after minutes of encoding.
        tasks = hub_tasks(list(dict.fromkeys(hub))) + tasks
    if not tasks:
        raise InputError(f"--tasks {spec!r} names no task")
    return tasks


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


def _tasks_for(tasks: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The task list of ``tasks``; local tasks are built from the held-out ``rows``."""
    needs_rows = any(t.strip() in ("local", *LOCAL_TASKS) for t in tasks.split(","))
    return resolve_tasks(tasks, rows if needs_rows else None)


def _write_record(out_dir: Path, record: Mapping[str, Any]) -> None:
    """``OUT/eval.json``, atomically (temporary file, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out_dir / "eval.json")


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
    task_list = _tasks_for(tasks, rows)
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
        "versions": {p: _version(p) for p in ("embrecipe", "mteb", "sentence-transformers",
                                                                "transformers", "torch")},
        "seconds": round(time.time() - start, 1),
    }
    if out_dir:
        _write_record(out_dir, record)
    return record


# ---------------------------------------------------------------- precomputed embeddings (GPU box → here)
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
        "versions": {n: _version(n) for n in _VERSIONED},
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
    task_list = _tasks_for(tasks, rows)
    model_name = str(meta.get("model") or path.stem)
    encoder = _lookup_encoder(table, name=name or Path(model_name).name or path.stem,
                              similarity=meta.get("similarity_fn_name") or "cosine", source=path)
    out_dir = Path(out) if out else None
    results = run_mteb(encoder, task_list, out_dir / "mteb" if out_dir else None)
    versions = dict(meta.get("versions") or {})  # those that computed the embeddings ...
    versions.update({n: _version(n) for n in ("embrecipe", "mteb")})  # ... and the scorer
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
        _write_record(out_dir, record)
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
