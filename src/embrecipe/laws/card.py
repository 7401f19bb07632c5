"""The law card: a :class:`LawSet` of fitted laws with everything the planner needs, saved as JSON or YAML.

A card holds, per variant, the law's parameters and bootstrap samples, the fitted ranges, the method, the
held-out validation and trends, and, for the whole set, the model family (shapes), the data fingerprint,
tokens per pair, batch size, run noise, the LR recipe and its provenance. :meth:`LawSet.save` writes it
atomically; :meth:`LawSet.load` reads every card version up to :data:`CARD_VERSION` (older cards lack
later fields and still load).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embrecipe.errors import InputError
from embrecipe.jsonio import YAML_SUFFIXES, read_mapping, write_text_atomic
from embrecipe.laws.estimators import FORM
from embrecipe.laws.law import ScalingLaw
from embrecipe.models.family import family_fingerprint
from embrecipe.models.refs import portable_tree

CARD_VERSION = 1


@dataclass
class LawSet:
    """Fitted laws keyed by variant, with everything the planner needs to plan from the card alone."""

    laws: dict[str, ScalingLaw]
    methods: dict[str, dict[str, Any]]
    ranges: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    family: list[dict[str, Any]] = field(default_factory=list)
    data_fingerprint: str | None = None
    family_fingerprint: str | None = None
    provenance: str = "unlabelled"
    tokens_per_pair: float | None = None
    batch_size: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    trends: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    created_at: str = ""
    # Run-to-run noise measured from repeated seeds (run_noise()); sigma None = not measured.
    noise: dict[str, Any] = field(default_factory=dict)
    # The recipe beyond the law (embrecipe.recipe): {variant: {model: {lr, batch_size, lr_candidates, ...}}},
    # how the LRs were chosen, the batch sizes the runs used and the training data's size.
    recipe: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lr_protocol: str | None = None
    batch_sizes: list[int] = field(default_factory=list)
    unique_pairs: int | None = None
    unique_tokens: float | None = None
    effective_data: bool = False  # repeated-data runs were fitted at the effective tokens D'

    def __post_init__(self) -> None:
        if not self.laws:
            raise InputError("a LawSet needs at least one fitted law")
        # Models by testbed name or hub id, never by the folder they lived in on the machine that fitted the
        # card (older cards held absolute testbed paths; they load with those mapped: embrecipe.models.refs).
        self.family = portable_tree(self.family)
        self.recipe = portable_tree(self.recipe)
        self.points = portable_tree(self.points)
        self.trends = portable_tree(self.trends)
        self.validation = portable_tree(self.validation)
        if self.family:
            # recomputed, not trusted: older cards stored a fingerprint that hashed the models' paths too
            self.family_fingerprint = family_fingerprint(m.get("shape") for m in self.family)

    @property
    def variants(self) -> list[str]:
        return list(self.laws)

    def predict(self, variant: str, N: Any, D: Any) -> np.ndarray:
        return self[variant].predict(N, D)

    def __getitem__(self, variant: str) -> ScalingLaw:
        try:
            return self.laws[variant]
        except KeyError:
            raise InputError(f"no law for variant {variant!r}; have: {', '.join(self.laws)}") from None

    def to_dict(self) -> dict[str, Any]:
        from embrecipe import __version__

        return {
            "card_version": CARD_VERSION,
            "kind": "embrecipe-law-card",
            "embrecipe_version": __version__,
            "created_at": self.created_at,
            "provenance": self.provenance,
            "form": FORM,
            "data_fingerprint": self.data_fingerprint,
            "family_fingerprint": self.family_fingerprint,
            "family": self.family,
            "tokens_per_pair": self.tokens_per_pair,
            "batch_size": self.batch_size,
            "variants": {
                v: {"method": self.methods[v], **law.to_dict(), "ranges": self.ranges.get(v, law.ranges_)}
                for v, law in self.laws.items()
            },
            "batch_sizes": list(self.batch_sizes),
            "unique_pairs": self.unique_pairs,
            "unique_tokens": self.unique_tokens,
            "effective_data": self.effective_data,
            "lr_protocol": self.lr_protocol,
            "recipe": self.recipe,
            "skipped": self.skipped,
            "validation": self.validation,
            "trends": self.trends,
            "points": self.points,
            "noise": self.noise,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LawSet:
        if d.get("kind") != "embrecipe-law-card":
            raise InputError("not an embrecipe law card (missing kind: embrecipe-law-card)")
        if int(d.get("card_version", 0)) > CARD_VERSION:
            raise InputError(f"law card version {d.get('card_version')} is newer than this embrecipe reads")
        variants = d.get("variants") or {}
        return cls(
            laws={v: ScalingLaw.from_dict(x) for v, x in variants.items()},
            methods={v: dict(x["method"]) for v, x in variants.items()},
            ranges={v: dict(x.get("ranges", {})) for v, x in variants.items()},
            family=list(d.get("family") or []),
            data_fingerprint=d.get("data_fingerprint"),
            family_fingerprint=d.get("family_fingerprint"),
            provenance=str(d.get("provenance", "unlabelled")),
            tokens_per_pair=d.get("tokens_per_pair"),
            batch_size=d.get("batch_size"),
            skipped=dict(d.get("skipped") or {}),
            validation=dict(d.get("validation") or {}),
            trends=dict(d.get("trends") or {}),
            points=dict(d.get("points") or {}),
            created_at=str(d.get("created_at", "")),
            noise=dict(d.get("noise") or {}),
            # absent from cards written before the LR was part of the recipe: they still load
            recipe={v: dict(x) for v, x in dict(d.get("recipe") or {}).items()},
            lr_protocol=d.get("lr_protocol"),
            batch_sizes=[int(b) for b in (d.get("batch_sizes") or ([d["batch_size"]] if d.get("batch_size") else []))],
            unique_pairs=None if d.get("unique_pairs") is None else int(d["unique_pairs"]),
            unique_tokens=None if d.get("unique_tokens") is None else float(d["unique_tokens"]),
            effective_data=bool(d.get("effective_data", False)),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the law card: JSON, or YAML when the name ends in .yaml/.yml."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in YAML_SUFFIXES:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=1)
        return write_text_atomic(path, text)  # a reader never sees half a card

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LawSet:
        return cls.from_dict(read_mapping(path, "law card"))
