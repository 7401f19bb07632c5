"""Evaluation of an embedding model: held-out contrastive loss and MTEB tasks through the real ``mteb`` 2.

- :mod:`~embrecipe.evaluate.tasks`: the tasks and their data (held-out pairs, local, user files, MTEB by name);
- :mod:`~embrecipe.evaluate.scoring`: a model's held-out loss and task scores (:func:`evaluate`), the table;
- :mod:`~embrecipe.evaluate.embeddings`: the same from stored embeddings (encode on a GPU box, score here).

    >>> from embrecipe.evaluate import evaluate, format_table
    >>> print(format_table(evaluate("runs/abc/model", tasks="local", out="eval/")))  # doctest: +SKIP
"""

from embrecipe.evaluate.embeddings import embed_eval_texts, evaluate_embeddings
from embrecipe.evaluate.scoring import (
    DEFAULT_MAX_SEQ_LENGTH,
    evaluate,
    format_table,
    heldout,
    load_model,
    run_mteb,
)
from embrecipe.evaluate.tasks import (
    LOCAL_TASKS,
    PAPER_TASKS,
    RELATEDNESS_PER_LEVEL,
    doc_relatedness_task,
    doc_retrieval_task,
    hub_reachable,
    hub_tasks,
    load_split,
    resolve_tasks,
    retrieval_task,
    retrieval_task_from_dir,
    sts_task,
    sts_task_from_file,
)

__all__ = [
    "DEFAULT_MAX_SEQ_LENGTH", "LOCAL_TASKS", "PAPER_TASKS", "RELATEDNESS_PER_LEVEL", "doc_relatedness_task",
    "doc_retrieval_task", "embed_eval_texts", "evaluate", "evaluate_embeddings", "format_table", "heldout",
    "hub_reachable", "hub_tasks", "load_model", "load_split", "resolve_tasks", "retrieval_task",
    "retrieval_task_from_dir", "run_mteb", "sts_task", "sts_task_from_file",
]
