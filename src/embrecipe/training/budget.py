"""The budget meter: where each step sits in the FLOP budget, the LR schedule by FLOPs spent, divergence.

Pure Python (no torch at import), so the arithmetic is testable on its own. The trainer charges every step's
model FLOPs (``flops_per_token × real tokens``, known before the step runs) to a :class:`LoopState` and stops
*before* the step that would exceed the budget; the LR of a step is a function of the fraction of the budget
spent at its middle (:func:`lr_at_fraction`), so the schedule ends exactly with the budget and a resumed run
follows it from the saved state alone.

Example::

    >>> state = LoopState()
    >>> state.exceeds(600.0, budget=1000.0)
    False
    >>> state.charge(step_cost=600, hardware_cost=700, tokens=10, padded_tokens=12)
    >>> (state.step, state.model_flops, state.exceeds(600.0, budget=1000.0))
    (1, 600, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from embrecipe.errors import BudgetError
from embrecipe.flops import steps_for_budget

# A loss above this many times max(first step's loss, ln batch_size) counts as a runaway (diverged) run. ln B is
# the loss of embeddings that carry no information; a healthy run starts near it and goes down, so 10x that is
# far outside any normal fluctuation but well below what exploding weights produce.
RUNAWAY_FACTOR = 10.0


def divergence_reason(loss: float, first_loss: float | None, batch_size: int) -> str | None:
    """Why a step's loss means the run diverged, or None when it is fine.

    Diverged: the loss is NaN/inf, or it exceeds ``RUNAWAY_FACTOR * max(first_loss, ln batch_size)``
    (a runaway). ``first_loss`` is the first step's loss (None on the first step).

    >>> divergence_reason(float("nan"), 3.4, 32)
    'loss is nan'
    >>> divergence_reason(3.0, 3.4, 32) is None
    True
    """
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if first_loss is not None and math.isfinite(first_loss):
        bound = RUNAWAY_FACTOR * max(first_loss, math.log(max(batch_size, 2)))
        if loss > bound:
            return (f"loss {loss:.4g} ran away (> {RUNAWAY_FACTOR:g} x max(first loss {first_loss:.4g}, "
                    f"ln batch {math.log(max(batch_size, 2)):.3g}))")
    return None


def lr_at_fraction(fraction: float, warmup_ratio: float) -> float:
    r"""The LR multiplier as a pure function of the fraction ``f`` of the FLOP budget spent.

    .. math::

        m(f) = \begin{cases} f / w & f < w \\
                              \tfrac12\big(1 + \cos(\pi \tfrac{f - w}{1 - w})\big) & w \le f < 1 \\
                              0 & f \ge 1 \end{cases}

    with ``w = warmup_ratio``. The trainer evaluates it at the *middle* of each step's FLOPs,
    ``f = (spent + cost/2) / budget``: every step that fits in the budget then has ``0 < f < 1`` and a
    positive LR, and the cosine reaches 0 exactly where the budget ends, whatever batch lengths are drawn
    (a step count planned from the mean tokens per pair can be off either way).

    >>> lr_at_fraction(0.05, 0.1), lr_at_fraction(0.1, 0.1), round(lr_at_fraction(0.55, 0.1), 3)
    (0.5, 1.0, 0.5)
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if warmup_ratio > 0 and f < warmup_ratio:
        return f / warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * (f - warmup_ratio) / (1.0 - warmup_ratio)))


def step_lr_fraction(spent: float, step_cost: float, budget: float) -> float:
    """Where a step sits in the budget for :func:`lr_at_fraction`: the middle of its FLOPs."""
    return (float(spent) + 0.5 * float(step_cost)) / float(budget)


@dataclass
class LoopState:
    """The training loop's state: the meter's counts, the position in the batch order, the loss curve and per-step
    timings. It is what a checkpoint's ``state.json`` holds (:meth:`to_dict`, field order as written since the
    first checkpoints), so a resumed run continues from it exactly."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # the next batch's index in this epoch's order
    model_flops: float = 0  # the budget's currency (embrecipe.flops); stays an int while every cost is one
    hardware_flops: float = 0
    tokens: int = 0  # real (non-padding) tokens processed
    padded_tokens: int = 0
    loss_curve: list[list[float]] = field(default_factory=list)  # [model FLOPs, loss] at logged steps
    train_time_s: float = 0.0
    step_times: list[float] = field(default_factory=list)
    step_flops: list[float] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        """The state a checkpoint saved; the per-step lists, added later, are empty when an older one lacks them."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def exceeds(self, step_cost: float, budget: float) -> bool:
        """Whether a step costing ``step_cost`` model FLOPs would take the meter past ``budget``."""
        return self.model_flops + step_cost > budget

    def charge(self, step_cost: float, hardware_cost: float, tokens: int, padded_tokens: int) -> None:
        """Count one finished optimizer step."""
        self.step += 1
        self.pos += 1
        self.model_flops += step_cost
        self.hardware_flops += hardware_cost
        self.tokens += tokens
        self.padded_tokens += padded_tokens


def planned_steps(budget: float, per_token: int, tokens_per_step: float, *, method_key: str,
                  batch_size: int) -> int:
    """The steps ``budget`` affords at the data's mean tokens per batch (:func:`~embrecipe.flops.steps_for_budget`);
    a one-line :class:`BudgetError` when that is less than one step.

    >>> planned_steps(1e9, 1000, 2000.0, method_key="full", batch_size=32)
    500
    """
    steps = steps_for_budget(budget, per_token, tokens_per_step)
    if steps < 1:
        raise BudgetError(
            f"budget {budget:.3g} FLOPs affords less than one step; the minimum is about "
            f"{per_token * tokens_per_step:.3g} FLOPs ({method_key}: {per_token} FLOPs/token × "
            f"{tokens_per_step:.0f} tokens per batch of {batch_size})"
        )
    return steps


def steps_for_epochs(epochs: float, batches_per_epoch: int) -> int:
    """The optimizer steps of ``epochs`` passes over the data (an epoch is ``batches_per_epoch`` steps; at least 1).

    >>> steps_for_epochs(3, 17), steps_for_epochs(0.5, 17), steps_for_epochs(0.01, 17)
    (51, 8, 1)
    """
    return max(1, int(round(float(epochs) * batches_per_epoch)))


def budget_of_steps(step_costs: Iterable[float], steps: int) -> float:
    """The model FLOPs of the first ``steps`` steps, from the costs of the batches in the order the loop takes them.

    An epoch or step target is trained as this budget: the meter then stops exactly after ``steps`` steps (the
    next one would exceed it) and the LR schedule, a function of the budget spent, ends there too.

    >>> budget_of_steps(iter([10, 20, 30, 40]), 3)
    60
    """
    total: float = 0
    for i, cost in enumerate(step_costs):
        if i >= steps:
            break
        total += cost
    return total


def epochs_over_unique(steps: int, batch_size: int, unique_pairs: int) -> float:
    """How many times ``steps`` batches of ``batch_size`` go over ``unique_pairs`` distinct pairs.

    >>> epochs_over_unique(17, 64, 270)
    4.029629629629629
    """
    return steps * batch_size / max(unique_pairs, 1)


def check_no_repeat(steps: int, batches_per_epoch: int, per_token: int, tokens_per_step: float,
                    source: str) -> None:
    """Without repetition, the planned steps must fit in one pass over the data."""
    if steps > batches_per_epoch:
        raise BudgetError(
            f"budget needs {steps} steps but {source} holds {batches_per_epoch} batches; "
            f"allow repetition or lower the budget to ≤ {per_token * tokens_per_step * batches_per_epoch:.3g}"
        )
