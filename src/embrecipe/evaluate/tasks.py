"""The evaluation tasks and their data: the held-out pairs, the local tasks built from them or from the user's files,
and MTEB tasks by name. Every task is an ``mteb`` 2 task object; :mod:`embrecipe.evaluate.scoring` runs them.

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
"""

from __future__ import annotations

import csv
import json
import os
import random
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from embrecipe.errors import EmbrecipeError, InputError

PAPER_TASKS = (
    "MedrxivClusteringS2S", "StackExchangeClusteringP2P", "ArguAna", "CQADupstackGisRetrieval",
    "CQADupstackAndroidRetrieval", "QuoraRetrieval", "BIOSSES", "SICK-R", "STS22", "SummEval",
    "ImdbClassification", "Banking77Classification", "AmazonReviewsClassification",
    "SprintDuplicateQuestions", "StackOverflowDupQuestions",
)
LOCAL_TASKS = ("LocalDocRetrieval", "LocalDocRelatedness", "GeneralRetrieval")
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


# ------------------------------------------------------------------------------------------ pairs / loss
def load_split(split: str = "test", pairs: str | os.PathLike[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"query", "pos", "source"?}`` of ``pairs`` or the shipped testbed split; ``limit`` keeps an evenly
    spaced subset of that many rows (deterministic).

    ``pairs`` is read by the loader ``train`` uses (:func:`embrecipe.data.pairs.load_pairs`: JSONL with ``pos`` a string or
    a one-element list, CSV/TSV, Parquet, a datasets directory), so any file that trains also evaluates. A JSONL file
    whose rows carry the testbed's ``source`` provenance keeps it (the relatedness task needs it)."""
    from embrecipe.testbed.pairs import read_pairs, testbed_pairs_path

    if pairs:
        rows = user_pairs(Path(pairs))
        path = Path(pairs)
    else:
        path = testbed_pairs_path(split)
        if not path.is_file():
            raise InputError(f"pairs file {path}: not found")
        rows = read_pairs(path)
    if limit is not None and limit < len(rows):
        # An even stride, not the first N: files are ordered by package, and a prefix would be one package.
        rows = [rows[i * len(rows) // limit] for i in range(max(limit, 0))]
    if len(rows) < 2:
        raise InputError(f"pairs file {path}: needs at least 2 pairs for in-batch negatives")
    return rows


def user_pairs(path: Path) -> list[dict[str, Any]]:
    """Rows ``{"query", "pos", "source"?}`` of a pairs file in any format ``train`` reads."""
    from embrecipe.data.pairs import _jsonl_records, load_pairs

    data = load_pairs(path)
    rows: list[dict[str, Any]] = [{"query": q, "pos": p} for q, p in zip(data.queries, data.positives, strict=True)]
    if path.is_file() and path.name.lower().endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        # the same records in the same order (load_pairs read them with this reader): keep their provenance
        for row, (_, rec) in zip(rows, _jsonl_records(path), strict=True):
            if isinstance(rec.get("source"), Mapping):
                row["source"] = rec["source"]
    return rows


def has_provenance(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``rows`` carry the ``source.package``/``source.module`` provenance the relatedness task grades by
    (the testbed's pairs do; a user's pairs usually do not)."""
    return sum(isinstance(r.get("source"), Mapping) and "package" in r["source"] and "module" in r["source"]
               for r in rows) >= 4


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
    """Queries → corpus of all positives of ``rows``; each query's own positive is its one relevant doc.

    Needs nothing but the pairs, so it is the local task for a user's own held-out pairs too."""
    queries = {f"q{i}": r["query"] for i, r in enumerate(rows)}
    corpus = {f"d{i}": r["pos"] for i, r in enumerate(rows)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(rows))}
    return retrieval_task(name, queries, corpus, qrels,
                          description="Held-out pairs: find each query's own positive among all positives.")


def general_retrieval_task(rows: Sequence[Mapping[str, Any]], name: str = "GeneralRetrieval") -> Any:
    """Like :func:`doc_retrieval_task`, on the general-domain rows only (corpus sources other than
    docstrings: Bible paraphrases, chit-chat replies, dictionary definitions) — e.g. the held-out split of the
    shipped general sample (``embrecipe.testbed.general``)."""
    prose = [r for r in rows if (r.get("source") or {}).get("corpus_source") not in (None, "docstrings")]
    if len(prose) < 2:
        raise InputError("GeneralRetrieval needs held-out rows with source.corpus_source other than 'docstrings' "
                         "(e.g. --pairs of the general sample's test split); got "
                         f"{len(prose)}")
    queries = {f"q{i}": r["query"] for i, r in enumerate(prose)}
    corpus = {f"d{i}": r["pos"] for i, r in enumerate(prose)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(prose))}
    return retrieval_task(name, queries, corpus, qrels,
                          description="General-domain pairs of held-out sources (Bible books, conversations, "
                                      "dictionary letters): find each query's positive.")


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
        raise InputError(f"task {name}: needs pairs with source.package and source.module provenance (the "
                         "testbed's pairs have it; evaluate your own pairs with --tasks local or LocalDocRetrieval)")

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
    ``LocalDocRelatedness``, ``GeneralRetrieval``, ``retrieval:DIR``, ``sts:FILE`` or MTEB task names."""
    tasks: list[Any] = []
    hub: list[str] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "local":
            # The relatedness task grades by the testbed's provenance; pairs without it (a user's own) are
            # evaluated by retrieval and the held-out loss alone.
            tasks.append(doc_retrieval_task(rows or []))
            if has_provenance(rows or []):
                tasks.append(doc_relatedness_task(rows or []))
        elif item == "LocalDocRetrieval":
            tasks.append(doc_retrieval_task(rows or []))
        elif item == "LocalDocRelatedness":
            tasks.append(doc_relatedness_task(rows or []))
        elif item == "GeneralRetrieval":
            tasks.append(general_retrieval_task(rows or []))
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


def tasks_for(tasks: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The task list of ``tasks``; local tasks are built from the held-out ``rows``."""
    needs_rows = any(t.strip() in ("local", *LOCAL_TASKS) for t in tasks.split(","))
    return resolve_tasks(tasks, rows if needs_rows else None)
