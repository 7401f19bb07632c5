"""The user's data as the planner sees it: how many training pairs, how many tokens per pair.

A plan is made for the data it will train on. ``embrecipe plan --data`` and ``embrecipe run`` (and
:func:`embrecipe.run_recipe.plan_recipe`) measure the pairs here and pass the result to
:func:`embrecipe.planning.planner.plan` as keyword options::

    >>> from embrecipe.planning.planner import load_laws, plan
    >>> laws = load_laws(None)
    >>> measured = measure_data("pairs.jsonl", laws, None, max_seq_length=75)   # doctest: +SKIP
    >>> plan(1e15, laws, **measured)                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError

if TYPE_CHECKING:
    from embrecipe.laws import LawSet
    from embrecipe.models.family import FamilyMember


def measure_data(data: str | os.PathLike[str] | None, laws: LawSet, family: Sequence[FamilyMember] | None, *,
                 max_seq_length: int, tokens_per_pair: float | None = None, unique_pairs: int | None = None,
                 hard_negatives: int = 0, val_fraction: float | None = None, query_prompt: str | None = None,
                 doc_prompt: str | None = None) -> dict[str, Any]:
    """The plan's data options measured on the user's pairs: ``tokens_per_pair`` (the sampling estimator the
    sweep uses, with the family's tokenizer, on the texts as the run will see them: with ``query_prompt`` and
    ``doc_prompt`` prepended, whose tokens are metered too), ``unique_pairs`` (the training pairs, after a validation split) and
    ``data_fingerprint``; values given by the caller win. Without ``data``: just those values.

    When the family's tokenizer is not here, ``tokens_per_pair`` is None and ``data_note`` says why (the planner
    then uses the card's value and warns)."""
    out: dict[str, Any] = {"tokens_per_pair": tokens_per_pair, "unique_pairs": unique_pairs}
    if data is None:
        return out
    from embrecipe.data.pairs import load_pairs

    if not Path(data).exists():
        raise InputError(f"data {data} does not exist")
    pairs = load_pairs(Path(data))
    out["data_fingerprint"] = pairs.fingerprint()
    if unique_pairs is None:
        split = max(1, round(val_fraction * len(pairs))) if val_fraction else 0
        out["unique_pairs"] = max(1, len(pairs) - split)
    if tokens_per_pair is None:
        from embrecipe.data.pairs import with_prompts

        texts = with_prompts(pairs.columns(hard_negatives), query_prompt, doc_prompt)
        out["tokens_per_pair"], out["data_note"] = _tokens_per_pair(texts, laws, family, max_seq_length)
    return out


def _tokens_per_pair(texts: list[list[str]], laws: LawSet, family: Sequence[FamilyMember] | None,
                     max_seq_length: int) -> tuple[float | None, str | None]:
    """Mean tokens per pair of the text columns ``texts`` with the family's tokenizer (its smallest member's; a family shares
    one), or None and why not (the planner then uses the card's value and says so)."""
    from embrecipe.data.pairs import estimate_tokens_per_pair
    from embrecipe.models.refs import resolve_model
    from embrecipe.planning.planner import family_from_laws

    members = list(family) if family is not None else family_from_laws(laws)
    ref = min(members, key=lambda m: m.shape.non_embedding_params).path
    try:
        model = resolve_model(ref)
    except InputError as exc:
        return None, str(exc)
    if not (Path(model).is_dir() or "/" in model):  # neither a local checkpoint nor a hub id: no tokenizer
        return None, f"model {ref}: no checkpoint here to read its tokenizer from"
    try:
        return estimate_tokens_per_pair(texts, model, max_seq_length=max_seq_length), None
    except (OSError, ValueError) as exc:
        return None, f"model {ref}: cannot load its tokenizer ({str(exc).splitlines()[0]})"
