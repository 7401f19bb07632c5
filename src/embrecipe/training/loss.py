r"""The training objective: symmetric InfoNCE with in-batch negatives (from sentence-transformers).

For a batch of B pairs with L2-normalised embeddings :math:`q_i, p_i` and scale :math:`s` (inverse
temperature, 40 by default as in the study):

.. math::

    \mathcal{L} = \tfrac12 \Big[ \tfrac1B \sum_i -\log \frac{e^{s\,q_i\cdot p_i}}{\sum_j e^{s\,q_i\cdot p_j}}
                 + \tfrac1B \sum_i -\log \frac{e^{s\,p_i\cdot q_i}}{\sum_j e^{s\,p_i\cdot q_j}} \Big]

That is sentence-transformers' ``MultipleNegativesRankingLoss`` with
``directions=("query_to_doc", "doc_to_query")`` and ``partition_mode="per_direction"``; hard negatives, when
given, join the query→document candidates. ``CachedMultipleNegativesRankingLoss`` (GradCache) computes the same
loss and gradients in mini-batches so a 1024-pair batch fits in memory.

Example::

    >>> loss = symmetric_infonce(model, scale=40.0, mini_batch_size=64)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer
    from torch import nn

DIRECTIONS = ("query_to_doc", "doc_to_query")


def symmetric_infonce(
    model: SentenceTransformer,
    *,
    scale: float = 40.0,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
) -> nn.Module:
    """The loss module; GradCache (cached MNRL) when ``mini_batch_size`` is set."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    kwargs = dict(scale=scale, directions=DIRECTIONS, partition_mode="per_direction",
                  gather_across_devices=gather_across_devices)
    if mini_batch_size:
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size,
                                                  show_progress_bar=False, **kwargs)
    return MultipleNegativesRankingLoss(model, **kwargs)


def heldout_loss(
    model: SentenceTransformer,
    queries: Sequence[str],
    positives: Sequence[str],
    *,
    batch_size: int = 1024,
    scale: float = 40.0,
    encode_batch_size: int = 128,
    query_prompt: str | None = None,
    doc_prompt: str | None = None,
) -> float:
    """Mean symmetric InfoNCE over consecutive batches of ``batch_size`` held-out pairs (no gradients).

    In-batch negatives make the value depend on the batch size: compare runs at the same ``batch_size``
    (the trainer uses its training batch size, capped at the held-out set's size). The last, smaller batch
    is weighted by its size. ``query_prompt``/``doc_prompt``: the prompts the model was trained with (prepended
    and excluded from pooling as in training).
    """
    import torch

    if len(queries) != len(positives) or not queries:
        raise ValueError("heldout_loss needs equally many (>0) queries and positives")
    loss_fn = symmetric_infonce(model, scale=scale)
    q = model.encode(list(queries), batch_size=encode_batch_size, convert_to_tensor=True, show_progress_bar=False,
                     prompt=query_prompt or None)
    p = model.encode(list(positives), batch_size=encode_batch_size, convert_to_tensor=True,
                     show_progress_bar=False, prompt=doc_prompt or None)
    total, count = 0.0, 0
    bs = max(2, min(batch_size, len(queries)))
    with torch.no_grad():
        for start in range(0, len(queries), bs):
            qb, pb = q[start : start + bs].float(), p[start : start + bs].float()
            if len(qb) < 2:  # a single pair has no negatives: the loss would be 0 by construction
                continue
            total += float(loss_fn.compute_loss_from_embeddings([qb, pb], None)) * len(qb)
            count += len(qb)
    return total / count
