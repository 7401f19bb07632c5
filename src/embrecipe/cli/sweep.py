"""``embrecipe sweep grid.yaml``: run the missing cells of a grid (models × methods × hparams × budgets).

``--adaptive`` runs it rung by rung and drops dominated configurations; ``--adaptive-replay STORE`` replays
that policy on a completed full-grid store, training nothing (see ``docs/sweep.md``, "Adaptive sweeps").
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InputError
from ._common import require_store

# CLI option → AdaptiveSpec setting
_SPEC_OPTIONS = {"budget": "target", "keep_min": "keep_min", "margin": "margin", "level": "level",
                 "min_rungs": "min_rungs", "bootstrap": "bootstrap"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="expand a grid YAML and train the cells not yet completed in the run store",
        description="Expand models × methods × hyper-parameters × budgets, skip cells that cannot spend their "
                    "budget sensibly (printing why), and train every cell that is not completed in the store. "
                    "Safe to interrupt (even kill -9) and rerun. With --adaptive, run the budgets smallest "
                    "first and stop training configurations whose optimistic predicted loss at the target "
                    "budget is worse than the frontier's pessimistic one.",
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
                        "embrecipe.trainer:train_from_dict; 'synthetic' = fake trainer for testing)")
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    a = p.add_argument_group("adaptive sweeps (docs/sweep.md, 'Adaptive sweeps')")
    a.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None,
                   help="run rung by rung (smallest budget first) and drop configurations that are confidently "
                        "worse at the target budget (default: as the grid's 'adaptive' key says; off without one)")
    a.add_argument("--adaptive-replay", metavar="STORE", default=None,
                   help="train nothing: replay the adaptive policy on a completed full-grid store and report the "
                        "fraction of the grid's FLOPs it needs and whether it reaches the same recommendation")
    a.add_argument("--budget", type=float, default=None, metavar="FLOPS",
                   help="target budget in model FLOPs the decisions (and, with --adaptive-replay, the compared "
                        "recommendation) are for (default: the grid's adaptive target, else the largest budget)")
    a.add_argument("--keep-min", type=int, default=None, metavar="N", help="fewest configurations kept alive (default 3)")
    a.add_argument("--margin", type=float, default=None, metavar="FRAC",
                   help="relative slack: drop only if optimistic loss > (1 + margin) x frontier's pessimistic "
                        "loss (default 0.02)")
    a.add_argument("--level", type=float, default=None, metavar="P", help="bootstrap interval level (default 0.9)")
    a.add_argument("--min-rungs", type=int, default=None, metavar="K",
                   help="budgets a variant needs runs at before it can be dropped (default 3)")
    a.add_argument("--bootstrap", type=int, default=None, metavar="B",
                   help="bootstrap refits per decision (default 100; 0 = point predictions and the margin)")
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
    from ..grid import load_grid
    from ..sweep import run_sweep

    grid = load_grid(args.grid)
    adaptive = args.adaptive
    if adaptive is False and overrides:
        raise InputError(f"--{next(iter(overrides)).replace('_', '-')} is an adaptive setting; it conflicts "
                         "with --no-adaptive")
    if overrides:
        if adaptive is None and grid.adaptive is None:
            raise InputError("adaptive settings (--budget, --keep-min, ...) need --adaptive or an 'adaptive' key "
                             "in the grid")
        adaptive = (grid.adaptive or _default_spec()).with_overrides(**overrides)
    result = run_sweep(grid, store=args.store, executor=args.executor, workers=args.workers,
                       train_fn=args.train_fn, ray_address=args.ray_address, dry_run=args.dry_run,
                       progress=not args.no_progress, adaptive=adaptive)
    return 1 if result.failed else 0


def _default_spec():
    from ..adaptive import AdaptiveSpec

    return AdaptiveSpec()


def _replay(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from ..adaptive import replay_adaptive
    from ..store import RunStore

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
