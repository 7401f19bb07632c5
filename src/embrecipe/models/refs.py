"""How cards and family files name a model portably, and how a name becomes a checkpoint at use.

A card written on one machine must plan on another: it names each model by its **testbed name**
(``smollm2-L4``, built under ``$EMBRECIPE_HOME/testbed`` by ``embrecipe testbed models``) or its **hub id**
(``EleutherAI/pythia-70m``), never by the absolute folder it happened to live in, plus its shape and a content
hash. The shape (:func:`shape_key`, the architecture without the name) is what the family fingerprint and the
LR lookup compare, so the same models at another path are the same family. The testbed content hash
(:func:`testbed_content_hash`, of the member's manifest of file checksums) says whether the weights are the same.

Cards written before this named testbed models by absolute path (``/root/.cache/embrecipe/testbed/smollm2-L4``);
:func:`portable` maps those to the testbed name when they load. Other paths (your own local models) are kept
as given: only you can say where they live.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError

MANIFEST = "manifest.json"  # what a built testbed member holds: its files' sha256, its depth, its source


def testbed_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Where testbed checkpoints live: ``home`` or ``$EMBRECIPE_HOME`` or ``~/.cache/embrecipe``, + ``/testbed``."""
    root = home or os.environ.get("EMBRECIPE_HOME") or Path.home() / ".cache" / "embrecipe"
    return Path(root).expanduser() / "testbed"


# The testbed's ladders, and the flag of `embrecipe testbed models` that builds each one's members.
TESTBED_FAMILIES = {"smollm2": "", "qwen2.5-coder-0.5b": " --family qwen2.5-coder-0.5b"}
_FAMILY = "|".join(re.escape(f) for f in TESTBED_FAMILIES)
# A testbed member's name (testbed.models.member_name), alone or as the last part of a path in a testbed folder.
_TESTBED_NAME = re.compile(rf"^({_FAMILY})-L(\d+)$")
_TESTBED_PATH = re.compile(rf"^(?:.*[/\\])?testbed[/\\]((?:{_FAMILY})-L\d+)[/\\]?$")


def testbed_layers(ref: str) -> int | None:
    """The depth of the testbed member ``ref`` names (``smollm2-L4`` → 4), or None for any other model."""
    m = _TESTBED_NAME.match(str(ref))
    return int(m.group(2)) if m else None


def portable(ref: str) -> str:
    """``ref`` as a card should hold it: a path into some testbed folder becomes the member's testbed name;
    testbed names, hub ids and other paths are returned unchanged."""
    m = _TESTBED_PATH.match(str(ref))
    return m.group(1) if m and os.path.isabs(ref) else str(ref)


def portable_tree(obj: Any) -> Any:
    """``obj`` (a card's JSON) with every string and key that is a testbed path made portable."""
    if isinstance(obj, Mapping):
        return {portable(k) if isinstance(k, str) else k: portable_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_tree(v) for v in obj]
    if isinstance(obj, str):
        return portable(obj)
    return obj


def shape_key(shape: Mapping[str, Any] | None) -> str | None:
    """The content key of a model's architecture: a hash of its :class:`~embrecipe.flops.ModelShape` without the
    name (the same model at another path, or under another name, has the same key)."""
    if shape is None:
        return None
    from embrecipe.flops import ModelShape

    d = ModelShape.from_dict(shape).to_dict()
    d.pop("name", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def testbed_content_hash(member_dir: str | os.PathLike[str]) -> str | None:
    """The content hash of a built testbed member: of its manifest's file checksums (the weights, config and
    tokenizer), 16 hex digits; None when the folder has no readable manifest."""
    try:
        files = json.loads((Path(member_dir) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def build_command(ref: str) -> str:
    """The one command that builds the testbed member ``ref`` names."""
    m = _TESTBED_NAME.match(str(ref))
    family = m.group(1) if m else "smollm2"
    return f"embrecipe testbed models{TESTBED_FAMILIES[family]} --layers {testbed_layers(ref)}"


def resolve_model(ref: str, home: str | os.PathLike[str] | None = None) -> str:
    """Where the model ``ref`` is at use: a testbed name (or an old card's testbed path that is not here) is
    the member under ``$EMBRECIPE_HOME/testbed``, which must be built (the error names the command that builds
    it); a hub id or another path is returned unchanged (the trainer loads it or says why not)."""
    ref = str(ref)
    name = portable(ref)
    layers = testbed_layers(name)
    if layers is None or Path(ref).is_dir():
        return ref  # not a testbed model, or a folder that exists here (an old card's path): use it as it is
    local = testbed_home(home) / name
    if not _built(local, layers):
        raise InputError(f"model {name}: the testbed member is not built under {testbed_home(home)} "
                         f"($EMBRECIPE_HOME/testbed); build it with: {build_command(name)}")
    return str(local)


def _built(member_dir: Path, layers: int) -> bool:
    """A testbed member is built when its manifest names its depth and every file it lists is there. The build
    checked each file's sha256 and its source (``embrecipe testbed models`` re-verifies); resolving a model at
    use does not re-hash hundreds of MB, and a member damaged since fails at load with the file's name."""
    try:
        manifest = json.loads((member_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("layers") == layers and all((member_dir / f).is_file() for f in manifest.get("files", ()))
