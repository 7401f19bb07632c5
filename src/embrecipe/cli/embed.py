"""``embrecipe embed``: texts (one per line) → embeddings as .npy or Parquet."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from embrecipe.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts (one per line) with a trained model",
                       description="Read texts, one per line, from FILE or standard input and write their "
                                   "embeddings to --out (.npy: a float32 matrix; .parquet: text + embedding). "
                                   "Row i is line i; a blank line (except at the end) is an error.")
    p.add_argument("--model", required=True, help="a SentenceTransformer directory (e.g. embrecipe train --out)")
    p.add_argument("input", nargs="?", default="-", help="text file, one text per line (default: stdin)")
    p.add_argument("--out", required=True, help="output file: .npy or .parquet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-normalize", action="store_true", help="keep raw (unnormalised) embeddings")
    p.add_argument("--prompt-name", default=None, metavar="NAME",
                   help="prepend the prompt saved with the model under this name, as training did: query (for "
                        "queries) or document (for passages); from train --query-prompt / --doc-prompt")
    p.set_defaults(func=run)


def read_texts(source: str) -> list[str]:
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"{source}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 text ({exc.reason})") from None
    name = "stdin" if source == "-" else source
    while lines and not lines[-1].strip():  # trailing blank lines shift no row
        lines.pop()
    # Row i of the output must be line i of the input; skipping a blank line would silently shift every row after it.
    blank = next((i for i, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:
        raise InputError(f"{name}:{blank}: blank line; embed writes one row per line, so remove blank lines "
                         "(or put a text on it)")
    if not lines:
        raise InputError(f"{name}: no texts to embed")
    return lines


def saved_prompts(model_dir: str | Path) -> dict[str, str]:
    """The prompts sentence-transformers saved with the model (``config_sentence_transformers.json``), read without
    loading the model, so a wrong ``--prompt-name`` fails before any weights load."""
    try:
        config = json.loads((Path(model_dir) / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in (config.get("prompts") or {}).items() if isinstance(v, str)}


def check_prompt_name(prompts: dict[str, str], where: str, name: str | None) -> None:
    """A one-line error when ``name`` is not one of the model's saved ``prompts`` (none asked: nothing to check).

    sentence-transformers gives every model empty ``query`` and ``document`` prompts, so a model whose prompts are
    all empty has none. A prompt saved empty beside a real one is kept: that side was trained without a prompt."""
    if name is None:
        return
    if not any(prompts.values()):
        raise InputError(f"--model {where}: no prompt named {name!r}: the model was saved without prompts (train "
                         "with --query-prompt / --doc-prompt to save them)")
    if name not in prompts:
        raise InputError(f"--model {where}: no prompt named {name!r} (saved prompts: {', '.join(sorted(prompts))})")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    out = Path(args.out)
    if out.suffix not in (".npy", ".parquet"):
        raise InputError(f"--out {out}: use a .npy or .parquet file name")
    if not (Path(args.model) / "modules.json").exists():
        raise InputError(f"--model {args.model}: not a SentenceTransformer directory (no modules.json)")
    check_prompt_name(saved_prompts(args.model), args.model, args.prompt_name)
    texts = read_texts(args.input)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device=None)
    emb = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=not args.no_normalize,
                       prompt_name=args.prompt_name, show_progress_bar=len(texts) > 1000,
                       convert_to_numpy=True).astype(np.float32)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, emb)
    else:
        import pandas as pd

        pd.DataFrame({"text": texts, "embedding": list(emb)}).to_parquet(tmp)
    os.replace(tmp, out)
    print(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out}", file=sys.stderr)
    return 0
