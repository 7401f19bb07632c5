"""Does torch.compile pay off for embrecipe's training step here? Eager vs compiled, same batches, one run.

    python benchmarks/compile_trial.py [--layers 2] [--batch 64] [--batches 4] [--repeats 3]
    # appends a line to benchmarks/compile_trial.txt

The Hugging Face module inside the SentenceTransformer (``model[0].model``) is wrapped with
``torch.compile(dynamic=True)`` (bucketed batches change the sequence length every step, so a static-shape compile would recompile per length). Both
variants train the same bucketed batches from the same initial weights; the first pass over the batches is
warm-up (and compilation), then each batch is timed ``--repeats`` times and the median per-step time reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _time_steps(model, feats_list, repeats: int) -> tuple[float, float, float]:
    import torch

    from embrecipe.training.loss import symmetric_infonce

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, foreach=True)
    loss_fn = symmetric_infonce(model)

    def step(feats) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(feats, None)
        loss.backward()
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    first_losses = [step(f) for f in feats_list]  # warm-up; includes compilation for the compiled variant
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        for f in feats_list:
            t = time.perf_counter()
            step(f)
            times.append(time.perf_counter() - t)
    return statistics.median(times), warmup, first_losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4, help="distinct bucketed batches (distinct lengths)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("compile_trial.txt")))
    args = ap.parse_args()

    import torch

    from embrecipe.data.pairs import load_pairs
    from embrecipe.models.loading import apply_method, load_sentence_transformer
    from embrecipe.models.methods import parse_method
    from embrecipe.testbed.models import ensure_model
    from embrecipe.testbed.pairs import testbed_pairs_path
    from embrecipe.training.batching import Batches, pad_batch, tokenize

    data = load_pairs(testbed_pairs_path("train")).subset(range(args.batch * 32))
    path = str(ensure_model(args.layers))
    results = {}
    for variant in ("eager", "compiled"):
        torch.manual_seed(0)
        model = load_sentence_transformer(path)
        apply_method(model, parse_method("full"))
        tok = model[0].tokenizer
        cols = [tokenize(tok, c, 75) for c in (data.queries, data.positives)]
        order = Batches([max(len(c[i]) for c in cols) for i in range(len(data))], args.batch, 0, True).epoch(0)
        feats_list = [[pad_batch([c[i] for i in b], tok.pad_token_id) for c in cols] for b in order[: args.batches]]
        if variant == "compiled":
            # `auto_model` is a read-only property over `model` in sentence-transformers 6
            model[0].model = torch.compile(model[0].model, dynamic=True)
        model.train()
        results[variant] = _time_steps(model, feats_list, args.repeats)
    (e, ew, el), (c, cw, cl) = results["eager"], results["compiled"]
    line = (f"smollm2-L{args.layers} full batch {args.batch}, {args.batches} bucketed batches x {args.repeats}: "
            f"median step eager {e:.3f} s, compiled {c:.3f} s (speed-up {e / c:.2f}x); warm-up pass "
            f"eager {ew:.1f} s, compiled {cw:.1f} s; first-step loss eager {el:.5f} compiled {cl:.5f}; "
            f"torch {torch.__version__}")
    print(line)
    with open(args.out, "a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
