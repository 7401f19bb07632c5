"""One AdamW step over all parameters of smollm2-L2 (35.4M incl. embeddings): foreach vs fused, interleaved.

    EMBRECIPE_HOME=... PYTHONPATH=src python benchmarks/adamw_step.py      # writes benchmarks/adamw_step.txt
"""

import statistics
import time
from pathlib import Path

import torch

from embrecipe.models.loading import load_sentence_transformer
from embrecipe.testbed.models import ensure_model


def main() -> None:
    params = list(load_sentence_transformer(str(ensure_model(2))).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    opts = {"foreach": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=True)}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for o in opts.values():
        o.step()  # warm-up: allocates the moments
    for _ in range(7):  # interleaved, so drift of a shared machine hits both alike
        for k, o in opts.items():
            t = time.perf_counter()
            o.step()
            times[k].append(time.perf_counter() - t)
    n = sum(p.numel() for p in params)
    line = f"{n / 1e6:.1f}M params, torch {torch.__version__}; median AdamW step: " + ", ".join(
        f"{k} {statistics.median(v) * 1e3:.0f} ms (runs: {[round(x * 1e3) for x in v]})" for k, v in times.items())
    print(line)
    Path(__file__).with_suffix(".txt").write_text(line + "\n")


if __name__ == "__main__":
    main()
