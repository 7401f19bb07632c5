"""``embrecipe data``: data preparation. ``embrecipe data mine-negatives`` adds mined hard negatives."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare training data (mine hard negatives)",
                       description="Data preparation commands.")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    m = dsub.add_parser(
        "mine-negatives", help="mine hard negatives with an embedding model (sentence-transformers)",
        description="For each (query, positive) pair, rank all positives by similarity to the query with --model "
                    "and keep the closest non-positive texts as negatives (sentence-transformers' "
                    "mine_hard_negatives). Writes BGE JSONL {query, pos, neg} for `embrecipe train "
                    "--hard-negatives N`; pairs with too few negatives after the filters are dropped and counted.",
        epilog="example: embrecipe data mine-negatives pairs.jsonl --model runs/my-model --out pairs-neg.jsonl "
               "--num-negatives 3 --range-min 2 --relative-margin 0.05",
    )
    m.add_argument("data", help="pairs: .jsonl[.gz] {query,pos}, .csv/.tsv/.parquet, or a datasets directory")
    m.add_argument("--model", required=True,
                   help="embedding model: a SentenceTransformer folder (e.g. a trained run), or a decoder "
                        "checkpoint/hub id/.gguf (mean pooling)")
    m.add_argument("--out", required=True, help="output .jsonl (BGE format)")
    m.add_argument("--num-negatives", type=int, default=3, help="negatives per pair (default: 3)")
    m.add_argument("--range-min", type=int, default=0,
                   help="skip the closest this many candidates (likely false negatives; default: 0)")
    m.add_argument("--range-max", type=int, default=None, help="consider only the closest this many candidates")
    m.add_argument("--max-score", type=float, default=None, help="drop candidates more similar than this")
    m.add_argument("--relative-margin", type=float, default=None,
                   help="keep a negative only if its score is at least this fraction below the positive's "
                        "(e.g. 0.05, NV-Retriever's setting)")
    m.add_argument("--sampling", choices=["top", "random"], default="top",
                   help="take the top candidates (default) or sample among those that pass the filters")
    m.add_argument("--query-prompt", default=None, help="prompt prepended to queries when embedding them")
    m.add_argument("--doc-prompt", default=None, help="prompt prepended to candidate documents")
    m.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    m.add_argument("--max-seq-length", type=int, default=75, help="tokens per text (default: 75)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=mine)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def mine(args: argparse.Namespace) -> int:
    from embrecipe.data.negatives import mine_negatives

    stats = mine_negatives(args.data, args.model, args.out, num_negatives=args.num_negatives,
                           range_min=args.range_min, range_max=args.range_max, max_score=args.max_score,
                           relative_margin=args.relative_margin, sampling=args.sampling,
                           batch_size=args.batch_size, query_prompt=args.query_prompt, doc_prompt=args.doc_prompt,
                           max_seq_length=args.max_seq_length, seed=args.seed)
    print(f"wrote {stats.rows_written} of {stats.rows_in} pairs with {stats.num_negatives} negatives each to "
          f"{stats.out}" + (f" ({stats.rows_dropped} dropped: too few negatives passed the filters)"
                            if stats.rows_dropped else ""))
    return 0
