"""A/B of the trainer's fast paths (issue 11), one change at a time, in one process, interleaved.

    python benchmarks/fast_paths.py --layers 2 --batch 64 --steps 4            # CPU: a few minutes
    python benchmarks/fast_paths.py --layers 30 --batch 1024 --steps 10        # GPU

Variants (each a set of TrainConfig overrides on top of the defaults): ``reference`` is the trainer's loop
before issue 11 (padded batches, loss read every step; the AdamW kernel is today's, fused, which has its own
A/B below); the others switch one thing. Rounds are
interleaved (A B C A B C ...) so drift of a shared machine hits every variant alike; the table gives the median
model FLOP/s of each variant over its rounds and its ratio to the reference from the same run. Also times one
AdamW step, foreach vs fused, on the model's trainable parameters. Writes ``benchmarks/fast_paths.{txt,json}``
(a section per device; a rerun replaces its device's section).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import device_name, pool, trainer_steps  # noqa: E402

VARIANTS = {
    "reference": {"packing": "off", "sync_every": 1},
    "no-per-step-sync": {"packing": "off"},
    "packed": {"packing": "on", "sync_every": 1},
    "all (defaults)": {"packing": "on"},
}


def adamw_step_times(model_dir: str, reps: int) -> dict:
    """Median seconds of one AdamW step over the model's parameters: foreach vs fused (same device)."""
    import torch

    from embrecipe.models.loading import load_sentence_transformer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    params = [p for p in load_sentence_transformer(model_dir).to(dev).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **kw)
        opt.step()
        times = []
        for _ in range(reps):
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    out["fused_speedup"] = out["foreach"] / out["fused"]
    return out


def run_variant(model_dir: str, data, batch: int, steps: int, precision: str, overrides: dict) -> dict:
    state = trainer_steps(model_dir, data, batch, steps, precision, **overrides)
    times, flops = state["step_times"][1:], state["step_flops"][1:]
    return {"model_flops_per_s": sum(flops) / sum(times), "padded_over_real": state["padded_tokens"] / state["tokens"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--model", help="a checkpoint directory instead of the testbed member smollm2-L{layers}")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(HERE / "fast_paths"))
    args = ap.parse_args()

    import torch

    if args.model:
        model_dir = args.model
    else:
        from embrecipe.testbed.models import ensure_model

        model_dir = str(ensure_model(args.layers))
    data = pool(args.batch * (args.steps + 2))
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            res = run_variant(model_dir, data, args.batch, args.steps, args.precision, VARIANTS[n])
            runs[n].append(res)
            print(f"round {r}: {n:18s} {res['model_flops_per_s'] / 1e9:9.2f} GFLOP/s  "
                  f"padded/real {res['padded_over_real']:.2f}", flush=True)
    ref = statistics.median(x["model_flops_per_s"] for x in runs["reference"]) if "reference" in runs else None
    table = []
    for n in names:
        med = statistics.median(x["model_flops_per_s"] for x in runs[n])
        table.append({"variant": n, "overrides": VARIANTS[n], "model_gflops_median": med / 1e9,
                      "rounds_gflops": [x["model_flops_per_s"] / 1e9 for x in runs[n]],
                      "padded_over_real": runs[n][0]["padded_over_real"],
                      "vs_reference": med / ref if ref else None})
    opt = adamw_step_times(model_dir, 5)
    result = {"device": device_name(), "torch": torch.__version__, "model": Path(model_dir).name,
              "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "precision": args.precision,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "variants": table, "adamw_step_s": opt}
    out = Path(args.out)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": []}
    runs_all = [x for x in old["runs"] if x["device"] != result["device"]] + [result]
    out.with_suffix(".json").write_text(json.dumps({"runs": runs_all}, indent=2) + "\n")
    lines = []
    for x in runs_all:
        lines += [f"## {x['device']} (torch {x['torch']}, {x['date']})",
                  f"{x['model']}, batch {x['batch']}, precision {x['precision']}, {x['rounds']} rounds x "
                  f"{x['steps']} timed steps; command: python benchmarks/fast_paths.py --layers ... --batch "
                  f"{x['batch']} --steps {x['steps']}", "",
                  "| variant | model GFLOP/s (median) | per round | padded/real tokens | vs reference |",
                  "|---|---:|---|---:|---:|"]
        for v in x["variants"]:
            lines.append(f"| {v['variant']} | {v['model_gflops_median']:.1f} | "
                         f"{', '.join(f'{g:.1f}' for g in v['rounds_gflops'])} | {v['padded_over_real']:.2f} | "
                         + (f"{v['vs_reference']:.2f}x |" if v["vs_reference"] else "- |"))
        o = x["adamw_step_s"]
        lines += ["", f"AdamW step (all parameters): foreach {o['foreach'] * 1e3:.1f} ms, fused "
                      f"{o['fused'] * 1e3:.1f} ms (fused {o['fused_speedup']:.2f}x)", ""]
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
