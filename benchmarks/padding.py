"""How much padding each batching scheme costs on the shipped training pairs (no training, seconds).

    python benchmarks/padding.py      # prints a table and writes benchmarks/padding.txt

Padded/real tokens over one whole epoch, each text column padded to its batch's longest text (as both trainers
do): random batches (what a plain sentence-transformers trainer draws) vs embrecipe's length bucketing
(``TrainConfig.length_bucketing``, the default). Compute grows with padded tokens, so this ratio bounds what
bucketing can save.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def padded_over_real(batches: list[list[int]], cols: list[list[int]]) -> float:
    real = sum(c[i] for b in batches for c in cols for i in b)
    padded = sum(len(b) * max(c[i] for i in b) for b in batches for c in cols)
    return padded / real


def main() -> None:
    from transformers import AutoTokenizer

    from embrecipe.data.pairs import load_pairs
    from embrecipe.testbed.models import ensure_model
    from embrecipe.testbed.pairs import testbed_pairs_path
    from embrecipe.training.batching import Batches, tokenize

    data = load_pairs(testbed_pairs_path("train"))
    tok = AutoTokenizer.from_pretrained(str(ensure_model(2)))
    cols = [[len(t) for t in tokenize(tok, c, 75)] for c in (data.queries, data.positives)]
    keys = [max(c[i] for c in cols) for i in range(len(data))]
    lines = [f"{len(data)} training pairs, max length 75; mean tokens query {sum(cols[0]) / len(data):.1f}, "
             f"positive {sum(cols[1]) / len(data):.1f}", "", "| batch | random batches | bucketed (embrecipe) |",
             "|---:|---:|---:|"]
    for bs in (64, 256, 1024):
        rnd = padded_over_real(Batches(keys, bs, 0, False).epoch(0), cols)
        bkt = padded_over_real(Batches(keys, bs, 0, True).epoch(0), cols)
        lines.append(f"| {bs} | {rnd:.2f} | {bkt:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(__file__).with_name("padding.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
