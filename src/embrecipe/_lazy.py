"""Lazy package exports: a stage's ``__init__`` names its public objects without importing its modules.

Why by hand: the training and model stages import torch and transformers (seconds), while the pure stages (FLOP
formulas, laws, the planner) must import in milliseconds; PEP 562's module ``__getattr__`` gives both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``name`` lives in submodule ``exports[name]``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
