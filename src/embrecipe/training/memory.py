r"""Training memory of one step: the one memory model of embrecipe (planner, sweep placement, GradCache sizing).

Pure arithmetic, no torch, no store: the planner (:mod:`embrecipe.planning.planner`, through :mod:`embrecipe.planning.units`), the
sweep's GPU placement (:mod:`embrecipe.sweep.placement`) and the trainer's automatic GradCache
(:mod:`embrecipe.training.runtime`) all ask this module, so they agree on whether a run fits. No library estimates the
memory of a contrastive fine-tuning step per method, so the formula is written here and calibrated against
measured peaks.

Training memory of one step (bytes), with :math:`P` all parameters (embeddings included: they
sit in memory), :math:`P_t` trained parameters, :math:`b_w` bytes per weight (fp32 master weights: 4, also
under bf16 autocast), :math:`b_a` bytes per saved activation value, :math:`S` the max sequence length,
:math:`B` the batch (pairs), :math:`t` the texts per pair (2, plus the hard negatives), :math:`m` the GradCache mini-batch (:math:`m = B` without GradCache),
:math:`a_\ell` the activation values one token saves in block :math:`\ell` (the sum of in+out features of
the block's linear layers: every linear keeps its input for the weight gradient and its output feeds the
next op), :math:`\mathcal B` the blocks autograd saves activations for (all blocks for full, bias and LoRA
— gradients flow through all of them — and only the trained suffix for block freezing; each method's
:meth:`~embrecipe.models.methods.MethodConfig.blocks_with_gradients`) and :math:`h` the
hidden size:

.. math::

    M = \underbrace{b_w P}_{\text{weights}} + \underbrace{b_w P_t}_{\text{grads}}
      + \underbrace{8 P_t}_{\text{AdamW } m, v}
      + \underbrace{\kappa\, (1 + \lambda [v \text{ is an adapter (LoRA)}])\, b_a\, t\, m S
        \textstyle\sum_{\ell \in \mathcal B} a_\ell}_{\text{activations}}
      + \underbrace{[m < B]\; t \cdot 2 B h \cdot 4}_{\text{GradCache's cached embeddings + grads}}
      + M_0

:math:`\kappa` (attention, norms, residuals and the allocator's slack relative to the linear-layer
inputs/outputs) is calibrated against measured peaks by ``benchmarks/memory_model.py``; :math:`\lambda` is
the extra activation memory measured for peft's LoRA layers (which keep more per adapted layer than a plain
linear: about one more copy of its input), fitted there on one LoRA row; :math:`M_0` is a fixed overhead (CUDA context and workspace; the imported libraries on a CPU). GradCache keeps only one
mini-batch's activations alive, so :func:`auto_mini_batch` picks the largest power of two (≤ B) that fits.

The sweep places cells and the trainer sizes GradCache with :math:`S` the run's ``max_seq_length``: a
step's peak is reached at its longest padded batch, whose texts reach the truncation length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape

GIB = 2**30
# kappa and the LoRA excess lambda, fitted by benchmarks/memory_model.py (smollm2-L2, fp32, CPU; the fit and
# the validation errors are in benchmarks/memory_model.json and docs/planner.md).
DEFAULT_KAPPA = 1.67
DEFAULT_LORA_EXCESS = 0.47
# Fixed memory a GPU process needs besides the tensors (CUDA context, cuBLAS workspace, allocator slack).
# An assumption, not a measurement from this project: ~0.5-1 GiB is typical.
DEFAULT_OVERHEAD_BYTES = GIB


def activation_values_per_token(shape: ModelShape) -> list[float]:
    """:math:`a_\\ell` per block: the in+out features of the block's linear layers (values saved per token)."""
    if shape.linear_in_out:
        per_block = sum(shape.linear_in_out.values()) / max(shape.num_blocks, 1)
    elif shape.hidden_size:
        per_block = 18.0 * shape.hidden_size  # a Llama-like block with MLP 2.7x wide (the testbed's ratio)
    else:
        raise InputError(f"model shape {shape.name!r} records neither linear_in_out nor hidden_size: "
                         "cannot estimate its activation memory")
    return [per_block] * shape.num_blocks


