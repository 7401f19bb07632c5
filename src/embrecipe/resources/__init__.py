"""Files that ship inside the package: the testbed's frozen pairs (``pairs/``), the corpus's reference summary
(``corpus/``) and the default law card (``laws/``). Read them through :func:`resource_path`, never through a path
relative to a module, so that moving a module cannot break them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. ``resource_path("laws", "default.json")``."""
    return Path(str(resources.files(__name__))).joinpath(*parts)


SPLITS = ("train", "validation", "test")


def shipped_split(folder: str, split: str, *, what: str, rebuild: str) -> Path:
    """The shipped gzip JSONL file of ``split`` in ``folder`` (``pairs``: the docstring pairs; ``general``: the
    general-purpose sample): a one-line error for an unknown split, or a missing file with the command (``rebuild``)
    that writes it back."""
    from embrecipe.errors import EmbrecipeError, InputError

    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = resource_path(folder, f"{split}.jsonl.gz")
    if not path.is_file():
        raise EmbrecipeError(f"shipped {what} {path} is missing; rebuild: {rebuild} --out {resource_path(folder)}")
    return path
