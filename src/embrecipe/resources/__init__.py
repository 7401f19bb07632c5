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
