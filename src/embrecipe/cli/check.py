"""``embrecipe check STORE --budget B``: train the plan and every other method's best at a held-out budget."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embrecipe.cli._common import add_fit_options, check_fit_options, require_store
from embrecipe.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="a recipe check that can fail: plan vs every method's best vs the naive rule, trained",
        description="Fit the store's runs without the check budget, plan at it, and train the optimum, the best "
                    "configuration of every other variant (by the laws) and the naive rule (the configuration "
                    "best measured at the largest fitted budget) with the card's LR and batch size; the two "
                    "with the lowest predicted loss get --seeds seeds. Reports the regret of the plan and of "
                    "the naive rule against the best measured mean, and interval coverage. Check runs go to "
                    "their own store (resumable: a rerun trains nothing).",
    )
    p.add_argument("store", help="run store with the sweep's runs (fitted without the check budget)")
    p.add_argument("--budget", required=True, help="the held-out budget in model FLOPs, e.g. 4e14")
    p.add_argument("--seeds", type=int, default=2, help="seeds for the two best-predicted configurations "
                   "(default: 2; the others get one)")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default: 0.9)")
    add_fit_options(p)
    p.add_argument("--trainer", default=None,
                   help="module:function to train with, like the sweep's `trainer:` (default: the real trainer; "
                        "`synthetic` when the store holds fake-trainer runs)")
    p.add_argument("--workers", type=int, default=1, help="check runs trained in parallel processes (default: 1)")
    p.add_argument("--check-store", default=None,
                   help="store for the check's runs (default: <store>-check.sqlite beside the store)")
    p.add_argument("--out", default=None, help="folder for check.json")
    p.add_argument("--export", action="store_true",
                   help="also save every trained model under --out/<run key> (the real trainer's export)")
    p.add_argument("--dry-run", action="store_true", help="list what would be trained; train nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from embrecipe.pipeline.check import recipe_check
    from embrecipe.planning.planner import parse_budgets
    from embrecipe.runs.store import RunStore

    budgets = parse_budgets(args.budget)
    if len(budgets) != 1:
        raise InputError("--budget takes one number")
    require_store(args.store, must_exist=True)
    if not 0 < args.level < 1:
        raise InputError(f"--level must be in (0, 1), got {args.level}")
    check_fit_options(args)
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    with RunStore(args.store) as st:
        records = st.records()
    store = Path(args.store)
    check_store = args.check_store or str(store.with_name(store.stem + "-check.sqlite"))
    report = recipe_check(records, budgets[0], train_fn=args.trainer, seeds=args.seeds, level=args.level,
                          bootstrap=args.bootstrap, check_store=None if args.dry_run else check_store,
                          out_dir=args.out, min_runs=args.min_runs, workers=args.workers, export=args.export,
                          dry_run=args.dry_run)
    if args.dry_run:
        return 0
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    if not args.json:
        print(f"(check runs in {check_store})")
    return 0
