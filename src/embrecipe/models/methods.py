r"""The fine-tuning methods: one small, validated config class per method, in a registry (like peft's configs).

A method is defined in one place: its class here. Everything else asks the class, never the method's name:
the FLOP meter (:attr:`MethodConfig.cost`), the planner and the sweep grid (:meth:`~MethodConfig.trainable_params`,
:meth:`~MethodConfig.flops_per_token`), the memory model (:meth:`~MethodConfig.optimizer_params`,
:meth:`~MethodConfig.blocks_with_gradients`, :meth:`~MethodConfig.activation_factor`), the report
(:attr:`~MethodConfig.colour`), the CLI (``--method`` choices and :attr:`~MethodConfig.cli_options`) and the
trainer (:meth:`~MethodConfig.apply`). The built-in methods and their per-token cost (:math:`N` non-embedding
parameters, :math:`N_t` the trainable ones; :class:`~embrecipe.flops.TokenCost`):

.. math::

    C_{\text{full}}   &= 6 N            \\
    C_{\text{freeze}} &= 2N + 4N_t      \\
    C_{\text{bias}} = C_{\text{lora}} &= 4N + 2N_t

Forward costs :math:`2N` per token. Full fine-tuning's backward costs :math:`4N` (activation and weight
gradients). Block freezing needs no backward at all into the frozen prefix, so only the trained suffix pays
:math:`4N_t`. Bias-only and LoRA must propagate activation gradients through every layer (:math:`2N`) but
compute weight gradients only for the trained parameters (:math:`2N_t`).

The configs are pure data: the planner uses them with a :class:`~embrecipe.flops.ModelShape` without loading a
model, and this module imports neither torch nor peft until :meth:`MethodConfig.apply` runs.

Example::

    >>> from embrecipe.models.methods import parse_method
    >>> parse_method("lora", rank=8).key
    'lora-r8'
    >>> parse_method("freeze", trainable_blocks=0.25).key
    'freeze-f0.25'
    >>> flops_per_token("freeze", 100, 25)
    300

Adding a method is one class (see docs/training.md, "Adding a method")::

    >>> @register_method
    ... @dataclass(frozen=True)
    ... class NormOnly(MethodConfig):
    ...     name: ClassVar[str] = "norm"
    ...     cost: ClassVar[TokenCost] = TokenCost(per_param=4, per_trainable=2)
    ...     def trainable_params(self, shape): return shape.final_norm_params
    ...     def apply(self, model, parts, shape):
    ...         for n, p in model.named_parameters(): p.requires_grad_("norm" in n)
    ...         return model
    >>> "norm" in method_names()
    True
    >>> unregister_method("norm")
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape, TokenCost

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from embrecipe.models.family import DecoderParts


@dataclass(frozen=True)
class MethodOption:
    """One command-line flag of a method: ``embrecipe train --method NAME FLAG VALUE`` sets the field ``field``.

    ``type`` converts the text (argparse's ``type=``; ``str`` keeps it as given); an absent flag leaves the field
    at its default.
    """

    flag: str
    field: str
    help: str
    type: Callable[[str], Any] = str

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag's value under (``--lora-rank`` → ``lora_rank``)."""
        return self.flag.lstrip("-").replace("-", "_")


class MethodConfig:
    """The interface every fine-tuning method implements (subclasses are frozen dataclasses).

    Class-level declarations:

    - ``name``: the registry name (``--method NAME``, the ``name`` of a stored method dict); ``aliases``: other
      names a sweep grid accepts for it.
    - ``cost``: the per-token FLOP coefficients, :math:`a N + b N_t` (:class:`~embrecipe.flops.TokenCost`).
    - ``trains_everything``: every parameter trains, embeddings included; the FLOP convention then counts
      :math:`N_t = N`, the optimizer holds the embeddings too, and gradient checkpointing needs no gradient on
      the (trained) inputs.
    - ``adapter``: the method wraps the model in peft adapters; the memory model adds the adapters' saved
      activations (calibrated on LoRA) and ``keep_adapter`` exports the adapter alone.
    - ``colour``: the method's colour in the report's figures.
    - ``cli_options``: its ``embrecipe train`` flags.

    Per-instance: :attr:`key` (the variant's name, with its hyper-parameters), :meth:`hparams`,
    :meth:`trainable_params` on a shape and :meth:`apply` to a real model.
    """

    name: ClassVar[str]
    cost: ClassVar[TokenCost]
    aliases: ClassVar[tuple[str, ...]] = ()
    trains_everything: ClassVar[bool] = False
    adapter: ClassVar[bool] = False
    colour: ClassVar[str] = "#7f7f7f"
    cli_options: ClassVar[tuple[MethodOption, ...]] = ()

    @property
    def key(self) -> str:
        """The variant's name: the method name plus whatever hyper-parameters tell variants apart."""
        return self.name

    def hparams(self) -> dict[str, Any]:
        """The config's fields as stored in a record (``method_to_dict`` adds the name)."""
        return {}

    def trainable_params(self, shape: ModelShape) -> int:
        """:math:`N_t`: trainable non-embedding parameters on ``shape`` (an input error when it would be zero)."""
        raise NotImplementedError

    def flops_per_token(self, shape: ModelShape) -> int:
        """Per-token model FLOPs on ``shape`` (N and N_t from the shape)."""
        return self.cost.model_flops(shape.non_embedding_params, self.trainable_params(shape))

    def optimizer_params(self, shape: ModelShape) -> int:
        """Parameters with a gradient and AdamW state: :math:`N_t`, plus the embeddings when they train too."""
        return int(self.trainable_params(shape)) + (shape.embedding_params if self.trains_everything else 0)

    def blocks_with_gradients(self, num_blocks: int) -> int:
        """Blocks whose activations are kept for the backward (all of them unless the backward stops early)."""
        return num_blocks

    def activation_factor(self, adapter_excess: float) -> float:
        """Saved activations relative to the plain model's: adapters keep their own inputs as well."""
        return 1 + (adapter_excess if self.adapter else 0.0)

    def apply(self, model: nn.Module, parts: DecoderParts, shape: ModelShape) -> nn.Module:
        """Make exactly this method's parameters trainable on the HF base ``model``; return the model to train
        (``model`` itself, or a wrapper such as peft's). ``parts`` says where blocks, embeddings and final norm
        live (:func:`embrecipe.models.family.find_decoder_parts`)."""
        raise NotImplementedError


M = TypeVar("M", bound=type[MethodConfig])

METHODS: dict[str, type[MethodConfig]] = {}
_ALIASES: dict[str, str] = {}


def register_method(cls: M) -> M:
    """Class decorator: add a method config class to the registry under ``cls.name`` (and ``cls.aliases``)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not hasattr(cls, "cost"):
        raise TypeError(f"{cls.__name__}: a method class needs a 'name' and a 'cost'")
    if name in METHODS or name in _ALIASES:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = name
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (and its aliases) from the registry; for plug-ins and tests."""
    cls = METHODS.pop(name)
    for alias in cls.aliases:
        _ALIASES.pop(alias, None)


def method_names() -> list[str]:
    """The registered method names, in registration order (the built-ins: full, freeze, bias, lora)."""
    return list(METHODS)


def canonical_method_name(name: str) -> str | None:
    """A registered name, or the name an alias stands for (``bitfit`` → ``bias``); None when unknown."""
    return name if name in METHODS else _ALIASES.get(name)


def method_class(name: str) -> type[MethodConfig]:
    """The registered class called ``name`` (no aliases: stored records use the canonical name)."""
    cls = METHODS.get(name)
    if cls is None:
        raise InputError(f"unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    return cls


def _fraction_or_blocks(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--trainable-blocks takes an int (blocks) or a fraction, got {text!r}") \
                from None


def _lora_targets(spec: str) -> str | tuple[str, ...]:
    spec = spec or "all-linear"
    return spec if spec == "all-linear" else tuple(t.strip() for t in spec.split(",") if t.strip())


def _embedding_param_ids(model: nn.Module, parts: DecoderParts) -> set[int]:
    modules = dict(model.named_modules())
    return {id(p) for e in parts.embedding_paths for p in modules[e].parameters()}


@register_method
@dataclass(frozen=True)
class FullFineTuning(MethodConfig):
    """Train every parameter, input embedding included (the cost convention still counts only N)."""

    name: ClassVar[str] = "full"
    cost: ClassVar[TokenCost] = TokenCost(per_param=6, per_trainable=0)
    trains_everything: ClassVar[bool] = True
    colour: ClassVar[str] = "#1f77b4"

    def trainable_params(self, shape: ModelShape) -> int:
        return shape.non_embedding_params

    def apply(self, model: nn.Module, parts: DecoderParts, shape: ModelShape) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


@register_method
@dataclass(frozen=True)
class BlockFreezing(MethodConfig):
    """Freeze the input embedding and the first L−k blocks; train the last k blocks and the final norm.

    ``trainable_blocks`` is either a whole number of blocks (``int >= 1``) or a fraction of the blocks
    (``0 < float <= 1``; rounded to the nearest block count, at least one).
    """

    trainable_blocks: int | float = 0.25
    name: ClassVar[str] = "freeze"
    # no backward into the frozen prefix at all: only the trained suffix pays the 4 N_t backward (and recompute)
    cost: ClassVar[TokenCost] = TokenCost(per_param=2, per_trainable=4, recomputes_trainable_only=True)
    colour: ClassVar[str] = "#2ca02c"
    cli_options: ClassVar[tuple[MethodOption, ...]] = (
        MethodOption("--trainable-blocks", "trainable_blocks", type=_fraction_or_blocks,
                     help="freeze: train the last k blocks (int) or this fraction of blocks (default: 0.25)"),
    )

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

    def blocks_with_gradients(self, num_blocks: int) -> int:
        return int(self.blocks_to_train(num_blocks))

    def apply(self, model: nn.Module, parts: DecoderParts, shape: ModelShape) -> nn.Module:
        k = self.blocks_to_train(parts.num_blocks)
        modules = dict(model.named_modules())
        for p in model.parameters():
            p.requires_grad_(False)
        for block in list(modules[parts.blocks_path])[parts.num_blocks - k :]:
            for p in block.parameters():
                p.requires_grad_(True)
        for n in parts.final_norm_paths:
            for p in modules[n].parameters():
                p.requires_grad_(True)
        return model


@register_method
@dataclass(frozen=True)
class BiasOnly(MethodConfig):
    """Train every parameter whose name ends in ``bias`` (linear and norm biases), nothing else."""

    name: ClassVar[str] = "bias"
    aliases: ClassVar[tuple[str, ...]] = ("bitfit",)
    cost: ClassVar[TokenCost] = TokenCost(per_param=4, per_trainable=2)
    colour: ClassVar[str] = "#9467bd"

    def trainable_params(self, shape: ModelShape) -> int:
        if shape.bias_params == 0:
            raise InputError(f"bias: model {shape.name!r} has no bias parameters, so bias-only trains nothing")
        return shape.bias_params

    def apply(self, model: nn.Module, parts: DecoderParts, shape: ModelShape) -> nn.Module:
        embedding_ids = _embedding_param_ids(model, parts)
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias") and id(p) not in embedding_ids)
        return model


@register_method
@dataclass(frozen=True)
class LoRA(MethodConfig):
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
    cost: ClassVar[TokenCost] = TokenCost(per_param=4, per_trainable=2)
    adapter: ClassVar[bool] = True
    colour: ClassVar[str] = "#d62728"
    cli_options: ClassVar[tuple[MethodOption, ...]] = (
        MethodOption("--lora-rank", "rank", type=int, help="lora: rank r (default: 32)"),
        MethodOption("--lora-alpha", "alpha", type=float, help="lora: alpha (default: = rank)"),
        MethodOption("--lora-dropout", "dropout", type=float, help="lora: dropout (default: 0)"),
        MethodOption("--lora-targets", "targets", type=_lora_targets,
                     help="lora: 'all-linear' (default: every linear layer of the blocks) or comma-separated "
                          "module names, e.g. query_key_value,dense"),
    )

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InputError(f"lora: rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None:
            object.__setattr__(self, "alpha", float(self.alpha))
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

    def apply(self, model: nn.Module, parts: DecoderParts, shape: ModelShape) -> nn.Module:
        # peft's get_peft_model directly: transformers 5.24's add_adapter (behind sentence-transformers'
        # add_adapter) requires peft >= 0.22, which this registry does not serve.
        from peft import LoraConfig, get_peft_model

        suffixes = self.target_suffixes(sorted(shape.linear_in_out))
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.dropout,
            target_modules=_lora_regex(parts.blocks_path, suffixes),
            bias="none",
        )
        return get_peft_model(model, config)


def _lora_regex(blocks_path: str, suffixes: list[str]) -> str:
    # A full-match regex so that only linear layers *inside the blocks* are adapted, never an LM head.
    prefix = re.escape(blocks_path) + r"\.\d+\.(?:.*\.)?"
    return rf"(?:.*\.)?{prefix}(?:{'|'.join(re.escape(s) for s in suffixes)})"


def parse_method(name: str, **hparams: Any) -> MethodConfig:
    """Build a method config from its name and hyper-parameters (unknown names/keys are input errors)."""
    cls = method_class(name)
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(hparams) - allowed
    if unknown:
        raise InputError(
            f"method {name!r} has no hyper-parameter(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
    return cls(**hparams)


def method_from_dict(d: Mapping[str, Any]) -> MethodConfig:
    """Inverse of :func:`method_to_dict`."""
    d = dict(d)
    name = d.pop("name", None) or d.pop("method", None)
    if name is None:
        raise InputError("method record has no 'name'")
    return parse_method(name, **d)


def method_to_dict(method: MethodConfig) -> dict[str, Any]:
    return {"name": method.name, **method.hparams()}


def _cost_of(method: str | MethodConfig) -> TokenCost:
    if isinstance(method, MethodConfig):
        return method.cost
    cls = METHODS.get(method)
    if cls is None:  # a ValueError as ever: names from users go through parse_method (an InputError)
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return cls.cost


def flops_per_token(method: str | MethodConfig, n_params: int, n_trainable: int) -> int:
    """Model FLOPs of one training token under ``method`` (a name or a config; see the module docstring)."""
    return _cost_of(method).model_flops(n_params, n_trainable)


def hardware_flops_per_token(method: str | MethodConfig, n_params: int, n_trainable: int, *,
                             gradient_checkpointing: bool = False, gradcache: bool = False,
                             n_recomputed: int | None = None) -> int:
    """Model FLOPs plus GradCache's extra forward and gradient checkpointing's recompute
    (:meth:`embrecipe.flops.TokenCost.hardware_flops`)."""
    return _cost_of(method).hardware_flops(n_params, n_trainable, gradient_checkpointing=gradient_checkpointing,
                                           gradcache=gradcache, n_recomputed=n_recomputed)
