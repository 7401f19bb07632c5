"""``embrecipe sweep grid.yaml``: run the missing cells of a grid (models × methods × hparams × budgets)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="expand a grid YAML and train the cells not yet completed in the run store",
        description="Expand models × methods × hyper-parameters × budgets, skip cells that cannot spend their "
                    "budget sensibly (printing why), and train every cell that is not completed in the store. "
                    "Safe to interrupt (even kill -9) and rerun.",
    )
    p.add_argument("grid", help="grid YAML (format: docs/sweep.md)")
    p.add_argument("--store", default=None,
                   help="run store path or sqlite:/// URL (default: the grid's 'store', else <name>.sqlite "
                        "beside the grid)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells run (default: local)")
    p.add_argument("--workers", type=int, default=1,
                   help="local: parallel processes (default 1 = sequential); ray: CPUs of a local Ray instance")
    p.add_argument("--ray-address", default=None, help="connect to an existing Ray cluster (e.g. ray://host:10001)")
    p.add_argument("--train-fn", default=None,
                   help="module:function used to train a cell (default: the grid's 'trainer', else "
                        "embrecipe.trainer:train_from_dict; 'synthetic' = fake trainer for testing)")
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sweep import load_grid, run_sweep

    grid = load_grid(args.grid)
    result = run_sweep(grid, store=args.store, executor=args.executor, workers=args.workers,
                       train_fn=args.train_fn, ray_address=args.ray_address, dry_run=args.dry_run,
                       progress=not args.no_progress)
    return 1 if result.failed else 0
