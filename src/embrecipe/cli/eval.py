"""``embrecipe eval``: held-out contrastive loss and MTEB tasks for one model directory."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, format_table

    record = evaluate(args.model, split=args.split, pairs=args.pairs, tasks=args.tasks, out=args.out,
                      limit=args.limit, batch_size=args.batch_size,
                      max_seq_length=args.max_seq_length or None, pooling=args.pooling)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(format_table(record))
        if args.out:
            print(f"results: {args.out}/eval.json (mteb results under {args.out}/mteb)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="held-out contrastive loss and MTEB tasks for a model",
        description=__doc__ + "\n\nTask specs (comma-separated): local (LocalDocRetrieval + LocalDocRelatedness "
        "on the held-out pairs), paper15 (the study's 15 MTEB tasks; needs the Hugging Face Hub), "
        "retrieval:DIR (corpus.jsonl, queries.jsonl, qrels.tsv), sts:FILE (sentence1, sentence2, score), or "
        "any MTEB task name. See docs/testbed.md for the file formats.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="a SentenceTransformer directory, or a HF decoder checkpoint (mean pooling added)")
    p.add_argument("--split", default="test", choices=["validation", "test"],
                   help="held-out split of the shipped testbed pairs (default test)")
    p.add_argument("--pairs", help="your own held-out pairs (JSONL[.gz] with query, pos) instead of the testbed's")
    p.add_argument("--tasks", default="local", help="local | paper15 | retrieval:DIR | sts:FILE | NAME,... "
                                                    "(default local)")
    p.add_argument("--out", help="folder for eval.json and mteb's result files")
    p.add_argument("--limit", type=int, help="use only the first N held-out pairs")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="pairs per batch of in-batch negatives for the held-out loss (default 1024)")
    p.add_argument("--max-seq-length", type=int, default=75,
                   help="truncate texts to this many tokens (default 75, the training length; 0 = model's own)")
    p.add_argument("--pooling", default="mean", help="pooling for a plain decoder checkpoint (default mean)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")
    p.set_defaults(func=_run)
