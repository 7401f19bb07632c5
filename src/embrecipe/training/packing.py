r"""Unpadded training batches: texts packed into fixed-length rows, pooled per text.

A padded batch of B texts costs :math:`B \cdot \max_i \ell_i` token rows in every matrix multiply; the budget
pays for :math:`\sum_i \ell_i`. Packing lays the texts of one column end to end into rows of ``row_length``
tokens (first-fit decreasing, so rows are nearly full), gives every text its own position ids
:math:`0 .. \ell_i - 1` and a block-diagonal causal attention mask, and mean-pools each text's own tokens:

.. math::

    e_i = \frac{1}{\ell_i} \sum_{t \in \text{text } i} h_t

which is exactly what padded execution with sentence-transformers' mean ``Pooling`` computes (each text sees
only itself, at the same positions), with fewer wasted rows. The attention of a row costs
:math:`O(\text{row\_length}^2)` instead of :math:`O(\sum \ell_i^2)`, which is why rows stay short (a few
times the maximum text length).

Why hand-written: sentence-transformers 6 unpads only through flash-attention's varlen kernels (the
``flash-attn`` package), which torch's built-in SDPA has no equivalent of and which is not installed on the
machines this project targets offline. transformers 5 understands packed rows (a 4-D mask, or packed
``position_ids`` for flex attention); what remains, and is written here, is the packing itself and the
per-text pooling.

Example::

    >>> pack_rows([5, 3, 4, 2], row_length=8)
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

from typing import Any

PACKED_POOLINGS = ("mean",)


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing bin packing: the indices of the texts in each row (each row's total ≤ ``row_length``).

    Deterministic (ties broken by index). ``row_length`` must be ≥ the longest text.
    """
    if lengths and max(lengths) > row_length:
        raise ValueError(f"a text of {max(lengths)} tokens does not fit a row of {row_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        need = lengths[i]
        for r, space in enumerate(free):
            if space >= need:
                rows[r].append(i)
                free[r] -= need
                break
        else:
            rows.append([i])
            free.append(row_length - need)
    return rows


def auto_row_length(max_seq_length: int) -> int:
    """Rows of about twice the longest text, rounded up to 64 (tensor-core friendly), at least 128.

    Short rows keep the quadratic attention of a packed row cheap; twice the longest text leaves room to fill
    each row with shorter texts.
    """
    return max(128, -(-2 * max_seq_length // 64) * 64)


def packed_layout(seqs: list[list[int]], row_length: int, pad_id: int) -> dict[str, Any]:
    """Numpy arrays of one packed column: ``input_ids``, ``position_ids`` and ``segment`` ([rows, row_length])
    plus ``lengths`` [texts]. ``segment`` is the text index of each token, ``len(seqs)`` for the filler at the
    end of a row (which gets position ids of its own, so it forms a separate sequence no text attends to)."""
    import numpy as np

    n = len(seqs)
    rows = pack_rows([len(s) for s in seqs], row_length)
    ids = np.full((len(rows), row_length), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), row_length), dtype=np.int64)
    seg = np.full((len(rows), row_length), n, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            s = seqs[i]
            ids[r, at : at + len(s)] = s
            pos[r, at : at + len(s)] = np.arange(len(s))
            seg[r, at : at + len(s)] = i
            at += len(s)
        pos[r, at:] = np.arange(row_length - at)
    return {"input_ids": ids, "position_ids": pos, "segment": seg,
            "lengths": np.array([len(s) for s in seqs], dtype=np.int64)}


def packed_attention_mask(segment: Any, implementation: str, dtype: Any) -> Any:
    """The block-diagonal causal mask [rows, 1, T, T] of a packed column, in the form the attention
    implementation takes (SDPA: bool, True = attend; eager: additive float). ``None`` for flex attention, which
    builds its own (sparse) block mask from the packed ``position_ids``."""
    import torch

    if implementation == "flex_attention":
        return None
    t = segment.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def supports_packing(st_model: Any) -> str | None:
    """``None`` when packed execution computes exactly what the model's own forward does, else why not."""
    mods = list(st_model)
    if len(mods) != 2 or type(mods[1]).__name__ != "Pooling":
        return "packing needs a Transformer + Pooling model"
    if getattr(mods[1], "pooling_mode", None) not in PACKED_POOLINGS:
        return f"packing pools by mean only (this model pools by {getattr(mods[1], 'pooling_mode', '?')})"
    if getattr(mods[1], "include_prompt", True) is False:
        return "the pooling excludes prompt tokens (include_prompt=False), which packed pooling does not do"
    return None


def packed_embeddings(st_model: Any, batch: dict[str, Any]) -> Any:
    """Mean-pooled embeddings [texts, d] of one packed column already on the model's device.

    ``batch``: ``input_ids``, ``position_ids``, ``segment`` (as :func:`packed_layout`, as tensors),
    ``lengths``, and ``attention_mask`` (from :func:`packed_attention_mask`, may be None).
    """
    import torch

    hf = st_model[0].auto_model
    out = hf(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
             attention_mask=batch.get("attention_mask"))
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    n = batch["lengths"].shape[0]
    d = hidden.shape[-1]
    # fp32 accumulation, as sentence-transformers' Pooling does under bf16; the filler segment (index n) is
    # summed into a spare row that is dropped
    sums = torch.zeros(n + 1, d, dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, batch["segment"].reshape(-1), hidden.reshape(-1, d).float())
    mean = sums[:n] / batch["lengths"].clamp(min=1).unsqueeze(1).to(torch.float32)
    return mean.to(hidden.dtype)
