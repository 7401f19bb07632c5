"""``embrecipe plan --budget C``: the compute-optimal recipe (model, method, hyper-parameters, tokens, steps)."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="budget → optimal (model, method, hparams, tokens/steps) with predicted loss",
        description="Enumerate the family's model sizes × fitted variants, cost each with the FLOP formula, "
                    "predict the loss from the laws, and rank. Shows the optimum, the runner-up, P(optimal) "
                    "over bootstrap fits, loss intervals, the LR and batch size the card's law was fitted at, "
                    "and warnings for extrapolation and repeated data.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", help="one budget in model FLOPs, e.g. 1e17")
    g.add_argument("--budgets", help="comma-separated budgets for the recipe table, e.g. 1e15,1e16,1e17")
    p.add_argument("--laws", default=None,
                   help="law card (from `embrecipe fit`) or a run store to fit on the fly "
                        "(default: the packaged card, when one ships)")
    p.add_argument("--family", default=None,
                   help="family file {name, members: [{name, path, shape}]} (default: the card's models)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per step (default: the card's; another value is an error unless the card was "
                        "fitted across batch sizes: the loss depends on the in-batch negatives)")
    p.add_argument("--unique-pairs", type=int, default=None,
                   help="training pairs in your data set (default: the card's); plans needing more than one "
                        "epoch are flagged and predicted at the effective data (Muennighoff et al. 2023)")
    p.add_argument("--tokens-per-pair", type=float, default=None,
                   help="mean tokens per training pair (default: measured on the runs, from the card)")
    p.add_argument("--variants", default=None, help="comma-separated variants to consider (default: all)")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default: 0.9)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap refits when --laws is a store (default: 200)")
    p.add_argument("--top", type=int, default=10, help="ranked options to print (default: 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import load_family, load_laws, parse_budgets, plan, plan_many

    # Parse the budgets first: a typo should not cost a bootstrap fit of a whole store.
    budgets = parse_budgets(args.budget if args.budget is not None else args.budgets)
    if args.budget is not None and len(budgets) != 1:
        raise InputError("--budget takes one number; use --budgets for several")
    laws = load_laws(args.laws, bootstrap=args.bootstrap)
    family = load_family(args.family) if args.family else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    kwargs = dict(batch_size=args.batch_size, tokens_per_pair=args.tokens_per_pair, level=args.level,
                  variants=variants, unique_pairs=args.unique_pairs)
    if args.budget is not None:
        result = plan(budgets[0], laws, family, **kwargs)
        print(json.dumps(result.to_dict(), indent=1) if args.json else result.format(top=args.top))
        return 0
    table = plan_many(budgets, laws, family, **kwargs)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1))
        return 0
    print(f"law card: {laws.provenance}")
    print(table.format())
    for p in table.plans:
        for w in p.warnings:
            print(f"WARNING at {p.budget:.3g}: {w}")
    return 0
