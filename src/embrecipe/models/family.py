"""Model families and the introspection that finds blocks, embeddings and the final norm of any HF decoder.

A *family* is an ordered list of checkpoints of one architecture at different sizes (e.g. Pythia 14m…2.8b,
or the depth ladder of the testbed). Each member carries its :class:`~embrecipe.flops.ModelShape`, so the
planner can cost a recipe without loading weights.

Introspection rather than a per-architecture table: the decoder blocks are the longest ``nn.ModuleList`` of
identical module classes, embeddings are ``nn.Embedding`` modules, and the final norm is the normalisation
module outside the blocks. This holds for GPT-NeoX, Llama/SmolLM2, GPT-2, Qwen2, Mistral, Gemma, OPT...

Example::

    >>> fam = Family.from_checkpoints(["EleutherAI/pythia-14m", "EleutherAI/pythia-70m"])  # doctest: +SKIP
    >>> fam.save("pythia.json")                                                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape
from embrecipe.jsonio import read_mapping, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class DecoderParts:
    """Where things live inside one HF decoder (module paths relative to the base model)."""

    blocks_path: str
    num_blocks: int
    embedding_paths: tuple[str, ...]
    final_norm_paths: tuple[str, ...]


def _is_linear(module: nn.Module) -> bool:
    from torch import nn

    if isinstance(module, nn.Linear):
        return True
    # GPT-2 style Conv1D is a linear layer with a transposed weight; peft's LoRA supports it.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _linear_in_out(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features) + int(module.out_features)
    w = module.weight
    return int(w.shape[0]) + int(w.shape[1])


def find_decoder_parts(model: nn.Module) -> DecoderParts:
    """Locate the block list, embeddings and final norm of a decoder by introspection."""
    from torch import nn

    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            classes = {type(m) for m in module}
            has_params = any(True for _ in module[0].parameters())
            if len(classes) == 1 and has_params and (best is None or len(module) > best[0]):
                best = (len(module), name)
    if best is None:
        raise InputError(f"could not find the decoder blocks of {type(model).__name__} (no nn.ModuleList of layers)")
    num_blocks, blocks_path = best
    embeddings = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Embedding))
    if not embeddings:
        raise InputError(f"could not find an input embedding in {type(model).__name__}")
    inside = (blocks_path + ".", *(e + "." for e in embeddings))
    norms = []
    for name, module in model.named_modules():
        if not name or name == blocks_path or name.startswith(inside) or name in embeddings:
            continue
        cls = type(module).__name__.lower()
        if ("norm" in cls or isinstance(module, nn.LayerNorm)) and any(True for _ in module.parameters(recurse=False)):
            norms.append(name)
    return DecoderParts(blocks_path, num_blocks, embeddings, tuple(norms))


def _numel(params: Iterable) -> int:
    return int(sum(p.numel() for p in params))


def shape_of(model: nn.Module, name: str = "") -> ModelShape:
    """The :class:`ModelShape` of a loaded (or meta-device) HF decoder base model."""
    parts = find_decoder_parts(model)
    modules = dict(model.named_modules())
    blocks = modules[parts.blocks_path]
    # Shared (tied) parameters are counted once, as parameters() does.
    embedding_ids = {id(p) for e in parts.embedding_paths for p in modules[e].parameters()}
    block_params = tuple(_numel(p for p in b.parameters() if id(p) not in embedding_ids) for b in blocks)
    norm_params = _numel(p for n in parts.final_norm_paths for p in modules[n].parameters())
    total = _numel(p for p in model.parameters())
    embedding = _numel(p for p in model.parameters() if id(p) in embedding_ids)
    other = total - embedding - sum(block_params) - norm_params
    bias = _numel(p for n, p in model.named_parameters() if n.endswith("bias") and id(p) not in embedding_ids)
    linear: dict[str, int] = {}
    for mname, module in blocks.named_modules():
        if _is_linear(module):
            suffix = mname.rsplit(".", 1)[-1]
            linear[suffix] = linear.get(suffix, 0) + _linear_in_out(module)
    hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    return ModelShape(
        name=name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__,
        embedding_params=embedding,
        block_params=block_params,
        final_norm_params=norm_params,
        bias_params=bias,
        linear_in_out=dict(sorted(linear.items())),
        other_params=other,
        hidden_size=hidden,
    )


def shape_of_checkpoint(name_or_path: str, *, gguf_file: str | None = None, name: str = "") -> ModelShape:
    """Shape of a checkpoint from its config alone (weights are not read: the model is built on 'meta')."""
    import torch
    from transformers import AutoConfig, AutoModel

    from embrecipe.models.refs import resolve_model

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        # a testbed name is the member under $EMBRECIPE_HOME/testbed, never a hub id to fetch
        config = AutoConfig.from_pretrained(resolve_model(name_or_path), **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"model {name_or_path!r}: cannot read its config ({str(exc).splitlines()[0]})") from exc
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return shape_of(model, name=name or Path(str(name_or_path)).name)


@dataclass(frozen=True)
class FamilyMember:
    name: str
    path: str  # a testbed name, a hub id or a local path (resolved at use: embrecipe.models.refs.resolve_model)
    shape: ModelShape
    gguf_file: str | None = None
    content_hash: str | None = None  # of the weights, where known (testbed members: their manifest)

    @property
    def non_embedding_params(self) -> int:
        return self.shape.non_embedding_params

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "path": self.path,
                             "non_embedding_params": self.non_embedding_params, "shape": self.shape.to_dict()}
        if self.gguf_file:
            d["gguf_file"] = self.gguf_file
        if self.content_hash:
            d["content_hash"] = self.content_hash
        return d


@dataclass
class Family:
    """An ordered list of checkpoints (smallest first), saved as JSON (or YAML) with their shapes."""

    name: str
    members: list[FamilyMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members.sort(key=lambda m: m.non_embedding_params)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str], name: str = "family") -> Family:
        members = [FamilyMember(name=Path(p).name or p, path=str(p), shape=shape_of_checkpoint(p)) for p in paths]
        return cls(name=name, members=members)

    @classmethod
    def load(cls, path: str | Path) -> Family:
        path = Path(path)
        from embrecipe.models.refs import resolve_model, testbed_layers

        raw = read_mapping(path, "family file")
        if not isinstance(raw.get("members"), list) or not raw["members"]:
            raise InputError(f"family file {path}: expected an object with a non-empty 'members' list")
        members = []
        for i, m in enumerate(raw["members"]):
            where = f"family file {path}: members[{i}]"
            if not isinstance(m, dict) or "path" not in m:
                raise InputError(f"{where}: expected an object with at least 'path'")
            base = path.parent
            p = str(m["path"])
            if testbed_layers(p) is None and not Path(p).is_absolute() and (base / p).exists():
                p = str((base / p).resolve())  # a testbed name stays a name: resolved under $EMBRECIPE_HOME at use
            try:
                shape = ModelShape.from_dict(m["shape"]) if "shape" in m else shape_of_checkpoint(
                    resolve_model(p), gguf_file=m.get("gguf_file"), name=Path(p).name)
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{where}: malformed 'shape' ({exc})") from exc
            members.append(FamilyMember(name=str(m.get("name") or Path(p).name), path=p, shape=shape,
                                        gguf_file=m.get("gguf_file"), content_hash=m.get("content_hash")))
        return cls(name=str(raw.get("name") or path.stem), members=members)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"name": self.name, "members": [m.to_dict() for m in self.members]}
        return write_text_atomic(path, json.dumps(data, indent=2) + "\n")

    @property
    def shapes(self) -> list[ModelShape]:
        return [m.shape for m in self.members]

    def fingerprint(self) -> str:
        """The family's :func:`family_fingerprint` (the one a law card records)."""
        return family_fingerprint(m.shape.to_dict() for m in self.members)


def family_fingerprint(shapes: Iterable[Mapping[str, Any] | None]) -> str:
    """Content hash of a family's shapes, independent of member order and of how a shape dict was written.

    Each shape is normalised through :class:`ModelShape` (so equivalent dicts agree) and its ``name`` dropped (the
    content, not the path, identifies a model: :mod:`embrecipe.models.refs`), the list is sorted by
    its JSON text, and the first 16 hex digits of the SHA-256 of the sorted JSON are kept. Law cards store
    this value (``family_fingerprint``); the planner compares it with the family it is given.

        >>> s = ModelShape(name="toy", embedding_params=10, block_params=(100, 100),
        ...                final_norm_params=0, bias_params=0).to_dict()
        >>> family_fingerprint([s, None]) == family_fingerprint([None, s])
        True
    """
    # The name is left out: it is where the model lived (a path, a testbed name), not what it is, so the same
    # models named by another path or name have the same fingerprint.
    norm = [None if s is None else {k: v for k, v in ModelShape.from_dict(s).to_dict().items() if k != "name"}
            for s in shapes]
    ordered = sorted(norm, key=lambda d: json.dumps(d, sort_keys=True))
    return hashlib.sha256(json.dumps(ordered, sort_keys=True).encode()).hexdigest()[:16]
