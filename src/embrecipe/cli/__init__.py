"""``embrecipe`` command line: a thin shell over the Python API.

Every subcommand lives in its own module in this package and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
User errors (:class:`~embrecipe.errors.EmbrecipeError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from embrecipe.errors import EmbrecipeError, EmbrecipeWarning

# Order is the order in --help: the pipeline, top-down.
SUBCOMMANDS = ("testbed", "data", "train", "embed", "eval", "sweep", "store", "fit", "plan", "run", "check",
               "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embrecipe",
        description="Compute-optimal contrastive fine-tuning of decoder LMs into embedding models.",
    )
    from embrecipe import __version__

    parser.add_argument("--version", action="version", version=f"embrecipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    # embrecipe's own warnings are about the user's input: one line, like the errors, not a source excerpt
    if issubclass(category, EmbrecipeWarning):
        return f"embrecipe: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EmbrecipeError as exc:
        print(f"embrecipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embrecipe: interrupted (resume with the same command and --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
