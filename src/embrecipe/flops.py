r"""FLOP accounting: the budget convention of embrecipe, as pure functions.

No maintained library states the per-method training cost that the compute-optimal study budgets with, so
this arithmetic is written here, kept free of torch so that the planner and the tests can use it without a
model.

With :math:`N` the non-embedding parameters, :math:`N_t` the trainable non-embedding parameters and
:math:`D` the training tokens actually processed (non-padding tokens of every text in every batch), every
method costs

.. math::

    C = (a N + b N_t) D

with two whole coefficients per method (a :class:`TokenCost`). Forward costs :math:`2N` per token; what the
backward costs depends on where gradients flow, so each method states its own coefficients in
:mod:`embrecipe.models.methods` (full :math:`6N`, block freezing :math:`2N + 4N_t`, bias-only and LoRA
:math:`4N + 2N_t`). This module knows no method names.

Example::

    >>> shape = ModelShape(name="toy", embedding_params=1000, block_params=(100, 100), final_norm_params=2,
    ...                    bias_params=20, linear_in_out={"fc": 64})
    >>> TokenCost(per_param=6, per_trainable=0).model_flops(shape.non_embedding_params, 0)
    1212
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embrecipe.errors import BudgetError


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formulas and the planner need to know about one checkpoint, without loading it.

    ``linear_in_out`` maps the last name component of every linear layer inside the blocks
    (``query_key_value``, ``q_proj``, ``c_attn``, ...) to the sum of ``in_features + out_features`` over all
    blocks: a LoRA of rank r on those layers trains ``r * linear_in_out[name]`` parameters.
    """

    name: str
    embedding_params: int
    block_params: tuple[int, ...]
    final_norm_params: int
    bias_params: int
    linear_in_out: Mapping[str, int] = field(default_factory=dict)
    other_params: int = 0  # non-embedding parameters outside blocks and final norm
    hidden_size: int = 0

    @property
    def num_blocks(self) -> int:
        return len(self.block_params)

    @property
    def non_embedding_params(self) -> int:
        """N: every parameter except the (input and position) embeddings."""
        return sum(self.block_params) + self.final_norm_params + self.other_params

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_params"] = list(self.block_params)
        d["linear_in_out"] = dict(self.linear_in_out)
        d["non_embedding_params"] = self.non_embedding_params
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelShape:
        return cls(
            name=str(d["name"]),
            embedding_params=int(d["embedding_params"]),
            block_params=tuple(int(x) for x in d["block_params"]),
            final_norm_params=int(d["final_norm_params"]),
            bias_params=int(d["bias_params"]),
            linear_in_out={str(k): int(v) for k, v in dict(d.get("linear_in_out", {})).items()},
            other_params=int(d.get("other_params", 0)),
            hidden_size=int(d.get("hidden_size", 0)),
        )


@dataclass(frozen=True)
class TokenCost:
    r"""Per-token FLOPs of one fine-tuning method: :math:`a N + b N_t` (``per_param``, ``per_trainable``).

    ``recomputes_trainable_only``: gradient checkpointing recomputes the forward of the layers that need
    gradients; that is every layer (:math:`2N`) when activation gradients flow through the whole model, and only
    the trained parameters (:math:`2N_t`) when the backward stops at a frozen prefix.

    Example::

        >>> TokenCost(per_param=2, per_trainable=4, recomputes_trainable_only=True).hardware_flops(
        ...     100, 10, gradient_checkpointing=True)
        260
    """

    per_param: int
    per_trainable: int
    recomputes_trainable_only: bool = False

    def model_flops(self, n_params: int, n_trainable: int) -> int:
        """Model FLOPs of one training token (the budget convention)."""
        return self.per_param * n_params + self.per_trainable * n_trainable

    def hardware_flops(self, n_params: int, n_trainable: int, *, gradient_checkpointing: bool = False,
                       gradcache: bool = False, n_recomputed: int | None = None) -> int:
        """Model FLOPs plus the work the hardware does on top of the budget convention.

        GradCache embeds every text once without gradients and again with them (one extra forward, ``2N``).
        Gradient checkpointing recomputes the forward of the layers that need gradients (``2 * n_recomputed``;
        by default every layer, or only the trained parameters with ``recomputes_trainable_only``).
        Padding is accounted separately by the trainer (it knows the padded token count).
        """
        total = self.model_flops(n_params, n_trainable)
        if gradcache:
            total += 2 * n_params
        if gradient_checkpointing:
            if n_recomputed is None:
                n_recomputed = n_trainable if self.recomputes_trainable_only else n_params
            total += 2 * n_recomputed
        return total


def tokens_for_budget(budget: float, per_token: int) -> float:
    """D affordable with ``budget`` model FLOPs."""
    if per_token <= 0:
        raise ValueError("per-token cost must be positive")
    return budget / per_token


def steps_for_budget(budget: float, per_token: int, tokens_per_step: float) -> int:
    """Whole optimizer steps a budget affords at an expected ``tokens_per_step`` (floor)."""
    if tokens_per_step <= 0:
        raise ValueError("tokens per step must be positive")
    return int(math.floor(budget / (per_token * tokens_per_step)))


def is_budget(value: Any) -> bool:
    """Whether ``value`` is a FLOP budget: a positive, finite number (not a bool, not text).

    The one budget check (the trainer's config, the planner, grids, the recipe check, the adaptive sweep's
    targets and the CLIs' parsers all ask it); :func:`check_budget` raises its one-line error.

    >>> is_budget(3e13), is_budget(0), is_budget(float("inf")), is_budget("3e13"), is_budget(True)
    (True, False, False, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_budget(value: Any, what: str = "budget", error: type[Exception] | None = None) -> float:
    """``value`` as a float when it :func:`is_budget`, else ``error`` (default :class:`BudgetError`):
    "``what`` must be a positive number of FLOPs, got ``value``"."""
    if not is_budget(value):
        raise (error or BudgetError)(f"{what} must be a positive number of FLOPs, got {value!r}")
    return float(value)
