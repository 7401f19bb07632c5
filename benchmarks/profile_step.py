"""Where one training step's time goes: torch.profiler over embrecipe's own step on a testbed model.

    python benchmarks/profile_step.py [--layers 8] [--batch 64] [--method full]   # writes benchmarks/profile.txt
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--method", default="full")
    ap.add_argument("--out", default=str(Path(__file__).with_name("profile.txt")))
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from embrecipe.data.pairs import load_pairs
    from embrecipe.models.loading import apply_method, load_sentence_transformer
    from embrecipe.models.methods import parse_method
    from embrecipe.testbed.models import ensure_model
    from embrecipe.testbed.pairs import testbed_pairs_path
    from embrecipe.training.batching import Batches, pad_batch, tokenize
    from embrecipe.training.loss import symmetric_infonce

    data = load_pairs(testbed_pairs_path("train")).subset(range(args.batch * 64))
    model = load_sentence_transformer(str(ensure_model(args.layers)))
    apply_method(model, parse_method(args.method))
    tok = model[0].tokenizer
    cols = [tokenize(tok, c, 75) for c in (data.queries, data.positives)]
    batch = Batches([max(len(c[i]) for c in cols) for i in range(len(data))], args.batch, 0, True).epoch(0)[0]
    feats = [pad_batch([c[i] for i in batch], tok.pad_token_id) for c in cols]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, foreach=True)
    loss_fn = symmetric_infonce(model)

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(feats, None)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}

    step()
    phases = step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    real = sum(int(f["attention_mask"].sum()) for f in feats)
    padded = sum(f["input_ids"].numel() for f in feats)
    text = (f"smollm2-L{args.layers}, {args.method}, batch {args.batch}: {real} real / {padded} padded tokens; "
            f"phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()) + "\n\n"
            + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
