"""The four fine-tuning methods, as small validated config classes (one concept each, like peft's configs).

``FullFineTuning``, ``BlockFreezing``, ``BiasOnly`` and ``LoRA`` are pure data: the planner uses them with a
:class:`~embrecipe.flops.ModelShape` to count trainable parameters without loading a model. Applying one to a
real model (freezing parameters, wrapping with peft) lives in :mod:`embrecipe.modeling`.

Example::

    >>> from embrecipe.methods import parse_method
    >>> parse_method("lora", rank=8).key
    'lora-r8'
    >>> parse_method("freeze", trainable_blocks=0.25).key
    'freeze-f0.25'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .errors import InputError
from .flops import ModelShape, flops_per_token


@dataclass(frozen=True)
class FullFineTuning:
    """Train every parameter, input embedding included (the cost convention still counts only N)."""

    name: ClassVar[str] = "full"

    @property
    def key(self) -> str:
        return "full"

    def hparams(self) -> dict[str, Any]:
        return {}

    def trainable_params(self, shape: ModelShape) -> int:
        return shape.non_embedding_params


@dataclass(frozen=True)
class BlockFreezing:
    """Freeze the input embedding and the first L−k blocks; train the last k blocks and the final norm.

    ``trainable_blocks`` is either a whole number of blocks (``int >= 1``) or a fraction of the blocks
    (``0 < float <= 1``; rounded to the nearest block count, at least one).
    """

    trainable_blocks: int | float = 0.25
    name: ClassVar[str] = "freeze"

    def __post_init__(self) -> None:
        k = self.trainable_blocks
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise InputError(f"freeze: trainable_blocks must be an int >= 1 or a fraction in (0, 1], got {k!r}")
        if isinstance(k, int) and k < 1:
            raise InputError(f"freeze: trainable_blocks must be >= 1 block, got {k}")
        if isinstance(k, float) and not (0.0 < k <= 1.0):
            raise InputError(f"freeze: trainable_blocks fraction must be in (0, 1], got {k}")

    @property
    def key(self) -> str:
        k = self.trainable_blocks
        return f"freeze-k{k}" if isinstance(k, int) else f"freeze-f{k:g}"

    def hparams(self) -> dict[str, Any]:
        return {"trainable_blocks": self.trainable_blocks}

    def blocks_to_train(self, num_blocks: int) -> int:
        k = self.trainable_blocks
        if isinstance(k, int):
            if k > num_blocks:
                raise InputError(f"freeze: trainable_blocks={k} but the model has only {num_blocks} blocks")
            return k
        return max(1, min(num_blocks, int(math.floor(k * num_blocks + 0.5))))

    def trainable_params(self, shape: ModelShape) -> int:
        k = self.blocks_to_train(shape.num_blocks)
        return sum(shape.block_params[shape.num_blocks - k :]) + shape.final_norm_params


@dataclass(frozen=True)
class BiasOnly:
    """Train every parameter whose name ends in ``bias`` (linear and norm biases), nothing else."""

    name: ClassVar[str] = "bias"

    @property
    def key(self) -> str:
        return "bias"

    def hparams(self) -> dict[str, Any]:
        return {}

    def trainable_params(self, shape: ModelShape) -> int:
        if shape.bias_params == 0:
            raise InputError(f"bias: model {shape.name!r} has no bias parameters, so bias-only trains nothing")
        return shape.bias_params


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters (via peft) on linear layers of the blocks.

    ``targets``: ``"all-linear"`` (default; for Pythia that is exactly the study's
    ``query_key_value, dense, dense_h_to_4h, dense_4h_to_h``) or a list of module-name suffixes.
    ``alpha`` defaults to ``rank`` (scaling 1).
    """

    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    targets: str | tuple[str, ...] = "all-linear"
    name: ClassVar[str] = "lora"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InputError(f"lora: rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise InputError(f"lora: alpha must be > 0, got {self.alpha!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise InputError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.targets, tuple) and not self.targets:
            raise InputError("lora: targets must not be empty")

    @property
    def key(self) -> str:
        return f"lora-r{self.rank}"

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def hparams(self) -> dict[str, Any]:
        t = self.targets if isinstance(self.targets, str) else list(self.targets)
        return {"rank": self.rank, "alpha": self.lora_alpha, "dropout": self.dropout, "targets": t}

    def target_suffixes(self, available: Sequence[str]) -> list[str]:
        if self.targets == "all-linear":
            return list(available)
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        missing = [t for t in targets if t not in available]
        if missing:
            raise InputError(
                f"lora: target module(s) {', '.join(missing)} not found; the model's linear layers are: "
                f"{', '.join(available) or '(none)'}"
            )
        return targets

    def trainable_params(self, shape: ModelShape) -> int:
        suffixes = self.target_suffixes(sorted(shape.linear_in_out))
        total = self.rank * sum(shape.linear_in_out[s] for s in suffixes)
        if total == 0:
            raise InputError(f"lora: model {shape.name!r} has no linear layers to adapt")
        return total


Method = FullFineTuning | BlockFreezing | BiasOnly | LoRA
_CLASSES: dict[str, type] = {"full": FullFineTuning, "freeze": BlockFreezing, "bias": BiasOnly, "lora": LoRA}


def parse_method(name: str, **hparams: Any) -> Method:
    """Build a method config from its name and hyper-parameters (unknown names/keys are input errors)."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise InputError(f"unknown method {name!r}; expected one of: {', '.join(_CLASSES)}")
    allowed = {f.name for f in fields(cls) if f.name != "name"}
    unknown = set(hparams) - allowed
    if unknown:
        raise InputError(
            f"method {name!r} has no hyper-parameter(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
    if name == "lora" and "alpha" in hparams and hparams["alpha"] is not None:
        hparams["alpha"] = float(hparams["alpha"])
    return cls(**hparams)


def method_from_dict(d: Mapping[str, Any]) -> Method:
    """Inverse of :func:`method_to_dict`."""
    d = dict(d)
    name = d.pop("name", None) or d.pop("method", None)
    if name is None:
        raise InputError("method record has no 'name'")
    if name == "lora" and isinstance(d.get("targets"), list):
        d["targets"] = tuple(d["targets"])
    return parse_method(name, **d)


def method_to_dict(method: Method) -> dict[str, Any]:
    return {"name": method.name, **method.hparams()}


def method_flops_per_token(method: Method, shape: ModelShape) -> int:
    """Per-token model FLOPs of ``method`` on ``shape`` (N and N_t from the shape)."""
    return flops_per_token(method.name, shape.non_embedding_params, method.trainable_params(shape))
