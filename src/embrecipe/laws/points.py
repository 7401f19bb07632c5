"""Run points: what a scaling-law fit needs from one completed run, read from a typed run record.

:func:`run_point` turns a :class:`~embrecipe.runs.records.RunRecord` (or a dict of any layout it reads) into a
:class:`RunPoint` (variant, N, D, FLOPs, loss, and the run's configuration without its seed, so that
repeated seeds can be told apart); :func:`group_by_variant` groups points per fitted variant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.runs.records import RunRecord, as_record, run_key


@dataclass(frozen=True)
class RunPoint:
    """What the fit needs from one completed run."""

    key: str
    variant: str
    method: dict[str, Any]
    model: str
    N: float
    D: float
    C: float
    budget: float
    loss: float
    n_trainable: float | None = None
    shape: dict[str, Any] | None = None
    tokens_per_pair: float | None = None
    batch_size: int | None = None
    data_fingerprint: str | None = None
    # Identity of the configuration without its seed: runs sharing a cell are repeated seeds.
    cell: str | None = None
    seed: Any = None
    lr: float | None = None
    unique_pairs: int | None = None  # training pairs the run drew from (its data set, not pairs processed)


def finite_records(records: Iterable[RunRecord | Mapping[str, Any]],
                   loss_key: str | None = None) -> tuple[list[RunRecord], int]:
    """Which runs can be fitted: (records to fit, how many were dropped). Drops runs marked failed and those
    whose loss is NaN/inf. Every fit applies it (:func:`~embrecipe.laws.fit_laws`, the report's points, the
    recipe check), so ``fit``, ``plan --laws STORE``, ``report`` and ``check`` fit the same runs.

    Stores written before divergence was detected hold diverged runs as ``completed`` with a NaN loss (strict
    JSON stores it as null); one of them would make its whole variant unfittable. A null loss is dropped only
    when other runs have one: if none has, the fit's own error (use --loss-key final_train_loss) is the answer.
    """
    # the field the fit reads (laws.run_point): --loss-key, else the first validation loss present
    runs = [as_record(r) for r in records]
    losses = [r.loss(loss_key) for r in runs]
    some_have_loss = any(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
    kept = []
    for r, loss in zip(runs, losses, strict=True):
        non_finite = isinstance(loss, (int, float)) and not math.isfinite(loss)
        if r.status == "failed" or non_finite or (loss is None and some_have_loss):
            continue
        kept.append(r)
    return kept, len(runs) - len(kept)


def run_point(record: RunRecord | Mapping[str, Any], *, loss_key: str | None = None) -> RunPoint:
    """Extract a :class:`RunPoint` from a run record (a :class:`~embrecipe.runs.records.RunRecord`, or a dict of
    any layout it reads). ``loss_key`` picks the loss field (default: the final validation loss)."""
    from embrecipe.flops import ModelShape
    from embrecipe.models.methods import method_from_dict, method_to_dict

    rec = as_record(record)
    key = str(rec.key or "?")
    if rec.method is None:
        raise InputError(f"run {key}: record has no 'method'")
    method = method_from_dict(rec.method)
    # Sorted keys: the order a shape always had when read back from a store (whose JSON is key-sorted).
    shape = None if rec.shape is None else dict(sorted(rec.shape.to_dict().items()))
    n = rec.n_params
    if n is None and shape is not None:
        n = shape.get("non_embedding_params") or ModelShape.from_dict(shape).non_embedding_params
    loss = rec.loss(loss_key)
    d, budget = rec.tokens, rec.budget
    spent = rec.model_flops if rec.model_flops is not None else budget
    missing = [name for name, x in (("n_params", n), ("tokens", d), (loss_key or "final_val_loss", loss))
               if x is None]
    if spent is None:
        missing.append("model_flops/budget")
    if missing:
        hint = " (no validation loss: fit with loss_key='final_train_loss' or add validation data)" \
            if "final_val_loss" in missing else ""
        raise InputError(f"run {key}: record lacks {', '.join(missing)}{hint}")
    assert n is not None and d is not None and loss is not None and spent is not None  # ruled out by `missing`
    c = float(spent)
    tpp = rec.tokens_per_pair
    if tpp is None and rec.pairs:
        tpp = float(d) / float(rec.pairs)
    elif tpp is None and rec.steps and rec.batch_size:
        tpp = float(d) / (float(rec.steps) * float(rec.batch_size))
    return RunPoint(
        key=key, variant=method.key, method=method_to_dict(method), model=str(rec.model or "?"),
        N=float(n), D=float(d), C=c, budget=float(budget) if budget is not None else c, loss=float(loss),
        n_trainable=None if rec.n_trainable is None else float(rec.n_trainable),
        shape=shape,
        tokens_per_pair=None if tpp is None else float(tpp),
        batch_size=None if rec.batch_size is None else int(rec.batch_size),
        data_fingerprint=rec.data_fingerprint,
        cell=_cell(rec, method.key),
        seed=rec.seed,
        lr=rec.lr,
        unique_pairs=rec.unique_pairs,
    )


def _cell(record: RunRecord, variant: str) -> str:
    """The run's configuration minus its seed (run-key hash of the config), or, for records without a
    config, (variant, model, budget, batch size)."""
    cfg = None if record.config is None else record.config.to_dict()
    if cfg:
        try:
            return run_key({k: x for k, x in cfg.items() if k != "seed"})
        except (TypeError, ValueError, EmbrecipeError):
            pass
    return json.dumps([variant, str(record.model), record.budget, record.batch_size], default=str)



def group_by_variant(points: Iterable[RunPoint]) -> dict[str, list[RunPoint]]:
    """Points per variant, variants in sorted order (each variant is fitted on its own runs)."""
    groups: dict[str, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(p.variant, []).append(p)
    return dict(sorted(groups.items()))
