"""Export: the trained model as a SentenceTransformer directory with its model card and ``run.json``.

Written into a temporary folder and moved into ``out`` with ``run.json`` last, so ``out`` holds a whole export
or none; a failed write of the disk becomes a one-line error that says where the trained weights are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import EmbrecipeError, OutOfDiskSpace, is_disk_full, write_failure
from embrecipe.jsonio import atomic_write_json
from embrecipe.runs.records import RunRecord
from embrecipe.training.checkpoint import checkpoint_file

if TYPE_CHECKING:
    from embrecipe.training.config import TrainConfig

def export_model(model: Any, config: TrainConfig, record: RunRecord, out: Path, loss_fn: Any = None) -> None:
    """Write the SentenceTransformer (LoRA merged unless keep_adapter), model card and run.json atomically.

    The card is sentence-transformers' own README, rendered from ``model.model_card_data`` filled with the run's
    facts (:mod:`embrecipe.training.model_card`)."""
    from embrecipe.models.loading import merge_adapters, save_tokenizer_flags
    from embrecipe.training.model_card import apply_card_data

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".export.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        hf = model[0].auto_model
        apply_card_data(model, record, loss_fn)
        if config.keep_adapter and config.method.adapter:
            hf.save_pretrained(tmp)
            model._create_model_card(str(tmp))
        else:
            merge_adapters(model)
            model.save(str(tmp))
            save_tokenizer_flags(model, tmp)
        atomic_write_json(tmp / "run.json", record.to_dict())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written export never lands in out
        raise
    # run.json last: its presence means the whole export is in place.
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == "run.json"):
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    tmp.rmdir()
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")



def export_or_explain(model: Any, config: TrainConfig, record: RunRecord, out: Path, loss_fn: Any,
                      ckpt_dir: Path | None) -> None:
    """:func:`export_model`; a failure of the disk (full, or another OS error) becomes a one-line error naming
    where the trained weights are kept (``ckpt_dir``) and how to export them with ``--resume``."""
    try:
        export_model(model, config, record, out, loss_fn)
    except Exception as exc:
        full = is_disk_full(exc)
        failed_write = write_failure(exc)
        if not (full or failed_write):
            raise  # not a problem of the disk: a bug, keep its traceback
        kept = (f"the trained weights are kept in {ckpt_dir}: free space and rerun the same command with "
                "--resume to export them") if ckpt_dir and checkpoint_file(ckpt_dir).exists() else \
            "no checkpoint was kept (checkpoint_every 0)"
        why = failed_write or (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise (OutOfDiskSpace if full else EmbrecipeError)(f"export to {out} failed ({why}); {kept}") from exc
