"""Strict JSON for run records: the trainer's ``run.json`` and the run store share one rule.

A diverged run's loss is NaN; ``json.dumps`` would write a bare ``NaN`` token, which is not JSON. Every record
is passed through :func:`json_safe` (non-finite floats become ``null``) and dumped with ``allow_nan=False``.

    >>> json_safe({"loss": float("nan"), "curve": [[1, 2.5], [2, float("inf")]]})
    {'loss': None, 'curve': [[1, 2.5], [2, None]]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so ``json.dumps(..., allow_nan=False)`` is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