def training_memory(shape: ModelShape, method: Any, *, batch_size: int, seq_len: int,
                    mini_batch: int | None = None, texts_per_pair: int = 2, param_bytes: int = 4,
                    activation_bytes: int = 2,
                    overhead_bytes: float = DEFAULT_OVERHEAD_BYTES, kappa: float = DEFAULT_KAPPA,
                    lora_excess: float = DEFAULT_LORA_EXCESS) -> dict[str, float]:
    """The memory formula of the module docstring, term by term (bytes), with ``total``.

    ``activation_bytes`` is 2 under bf16 autocast (the default on GPUs) and 4 in fp32; ``texts_per_pair`` is 2
    plus the hard negatives.
    """
    if batch_size < 1 or seq_len < 1:
        raise InputError("batch size and sequence length must be positive")
    live = batch_size if not mini_batch or mini_batch >= batch_size else int(mini_batch)
    p_all = shape.embedding_params + shape.non_embedding_params
    p_t = method.optimizer_params(shape)
    a = activation_values_per_token(shape)
    k = method.blocks_with_gradients(shape.num_blocks)
    saved = sum(a[len(a) - k:]) if k else 0.0
    terms = {
        "weights": float(param_bytes * p_all),
        "gradients": float(param_bytes * p_t),
        "optimizer": float(8 * p_t),
        "activations": float(kappa * method.activation_factor(lora_excess) * activation_bytes
                             * texts_per_pair * live * seq_len * saved),
        "gradcache": float(texts_per_pair * 2 * batch_size * shape.hidden_size * 4) if live < batch_size else 0.0,
        "overhead": float(overhead_bytes),
    }
    terms["total"] = sum(terms.values())
    return terms


def auto_mini_batch(shape: ModelShape, method: Any, *, batch_size: int, seq_len: int, memory_bytes: float,
                    **kwargs: Any) -> tuple[int | None, dict[str, float]] | None:
    """The GradCache mini-batch that makes a step fit in ``memory_bytes``.

    Returns ``(None, estimate)`` when the plain batch fits, ``(m, estimate)`` with the largest power of two
    ``m < batch_size`` that fits, or ``None`` when nothing fits (weights and optimizer alone are too big,
    or even a mini-batch of 1).
    """
    plain = training_memory(shape, method, batch_size=batch_size, seq_len=seq_len, **kwargs)
    if plain["total"] <= memory_bytes:
        return None, plain
    m = 1 << max(int(math.log2(max(batch_size - 1, 1))), 0)
    while m >= 1:
        if m < batch_size:
            est = training_memory(shape, method, batch_size=batch_size, seq_len=seq_len, mini_batch=m, **kwargs)
            if est["total"] <= memory_bytes:
                return m, est
        m //= 2
    return None


def fit_activation_coefficient(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = c + kappa * x`` over calibration points ``(y, x)``.

    ``y`` is measured peak minus the formula's static terms (weights, gradients, optimizer, fixed overhead)
    and ``x`` the activation term at :math:`\\kappa = 1`; returns ``(kappa, c)``, where ``c`` is memory the
    formula does not model (on a CPU: the loaded checkpoint's buffers, tokenizer, allocator arenas). Needs
    two or more distinct activation sizes (e.g. the same model at several batch sizes).
    """
    pts = list(points)
    xs = [x for _, x in pts]
    if len(set(xs)) < 2:
        raise InputError("calibration needs measurements at two or more activation sizes")
    mx, my = sum(xs) / len(xs), sum(y for y, _ in pts) / len(pts)
    kappa = sum((x - mx) * (y - my) for y, x in pts) / sum((x - mx) ** 2 for x in xs)
    return kappa, my - kappa * mx


def gradcache_mini_batch(shape: ModelShape, method: Any, *, batch_size: int, seq_len: int, memory_bytes: float,
                         **kwargs: Any) -> int | None:
    """The trainer's automatic GradCache: None when the whole batch fits in ``memory_bytes``, else the largest
    power-of-two mini-batch that fits, and 1 when none does (the run then tries the smallest and fails alone)."""
    fit = auto_mini_batch(shape, method, batch_size=batch_size, seq_len=seq_len, memory_bytes=memory_bytes,
                          **kwargs)
    return 1 if fit is None else fit[0]
