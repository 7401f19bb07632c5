"""The untrained models' held-out loss, measured exactly as the sweep's runs measure theirs (the trainer's
`_validate`: the first `val_size_cap` validation pairs, symmetric InfoNCE in batches of the training batch size,
the trainer's precision rule), so the table in docs/cross_family.md can say whether a method improved on the
model it started from. Writes study/cross_family/baselines.json.

    EMBRECIPE_HOME=/tmp/r23-home PYTHONPATH=src .venv/bin/python study/cross_family/baselines.py
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
import yaml

from embrecipe.data.pairs import load_pairs
from embrecipe.models.loading import load_sentence_transformer
from embrecipe.training.device import precision_for
from embrecipe.training.loss import heldout_loss
from embrecipe.training.runtime import training_device

HERE = Path(__file__).resolve().parent


def main() -> int:
    out: dict[str, dict[str, object]] = {}
    for grid_file in ("smollm2.yaml", "qwen.yaml"):
        grid = yaml.safe_load((HERE / grid_file).read_text())
        train = grid["train"]
        val = load_pairs(HERE / train["val_data"])
        vsub = val.subset(range(min(len(val), train["val_size_cap"])))
        device = training_device()
        use_bf16, _why = precision_for("auto", device)
        for model_path in grid["models"]:
            model = load_sentence_transformer(model_path, max_seq_length=train["max_seq_length"])
            model.to(device).eval()
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
            with ctx, torch.no_grad():
                loss = heldout_loss(model, vsub.queries, vsub.positives, batch_size=train["batch_size"])
            out[model_path] = {"raw_val_loss": float(loss), "val_pairs": len(vsub),
                               "batch_size": train["batch_size"], "max_seq_length": train["max_seq_length"],
                               "precision": "bf16" if use_bf16 else "fp32"}
            print(f"{Path(model_path).name}: raw held-out loss {loss:.4f}", flush=True)
    (HERE / "baselines.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
