"""Pre-flight checks of a run's output directory, before anything loads or trains.

An unusable ``out`` (a file, not writable, not empty, ``--resume`` without a checkpoint) or a disk too small for
the export and its checkpoints fails in the first second with a one-line error, not after hours of training.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from embrecipe.errors import InputError, OutOfDiskSpace
from embrecipe.training.checkpoint import checkpoint_file, recover_checkpoint


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(directory: Path) -> bool:
    # A real probe, not os.access: ACLs, read-only mounts and root squash all show up only when writing.
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable ``out`` before anything trains: a file, not writable, not empty, or --resume with no
    checkpoint there. ``overwrite`` allows a non-empty directory (its run files are replaced, others kept)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a directory")
    anchor = _existing_ancestor(out)
    if not anchor.is_dir():
        raise InputError(f"--out {out}: {anchor} is a file, not a directory")
    if not _writable(anchor):
        raise InputError(f"--out {out}: {anchor} is not writable")
    if resume:
        recover_checkpoint(out / "checkpoint")
        if not checkpoint_file(out / "checkpoint").exists():
            raise InputError(f"--resume: {out / 'checkpoint'} holds no checkpoint, so there is nothing to resume; "
                             "run without --resume to start afresh")
        return
    if overwrite or not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if "run.json" in entries:
        raise InputError(f"--out {out} already holds a finished run (run.json); choose another --out, delete "
                         "it, or pass --overwrite")
    if "checkpoint" in entries:
        raise InputError(f"--out {out} holds the checkpoint of an unfinished run; pass --resume to continue it or "
                         "--overwrite to start over")
    raise InputError(f"--out {out} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); choose a new or "
                     "empty directory, or pass --overwrite to write into it")


def disk_bytes_needed(export_bytes: int, trainable_bytes: int, checkpoints: bool) -> int:
    """Free disk a run needs in ``out``: the export, plus a checkpoint (weights + two AdamW moments of the trainable
    parameters, written beside the old one before it is replaced: two copies) when checkpointing, plus 10 %."""
    ckpt = 2 * 3 * trainable_bytes if checkpoints else 0
    return int(1.1 * (export_bytes + ckpt)) + (1 << 20)


def check_disk_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(_existing_ancestor(out)).free
    if free < needed:
        raise OutOfDiskSpace(f"--out {out}: {_size(free)} free on its disk but the run needs about "
                             f"{_size(needed)} (model export and checkpoints); free space or choose another --out")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
