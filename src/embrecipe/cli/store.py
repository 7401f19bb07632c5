"""``embrecipe store release STORE``: hand back the claims of sweep workers that are gone."""

from __future__ import annotations

import argparse

from embrecipe.cli._common import require_store
from embrecipe.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store", help="maintain a run store (release claims of dead workers)",
        description="Maintenance of a run store written by `embrecipe sweep`.",
    )
    verbs = p.add_subparsers(dest="store_command", metavar="ACTION")
    r = verbs.add_parser(
        "release", help="set 'running' claims back to pending so the next sweep trains those cells",
        description="Set claims ('running' rows) back to 'pending'. Claims of dead workers also expire by "
                    "themselves after 3 missed heartbeats (3 min by default); this releases them at once. Run it "
                    "only when no sweep is working on these cells: a live worker keeps training a released cell "
                    "and another may start it too.",
        epilog="example: embrecipe store release study.sqlite   (or --key KEY for one cell)",
    )
    r.add_argument("store", help="run store (runs.sqlite or sqlite:///path)")
    r.add_argument("--key", action="append", default=None, metavar="KEY",
                   help="release only this run key (repeatable; default: every running claim)")
    r.set_defaults(func=release)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def release(args: argparse.Namespace) -> int:
    from embrecipe.runs.store import RunStore

    require_store(args.store)
    with RunStore(args.store) as store:
        if args.key:
            unknown = [k for k in args.key if k not in store]
            if unknown:
                raise InputError(f"{args.store}: no run with key {unknown[0]}")
        released = store.release_claims(args.key)
        counts = store.counts()
    print(f"released {len(released)} claim(s) in {args.store}; now "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0
