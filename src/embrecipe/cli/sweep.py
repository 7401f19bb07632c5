"""``embrecipe sweep grid.yaml``: run the missing cells of a grid (models × methods × hparams × budgets).

``--adaptive`` runs the adaptive experimental design (it chooses the next cells by value per FLOP and stops when
the recipe's expected regret is below a threshold or ``--experiment-budget`` is spent); ``--adaptive-replay STORE``
replays that design on a completed full-grid store, training nothing (see ``docs/sweep.md``, "Adaptive sweeps").
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from embrecipe.cli._common import require_store
from embrecipe.errors import InputError

# CLI option → AdaptiveSpec setting
_SPEC_OPTIONS = {"budget": "target", "threshold": "threshold", "experiment_budget": "experiment_budget",
                 "min_sizes": "min_sizes", "min_budgets": "min_budgets", "draws": "draws", "p_drop": "p_drop",
                 "verify": "verify", "batch": "batch"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="expand a grid YAML and train the cells not yet completed in the run store",
        description="Expand models × methods × hyper-parameters × budgets, skip cells that cannot spend their "
                    "budget sensibly (printing why), and train every cell that is not completed in the store. "
                    "Safe to interrupt (even kill -9) and rerun. With --adaptive, run an experimental design "
                    "instead: the cheapest cells that pin each variant's law, then the cells whose result is "
                    "expected to reduce the recipe's regret most per FLOP, until the expected regret is below "
                    "--threshold or --experiment-budget is spent.",
    )
    p.add_argument("grid", nargs="?", help="grid YAML (format: docs/sweep.md); omitted with --adaptive-replay")
    p.add_argument("--store", default=None,
                   help="run store path or sqlite:/// URL (default: the grid's 'store', else <name>.sqlite "
                        "beside the grid)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells run (default: local)")
    p.add_argument("--workers", type=int, default=1,
                   help="local: parallel processes (default 1 = sequential); ray: CPUs of a local Ray instance")
    p.add_argument("--ray-address", default=None, help="connect to an existing Ray cluster (e.g. ray://host:10001)")
    p.add_argument("--train-fn", default=None,
                   help="module:function used to train a cell (default: the grid's 'trainer', else "
                        "embrecipe.training.trainer:train_from_dict; 'synthetic' = fake trainer for testing)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells that would run, train nothing (with --adaptive: print the design's current "
                        "recipe, P(optimal) and expected regret on the store's completed runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    a = p.add_argument_group("adaptive sweeps (docs/sweep.md, 'Adaptive sweeps')")
    a.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None,
                   help="run the adaptive design instead of the whole grid (default: as the grid's 'adaptive' key "
                        "says; off without one); it prints one line per decision and writes <store>.adaptive.json")
    a.add_argument("--adaptive-replay", metavar="STORE", default=None,
                   help="train nothing: replay the adaptive design on a completed full-grid store and report the "
                        "fraction of the grid's FLOPs it needs, whether it reaches the same recommendation and its "
                        "stated expected regret")
    a.add_argument("--budget", type=float, default=None, metavar="FLOPS",
                   help="target budget in model FLOPs the recipe is for (default: the grid's adaptive target, else "
                        "the largest budget)")
    a.add_argument("--experiment-budget", type=float, default=None, metavar="FLOPS",
                   help="model FLOPs the design may spend in all (it never starts a cell it cannot pay for)")
    a.add_argument("--threshold", type=float, default=None, metavar="FRAC",
                   help="stop when the recipe's expected relative regret is at most this (default 0.005)")
    a.add_argument("--min-sizes", type=int, default=None, metavar="K",
                   help="model sizes a variant needs runs at before its law counts (default 2)")
    a.add_argument("--min-budgets", type=int, default=None, metavar="K",
                   help="budgets a variant needs runs at before its law counts (default 3)")
    a.add_argument("--draws", type=int, default=None, metavar="B",
                   help="bootstrap particles per decision (default 40)")
    a.add_argument("--p-drop", type=float, default=None, metavar="P",
                   help="defer configurations with P(optimal) below this (default 0.02)")
    a.add_argument("--verify", type=int, default=None, metavar="K",
                   help="the recipe and its closest rivals (K in all) need a run at the target's rung before the "
                        "design stops (default 3; 0 = off)")
    a.add_argument("--batch", type=int, default=None, metavar="K", help="cells started per decision (default 1)")
    a.add_argument("--json", action="store_true", help="with --adaptive-replay: print the result as JSON")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {setting: getattr(args, opt) for opt, setting in _SPEC_OPTIONS.items() if getattr(args, opt) is not None}


def run(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if args.adaptive_replay is not None:
        return _replay(args, overrides)
    if args.grid is None:
        raise InputError("give a grid YAML (or --adaptive-replay STORE to replay the adaptive policy)")
    if args.json:
        raise InputError("--json goes with --adaptive-replay")
    from embrecipe.sweep.grid import load_grid
    from embrecipe.sweep.orchestration import run_sweep

    grid = load_grid(args.grid)
    adaptive = args.adaptive
    if adaptive is False and overrides:
        raise InputError(f"--{next(iter(overrides)).replace('_', '-')} is an adaptive setting; it conflicts "
                         "with --no-adaptive")
    if overrides:
        if adaptive is None and grid.adaptive is None:
            raise InputError("adaptive settings (--budget, --threshold, ...) need --adaptive or an 'adaptive' key "
                             "in the grid")
        adaptive = (grid.adaptive or _default_spec()).with_overrides(**overrides)
    result = run_sweep(grid, store=args.store, executor=args.executor, workers=args.workers,
                       train_fn=args.train_fn, ray_address=args.ray_address, dry_run=args.dry_run,
                       progress=not args.no_progress, adaptive=adaptive)
    return 1 if result.failed else 0


def _default_spec():
    from embrecipe.sweep.adaptive import AdaptiveSpec

    return AdaptiveSpec()


def _replay(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.adaptive import replay_adaptive

    if args.grid is not None:
        raise InputError("--adaptive-replay replays a store; give no grid file with it")
    if args.adaptive is False:
        raise InputError("--adaptive-replay and --no-adaptive contradict each other")
    require_store(args.adaptive_replay)
    # The replay compares recommendations at --budget; the decisions are taken for the same budget.
    target = overrides.pop("target", None)
    spec = _default_spec().with_overrides(**overrides)
    with RunStore(args.adaptive_replay) as store:
        records = store.records()
        counts = store.counts()
    result = replay_adaptive(records, target=target, spec=spec)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    other = {k: v for k, v in counts.items() if k != "completed" and v}
    if other:
        print(f"note: the store also holds {', '.join(f'{v} {k}' for k, v in other.items())} run(s); the replay "
              "uses the completed ones only")
    print(result.format())
    return 0
