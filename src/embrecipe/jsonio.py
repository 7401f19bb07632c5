"""Files of JSON (and YAML): one strict-JSON rule for run records, one reader and one atomic writer for the
mapping files embrecipe keeps (law cards, family files).

A diverged run's loss is NaN; ``json.dumps`` would write a bare ``NaN`` token, which is not JSON. Every record
is passed through :func:`json_safe` (non-finite floats become ``null``) and dumped with ``allow_nan=False``.

    >>> json_safe({"loss": float("nan"), "curve": [[1, 2.5], [2, float("inf")]]})
    {'loss': None, 'curve': [[1, 2.5], [2, None]]}

:func:`read_mapping` reads JSON, or YAML when the name ends in ``.yaml``/``.yml``; a bad file is one
:class:`~embrecipe.errors.InputError` line naming the file and, when the parser says it, the line::

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "card.json"
    >>> _ = bad.write_text('{"a": 1,\\n "b": }')
    >>> read_mapping(bad, "law card")
    Traceback (most recent call last):
    ...
    embrecipe.errors.InputError: law card .../card.json:2: not valid JSON: Expecting value (column 7)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError

YAML_SUFFIXES = (".yaml", ".yml")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so ``json.dumps(..., allow_nan=False)`` is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON to ``path`` through a temporary file and a rename (never half-written)."""
    # Strict JSON: a diverged run's NaN losses become null instead of bare NaN tokens.
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")


def read_mapping(path: str | os.PathLike[str], what: str, *, yaml_always: bool = False) -> dict[str, Any]:
    """The mapping a JSON (or, by suffix, YAML) file holds; ``what`` names the file in errors ("law card").

    ``yaml_always``: parse as YAML whatever the suffix (a YAML format; YAML reads JSON too).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path}: cannot be read ({exc})") from None
    if yaml_always or path.suffix in YAML_SUFFIXES:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{what} {where}: not valid YAML: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{what} {path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{what} {path} does not hold a mapping")
    return dict(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
