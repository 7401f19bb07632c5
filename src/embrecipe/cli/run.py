"""``embrecipe run --budget C``: plan the compute-optimal recipe, train it, evaluate it (step 5 of the algorithm).

The flags → a :class:`~embrecipe.pipeline.run.RecipeRun` → :func:`~embrecipe.pipeline.run.run_recipe`, which does
the work (and is the same call from Python)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embrecipe.pipeline.run import RecipeRun


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="plan the optimal recipe for a budget, then train and evaluate it",
        description="`embrecipe plan` for one budget, then train the optimum with `embrecipe train`'s trainer "
                    "(budget-exact), record it in a store if given, and evaluate the exported model.",
    )
    p.add_argument("--budget", required=True, help="model FLOPs to spend, e.g. 1e15")
    p.add_argument("--data", required=True, help="training pairs (JSONL / Parquet / CSV / datasets dir)")
    p.add_argument("--out", required=True, help="output directory: the trained model, plan.json, eval/")
    p.add_argument("--laws", default=None, help="law card or run store (default: the packaged card)")
    p.add_argument("--family", default=None, help="family file (default: the card's models)")
    p.add_argument("--variants", default=None, help="comma-separated variants to consider (default: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per step (default and only accepted value: the card's, unless it was fitted "
                        "across batch sizes)")
    p.add_argument("--mini-batch-size", type=int, default=None, help="GradCache mini-batch (default: none)")
    p.add_argument("--max-seq-length", type=int, default=None, help="tokens per text (trainer default: 75)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the card's, selected for the planned variant and size; an "
                        "override leaves the recipe the law was fitted at and is flagged)")
    p.add_argument("--unique-pairs", type=int, default=None,
                   help="training pairs in --data for the epoch check (default: counted in --data)")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out fraction of --data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-per-pair", type=float, default=None,
                   help="mean tokens per pair for planning (default: measured on a sample spread over --data with "
                        "the family's tokenizer; the card's when that tokenizer is not here, with a warning)")
    p.add_argument("--store", default=None, help="also record the run in this run store")
    p.add_argument("--eval", default="local", dest="eval_tasks",
                   help="evaluation tasks for `embrecipe eval` (default: local; 'none' to skip)")
    p.add_argument("--eval-pairs", default=None, help="held-out pairs for evaluation (default: the testbed's)")
    p.add_argument("--train-fn", default=None,
                   help="module:function to train with (default: embrecipe.training.trainer:train_from_dict; "
                        "'synthetic' = fake trainer for testing)")
    p.add_argument("--dry-run", action="store_true", help="plan and print the training config; train nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run from --out/checkpoint (as `embrecipe train --resume`)")
    g.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out, replacing the files a run writes there (as `embrecipe "
                        "train --overwrite`); without it a non-empty --out is refused")
    p.add_argument("--device-memory", type=float, metavar="GIB", default=None,
                   help="plan only options that fit in GIB; trains with the GradCache mini-batch the plan sized "
                        "(unless --mini-batch-size is given)")
    p.add_argument("--embed-tokens", type=float, metavar="T", default=None,
                   help="--budget is training + embedding T tokens afterwards (2 x N x T); trains on the rest")
    from embrecipe.cli.train import add_feature_arguments

    add_feature_arguments(p)
    p.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> RecipeRun:
    """The :class:`~embrecipe.pipeline.run.RecipeRun` the flags of :func:`register` describe."""
    from embrecipe.pipeline.run import RecipeRun

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    return RecipeRun(
        budget=args.budget, data=args.data, out=args.out, laws=args.laws, family=args.family, variants=variants,
        batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, max_seq_length=args.max_seq_length,
        lr=args.lr, val_fraction=args.val_fraction, seed=args.seed, tokens_per_pair=args.tokens_per_pair,
        unique_pairs=args.unique_pairs, store=args.store, eval_tasks=args.eval_tasks, eval_pairs=args.eval_pairs,
        device_memory_gib=args.device_memory, embed_tokens=args.embed_tokens, query_prompt=args.query_prompt,
        doc_prompt=args.doc_prompt, tracking_dir=args.tracking_dir, report_to=args.report_to,
        push_to_hub=args.push_to_hub, hub_private=args.hub_private, resume=args.resume, overwrite=args.overwrite,
        dry_run=args.dry_run, train_fn=args.train_fn)


def run(args: argparse.Namespace) -> int:
    from embrecipe.pipeline.run import run_recipe

    run_recipe(request_from_args(args))
    return 0
