"""``embrecipe plan --budget C``: the compute-optimal recipe (model, method, hyper-parameters, tokens, steps)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from embrecipe.errors import InputError

if TYPE_CHECKING:
    from embrecipe.planning.planner import RecipeTable
    from embrecipe.planning.units import ThroughputTable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="budget → optimal (model, method, hparams, tokens/steps) with predicted loss",
        description="Enumerate the family's model sizes × fitted variants, cost each with the FLOP formula, "
                    "predict the loss from the laws, and rank. Shows the optimum, the runner-up, P(optimal) "
                    "over bootstrap fits, two loss intervals (the mean law's, and one run's: mean law + run-to-run "
                    "noise), the LR and batch size the card's law was fitted at, and warnings for extrapolation "
                    "and repeated data.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", help="one budget in model FLOPs, e.g. 1e17")
    g.add_argument("--budgets", help="comma-separated budgets for the recipe table, e.g. 1e15,1e16,1e17")
    g.add_argument("--hours", type=float, default=None,
                   help="a budget in device-hours: each option gets 3600 x H x its measured model FLOP/s "
                        "(needs --throughput-from or --throughput-row)")
    p.add_argument("--laws", default=None,
                   help="law card (from `embrecipe fit`) or a run store to fit on the fly "
                        "(default: the packaged card, fitted in the testbed study)")
    p.add_argument("--family", default=None,
                   help="family file {name, members: [{name, path, shape}]} (default: the card's models)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per step (default: the card's; another value is an error unless the card was "
                        "fitted across batch sizes: the loss depends on the in-batch negatives)")
    p.add_argument("--data", default=None,
                   help="your training pairs (JSONL / Parquet / CSV / datasets dir): the plan measures their tokens "
                        "per pair (a sample spread over the file, with the family's tokenizer) and their number, and "
                        "says when the card was fitted on other data")
    p.add_argument("--unique-pairs", type=int, default=None,
                   help="training pairs in your data set (default: the card's); plans needing more than one "
                        "epoch are flagged and predicted at the effective data (Muennighoff et al. 2023)")
    p.add_argument("--query-prompt", default=None,
                   help="with --data: the query prompt the run will train with (its tokens are metered, so they "
                        "count in tokens per pair)")
    p.add_argument("--doc-prompt", default=None, help="with --data: the document prompt the run will train with")
    p.add_argument("--tokens-per-pair", type=float, default=None,
                   help="mean tokens per training pair (default: measured on --data, else the card's)")
    p.add_argument("--variants", default=None, help="comma-separated variants to consider (default: all)")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default: 0.9)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap refits when --laws is a store (default: 200)")
    p.add_argument("--top", type=int, default=10, help="ranked options to print (default: 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    u = p.add_argument_group("plans in your units (docs/planner.md)")
    u.add_argument("--throughput-from", metavar="STORE", default=None,
                   help="with --hours: a run store; median model FLOP/s per (variant, model size) of its "
                        "completed runs, interpolated across sizes")
    u.add_argument("--throughput-row", metavar="NAME", default=None,
                   help="with --hours: one row of benchmarks/results.json, MODEL/METHOD[/BATCH] (optionally "
                        "DEVICE: first), e.g. smollm2-L8/full/64; one throughput for every option")
    u.add_argument("--throughput-device", metavar="NAME", default=None,
                   help="with --throughput-from: use runs on the device whose name contains NAME")
    u.add_argument("--device-memory", type=float, metavar="GIB", default=None,
                   help="drop options whose estimated training memory at the batch size does not fit in GIB; "
                        "size the GradCache mini-batch automatically where that makes them fit")
    u.add_argument("--seq-len", type=int, default=75, help="max sequence length for the memory estimate (75)")
    u.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="activation precision for the memory estimate (default bf16, the trainer's GPU default)")
    u.add_argument("--memory-overhead", type=float, metavar="GIB", default=1.0,
                   help="fixed per-process memory (CUDA context, workspaces) in the estimate (default 1)")
    u.add_argument("--embed-tokens", type=float, metavar="T", default=None,
                   help="tokens you will embed afterwards: each option's budget pays 2 x N x T for serving "
                        "first and trains on the rest; a note says when that changes the chosen model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from embrecipe.models.family import Family
    from embrecipe.planning.planner import load_laws, plan, plan_many
    from embrecipe.planning.user_data import measure_data

    # Parse the budgets first: a typo should not cost a bootstrap fit of a whole store.
    budgets, throughput = _budgets_or_throughput(args)
    if args.seq_len < 1:
        raise InputError(f"--seq-len must be positive, got {args.seq_len}")
    laws = load_laws(args.laws, bootstrap=args.bootstrap)
    family = Family.load(args.family).members if args.family else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    measured = measure_data(args.data, laws, family, max_seq_length=args.seq_len,
                            tokens_per_pair=args.tokens_per_pair, unique_pairs=args.unique_pairs,
                            query_prompt=args.query_prompt, doc_prompt=args.doc_prompt)
    kwargs = dict(batch_size=args.batch_size, level=args.level,
                  variants=variants, embed_tokens=args.embed_tokens, device_memory_gib=args.device_memory,
                  seq_len=args.seq_len, precision=args.precision, memory_overhead_gib=args.memory_overhead,
                  **measured)
    if args.hours is not None:
        result = plan(None, laws, family, hours=args.hours, throughput=throughput, **kwargs)
        print(json.dumps(result.to_dict(), indent=1) if args.json else result.format(top=args.top))
        return 0
    if args.budget is not None:
        result = plan(budgets[0], laws, family, **kwargs)
        print(json.dumps(result.to_dict(), indent=1) if args.json else result.format(top=args.top))
        return 0
    table = plan_many(budgets, laws, family, **kwargs)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1))
        return 0
    _print_table(laws.provenance, table)
    return 0


def _budgets_or_throughput(args: argparse.Namespace) -> tuple[list[float], ThroughputTable | None]:
    """The FLOP budgets asked for, or (with --hours) none and the measured throughput table."""
    from embrecipe.planning.planner import parse_budgets
    from embrecipe.planning.units import load_throughput

    if args.hours is not None:
        if not (args.hours > 0 and args.hours != float("inf")):
            raise InputError(f"--hours must be a positive number, got {args.hours}")
        return [], load_throughput(args.throughput_from, args.throughput_row, device=args.throughput_device)
    if args.throughput_from or args.throughput_row:
        raise InputError("--throughput-from/--throughput-row only apply to a plan in --hours")
    budgets = parse_budgets(args.budget if args.budget is not None else args.budgets)
    if args.budget is not None and len(budgets) != 1:
        raise InputError("--budget takes one number; use --budgets for several")
    return budgets, None


def _print_table(provenance: str, table: RecipeTable) -> None:
    """The recipe table across budgets, then each plan's warnings and notes, labelled by its budget."""
    print(f"law card: {provenance}")
    print(table.format())
    for p in table.plans:
        for w in p.warnings:
            print(f"WARNING at {p.budget:.3g}: {w}")
        for n in p.notes:
            print(f"note at {p.budget:.3g}: {n}")
