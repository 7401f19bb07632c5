"""One training step of smollm2-L2, batch 64 (testbed pairs), padded vs packed, under torch.profiler.

    EMBRECIPE_HOME=... PYTHONPATH=src python benchmarks/profile_packed.py bf16     # or fp32

Prints the wall time of each step and the top operators by self CPU time (benchmarks/profile_packed.txt).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pool

from embrecipe.models.loading import load_sentence_transformer
from embrecipe.testbed.models import ensure_model
from embrecipe.training.batching import packed_batch, pad_batch, tokenize
from embrecipe.training.loss import symmetric_infonce
from embrecipe.training.packing import packed_embeddings


def main(precision: str) -> None:
    model = load_sentence_transformer(str(ensure_model(2)))
    tok = model[0].tokenizer
    data = pool(64)
    cols = [tokenize(tok, c, 75) for c in (data.queries, data.positives)]
    loss_fn = symmetric_infonce(model)
    bf16 = precision == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def padded():
        feats = [pad_batch(c, tok.pad_token_id) for c in cols]
        with autocast():
            loss_fn(feats, None).backward()

    def packed():
        feats = [packed_batch(c, 192, tok.pad_token_id, torch.device("cpu"), "sdpa",
                               torch.bfloat16 if bf16 else torch.float32) for c in cols]
        with autocast():
            loss_fn.compute_loss_from_embeddings([packed_embeddings(model, f) for f in feats], None).backward()

    for step in (padded, packed):
        step()  # warm-up
        with torch.profiler.profile() as prof:
            t = time.perf_counter()
            step()
            dt = time.perf_counter() - t
        print(f"{step.__name__} {precision}: {dt:.2f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bf16")
