"""What several subcommands share: the run-store argument's check and the law-fitting options.

One definition each, so the error text and the option help read the same in every command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from embrecipe.errors import InputError


def require_store(path: str, *, must_exist: bool = False) -> str:
    """``path`` when it names a run store (``runs.sqlite`` or ``sqlite:///path``), else a one-line error.

    ``must_exist``: also refuse a store file that is not there (commands that only read it).
    """
    from embrecipe.runs.store import is_store_path

    if not is_store_path(path) or (must_exist and not Path(path).exists()):
        raise InputError(f"{path} is not a run store (an SQLite file written by `embrecipe sweep`)")
    return path


def add_fit_options(p: argparse.ArgumentParser, *,
                    bootstrap_help: str = "bootstrap refits per variant (default: 200)") -> None:
    """``--bootstrap`` and ``--min-runs``: how a command that fits laws on a store fits them."""
    p.add_argument("--bootstrap", type=int, default=200, help=bootstrap_help)
    p.add_argument("--min-runs", type=int, default=6, help="fewest runs to fit a variant (default: 6)")


def check_fit_options(args: argparse.Namespace) -> None:
    if args.bootstrap < 0:
        raise InputError("--bootstrap must be >= 0")
