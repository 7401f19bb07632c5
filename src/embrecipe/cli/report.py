"""``embrecipe report STORE --out DIR``: Figure 1, residuals, the law card and a markdown report."""

from __future__ import annotations

import argparse

from embrecipe.cli._common import require_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="Figure-1 plot (loss vs FLOPs per method + optimal frontier) and markdown report",
        description="Fit the laws on a run store (or use --laws), then write figure1.png/.svg, "
                    "residuals.png/.svg, laws.json, runs.csv, runs.parquet and report.md into DIR.",
    )
    p.add_argument("store", help="run store (runs.sqlite or sqlite:///path)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--laws", default=None, help="use this law card instead of fitting the store's runs")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits per variant (default: 200)")
    p.add_argument("--loss-key", default=None, help="record field to fit (default: final_val_loss)")
    p.add_argument("--budgets", default=None,
                   help="budgets for the recipe table (default: the sweep's budgets, then 10x and 100x)")
    p.add_argument("--label", default=None, help="provenance label for the fitted card")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embrecipe.laws import LawSet
    from embrecipe.planning.planner import parse_budgets
    from embrecipe.report.writer import write_report
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.adaptive import read_trace

    require_store(args.store)
    out = Path(args.out)
    laws = LawSet.load(args.laws) if args.laws else None
    budgets = parse_budgets(args.budgets) if args.budgets else None
    with RunStore(args.store) as store:
        records = store.records()
        # all or nothing: the fit (which a store with too few runs fails) happens before the first file is written
        paths = write_report(records, out, laws=laws, bootstrap=args.bootstrap, loss_key=args.loss_key,
                             budgets=budgets, provenance=args.label, adaptive_trace=read_trace(args.store))
        store.export(out / "runs.csv")
        store.export(out / "runs.parquet")
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    print(f"{'runs':>14}: {out / 'runs.csv'}, {out / 'runs.parquet'}")
    return 0
