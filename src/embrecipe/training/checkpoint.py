"""Checkpoints: save, load and recover a run's trained weights, optimizer, RNG and loop state.

Layout (one directory, ``out/checkpoint``), unchanged since it was introduced so an older checkpoint resumes:
``params.safetensors`` (the trainable weights), ``state.json`` (the :class:`~embrecipe.training.budget.LoopState` and the
config fingerprint) and ``state.pt`` (optimizer and RNG tensors). A new checkpoint is written beside the old one
and swapped in by two renames, so a kill at any moment leaves one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import EmbrecipeError, InputError, OutOfDiskSpace, is_disk_full, write_failure
from embrecipe.runs.records import NON_IDENTITY_KEYS
from embrecipe.training.budget import LoopState

if TYPE_CHECKING:
    from embrecipe.data.pairs import PairData
    from embrecipe.training.config import TrainConfig

def run_fingerprint(config: TrainConfig, data: PairData) -> str:
    """What a checkpoint must have been written by to resume: the config's identity (without the operational
    settings of :data:`~embrecipe.runs.records.NON_IDENTITY_KEYS`, nor the simulated kill and the host's sync cadence,
    which do not change what the run computes either) and the data's fingerprint."""
    skip = NON_IDENTITY_KEYS | {"stop_after_steps", "sync_every"}
    keep = {k: v for k, v in config.to_dict().items() if k not in skip}
    return json.dumps(keep, sort_keys=True, default=str) + data.fingerprint()


# Checkpoint layout: params.safetensors (trained weights), state.json (plain loop state and the config
# fingerprint), state.pt (optimizer/RNG tensors, read with torch.load(weights_only=True): no pickled
# code runs, so a planted file cannot execute anything on --resume).
def checkpoint_file(ckpt_dir: Path) -> Path:
    return ckpt_dir / "state.pt"


def recover_checkpoint(ckpt_dir: Path) -> None:
    # A kill between the two renames of save_checkpoint leaves only <checkpoint>.old: it is complete, use it.
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if not ckpt_dir.exists() and checkpoint_file(old).exists():
        os.replace(old, ckpt_dir)


def checkpoint_step(ckpt_dir: Path) -> int | None:
    try:
        return int(json.loads((ckpt_dir / "state.json").read_text())["state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(ckpt_dir: Path, fingerprint: str, device: Any) -> dict[str, Any]:
    import pickle

    import torch

    path = checkpoint_file(ckpt_dir)
    meta_path = ckpt_dir / "state.json"
    meta = None
    if meta_path.exists():  # read first: a checkpoint of another config is refused before any binary is opened
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta_path}: unreadable checkpoint state ({exc})") from None
        if meta.get("fingerprint") != fingerprint:
            raise InputError(f"{ckpt_dir}: checkpoint was written by a different configuration or data")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a checkpoint that can be loaded safely (weights only): {first}") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: not an embrecipe checkpoint")
    if meta is None:  # the older single-file layout (everything in state.pt)
        if saved.get("fingerprint") != fingerprint:
            raise InputError(f"{ckpt_dir}: checkpoint was written by a different configuration or data")
        return saved
    from safetensors.torch import load_file

    try:
        params = load_file(str(ckpt_dir / "params.safetensors"), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise InputError(f"{ckpt_dir / 'params.safetensors'}: cannot read the checkpoint weights ({exc})") from None
    return {"params": params, "state": meta["state"], **saved}


def save_checkpoint(ckpt_dir: Path, model: Any, optimizer: Any, state: LoopState, fingerprint: str) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        params = {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        save_file(params, str(tmp / "params.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, checkpoint_file(tmp))
        (tmp / "state.json").write_text(json.dumps({"fingerprint": fingerprint, "state": state.to_dict()},
                                                    allow_nan=False))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint is never left beside the good one
        why = write_failure(exc)
        if why is None:
            raise  # not a failure of the disk: a bug (or Ctrl-C), keep it as it is
        kept = "the last complete checkpoint is kept" if checkpoint_file(ckpt_dir).exists() else "none was kept"
        raise (OutOfDiskSpace if is_disk_full(exc) else EmbrecipeError)(
            f"writing the checkpoint {ckpt_dir} failed ({why}); {kept}") from exc
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def restore_checkpoint(ckpt_dir: Path, fingerprint: str, model: Any, optimizer: Any, device: Any) -> LoopState:
    """Load the checkpoint in ``ckpt_dir`` into ``model`` and ``optimizer`` (and the global torch RNG); its loop
    state. Refused (:class:`InputError`) when another config or data wrote it, or it holds unknown parameters."""
    import torch

    saved = load_checkpoint(ckpt_dir, fingerprint, device)
    named = dict(model.named_parameters())
    unknown = set(saved["params"]) - set(named)
    if unknown:
        raise InputError(f"{ckpt_dir}: checkpoint holds parameters this model lacks (e.g. {min(unknown)})")
    with torch.no_grad():
        for n, t in saved["params"].items():
            named[n].copy_(t)
    optimizer.load_state_dict(saved["optimizer"])
    state = LoopState.from_dict(saved["state"])
    torch.set_rng_state(saved["rng"])
    return state
