"""``embrecipe eval``: held-out contrastive loss and MTEB tasks for one model directory.

Split across two machines: ``--save-embeddings FILE.npz`` encodes the held-out pairs and computes the loss
(no mteb needed, e.g. on a GPU box); ``--embeddings FILE.npz`` scores the local tasks from that file here."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from embrecipe.errors import InputError
    from embrecipe.evaluate import embed_eval_texts, evaluate, evaluate_embeddings, format_table

    if args.embeddings and (args.model or args.save_embeddings):
        raise InputError("--embeddings scores a file of precomputed embeddings: give it without --model "
                         "and --save-embeddings")
    if not args.embeddings and not args.model:
        raise InputError("give --model DIR (or --embeddings FILE.npz from --save-embeddings)")
    if args.name and not args.embeddings:
        raise InputError("--name goes with --embeddings (a model is named by its folder)")
    if args.save_embeddings:
        path = embed_eval_texts(args.model, args.save_embeddings, split=args.split or "test", pairs=args.pairs,
                                limit=args.limit, batch_size=args.batch_size,
                                max_seq_length=args.max_seq_length or None, pooling=args.pooling)
        print(f"embeddings: {path} (score them with: embrecipe eval --embeddings {path})")
        return 0
    if args.embeddings:
        # split/pairs/limit default to the values stored in the file.
        record = evaluate_embeddings(args.embeddings, split=args.split, pairs=args.pairs, limit=args.limit,
                                     tasks=args.tasks, out=args.out, name=args.name)
    else:
        record = evaluate(args.model, split=args.split or "test", pairs=args.pairs, tasks=args.tasks,
                          out=args.out, limit=args.limit, batch_size=args.batch_size,
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
        description=__doc__ + "\n\nTask specs (comma-separated): local (LocalDocRetrieval on the held-out pairs, "
        "+ LocalDocRelatedness when they carry the testbed's source provenance; your own --pairs get retrieval and "
        "the held-out loss), paper15 (the study's 15 MTEB tasks; needs the Hugging Face Hub), "
        "retrieval:DIR (corpus.jsonl, queries.jsonl, qrels.tsv), sts:FILE (sentence1, sentence2, score), or "
        "any MTEB task name. See docs/testbed.md for the file formats.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model",
                   help="a SentenceTransformer directory, or a HF decoder checkpoint (mean pooling added); "
                        "required unless --embeddings is given")
    p.add_argument("--embeddings", metavar="FILE.npz",
                   help="score precomputed embeddings (from --save-embeddings, maybe on another machine) "
                        "instead of a model; --split, --pairs and --limit default to the file's")
    p.add_argument("--save-embeddings", metavar="FILE.npz",
                   help="only encode the held-out pairs and compute the held-out loss into FILE.npz (needs "
                        "no mteb); score it later with --embeddings")
    p.add_argument("--name", help="with --embeddings: the model's name in the table and in mteb's results "
                                  "(default: the model folder's name)")
    p.add_argument("--split", choices=["validation", "test"],
                   help="held-out split of the shipped testbed pairs (default test)")
    p.add_argument("--pairs", help="your own held-out pairs instead of the testbed's, in any format train reads "
                                   "(JSONL[.gz] {query, pos} with pos a string or a one-element list, CSV/TSV, "
                                   "Parquet, a datasets directory)")
    p.add_argument("--tasks", default="local", help="local | paper15 | retrieval:DIR | sts:FILE | NAME,... "
                                                    "(default local)")
    p.add_argument("--out", help="folder for eval.json and mteb's result files")
    p.add_argument("--limit", type=int, help="use N evenly spaced held-out pairs (deterministic; the files are ordered by package, so a prefix would be one package)")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="pairs per batch of in-batch negatives for the held-out loss (default 1024)")
    p.add_argument("--max-seq-length", type=int, default=75,
                   help="truncate texts to this many tokens (default 75, the training length; 0 = model's own)")
    p.add_argument("--pooling", default="mean", help="pooling for a plain decoder checkpoint (default mean)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")
    p.set_defaults(func=_run)
