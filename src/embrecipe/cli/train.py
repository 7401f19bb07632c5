"""``embrecipe train``: one budget-exact fine-tuning run, exported as a SentenceTransformer."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError
from ..train_config import TrainConfig


def parse_budget(text: str) -> float:
    """``3e13``, ``3E13`` or ``30_000_000_000_000`` → float; anything else is a one-line error."""
    try:
        value = float(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number of FLOPs (e.g. 3e13)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"budget must be a positive, finite number of FLOPs, got {text!r}")
    return value


def parse_positive(kind: type, flag: str):
    """An argparse type: a positive ``kind`` (int or float) or a one-line error naming ``flag``."""
    def parse(text: str) -> float | int:
        try:
            value = kind(str(text).replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not {'a whole number' if kind is int else 'a number'}") \
                from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {text!r}")
        return value
    return parse


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    from ..methods import METHODS

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(METHODS), default="full",
                   help="fine-tuning method (default: full)")
    # Each method's own flags (embrecipe.methods.MethodConfig.cli_options). Defaults are None so that a flag
    # given with the wrong --method is an error, not silently ignored.
    for cls in METHODS.values():
        for option in cls.cli_options:
            g.add_argument(option.flag, type=option.type, default=None, help=option.help)


def method_from_args(args: argparse.Namespace):
    from ..methods import METHODS, parse_method

    for name, cls in METHODS.items():
        given = [o.flag for o in cls.cli_options if getattr(args, o.dest, None) is not None]
        if given and args.method != name:
            raise InputError(f"{given[0]} applies to --method {name}, not --method {args.method}")
    options = METHODS[args.method].cli_options
    return parse_method(args.method, **{o.field: getattr(args, o.dest) for o in options
                                        if getattr(args, o.dest) is not None})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune one decoder into an embedding model within a FLOP budget",
        description="Budget-exact contrastive fine-tuning (symmetric InfoNCE, in-batch negatives). Stops before "
                    "the step that would exceed --budget model FLOPs and exports a SentenceTransformer to --out. "
                    "--epochs or --max-steps instead of --budget train that much, metered as the FLOPs those "
                    "batches cost. Warns when a run repeats its data (more than one epoch of its unique pairs); "
                    "refuses data with no more unique pairs than one batch.",
        epilog="example: embrecipe train --model runs/base --data pairs.jsonl --method lora --lora-rank 32 "
               "--budget 3e13 --batch-size 1024 --mini-batch-size 64 --out runs/my-model",
    )
    p.add_argument("--model", required=True, help="local checkpoint dir, hub id, or a .gguf file")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (hub repo or dir)")
    p.add_argument("--data", required=True, help="pairs: .jsonl[.gz] {query,pos,neg}, .csv/.tsv/.parquet, or a "
                                                 "datasets directory")
    p.add_argument("--val-data", default=None, help="held-out pairs for the final validation loss")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of --data for validation when --val-data is not given")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--budget", type=parse_budget, help="model-FLOP budget, e.g. 3e13")
    target.add_argument("--epochs", type=parse_positive(float, "--epochs"),
                        help="passes over the data instead of --budget; trained as the exact FLOPs those batches "
                             "cost (run.json: budget, model_flops)")
    target.add_argument("--max-steps", type=parse_positive(int, "--max-steps"),
                        help="optimizer steps instead of --budget; trained as the exact FLOPs those batches cost")
    p.add_argument("--out", required=True, help="output directory (SentenceTransformer + run.json)")
    add_method_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=1024, help="pairs per step (default: 1024)")
    g.add_argument("--mini-batch-size", type=int, default=None,
                   help="GradCache mini-batch: embeds this many texts at a time so large batches fit in memory")
    g.add_argument("--max-seq-length", type=int, default=75, help="tokens per text (default: 75)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the law card's LR when the packaged card knows this model "
                        "and method; else 1/10 of the model's published pre-training peak, e.g. 6e-5 for "
                        "pythia-160m, 1e-4 if unknown, times 10 for lora and bias, which train few parameters)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    g.add_argument("--scale", type=float, default=40.0, help="InfoNCE inverse temperature (default: 40)")
    g.add_argument("--pooling", choices=["mean", "lasttoken", "last-token", "weighted-mean"], default="mean",
                   help="mean (default) or lasttoken (EOS is appended to every text, in training and in the "
                        "saved model)")
    g.add_argument("--hard-negatives", type=int, default=0, help="use this many 'neg' texts per pair")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where the hardware computes bf16 natively (a CUDA GPU with bf16, a "
                        "CPU with avx512_bf16 or amx_bf16), else fp32; the choice is printed and in run.json")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--no-repeat", action="store_true", help="error instead of repeating data (epochs > 1)")
    g.add_argument("--no-bucketing", action="store_true", help="disable length bucketing of batches")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                   help="steps between checkpoints (0: never)")
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run from --out/checkpoint (an error when there is no checkpoint)")
    g.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out, replacing the files a run writes there (others are kept); "
                        "without it a non-empty --out is refused")
    g.add_argument("--keep-adapter", action="store_true", help="lora: save the adapter only, not merged")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_feature_arguments(p)
    _speed_options(p)
    p.set_defaults(func=run)


def add_feature_arguments(p: argparse.ArgumentParser, *, prompts: bool = True) -> None:
    """Prompts, tracking and Hub flags (shared by ``train`` and ``run``)."""
    if prompts:
        g = p.add_argument_group("prompts")
        g.add_argument("--query-prompt", default=None,
                       help="instruction prepended to every query, e.g. 'query: ' (saved with the model as its "
                            "'query' prompt; its tokens are excluded from mean pooling but count as FLOPs)")
        g.add_argument("--doc-prompt", default=None,
                       help="prepended to positives and negatives, e.g. 'passage: ' (the 'document' prompt)")
    g = p.add_argument_group("tracking and the Hub")
    g.add_argument("--report-to", default="auto",
                   help="none, tensorboard, wandb, mlflow, trackio, all, or a comma list (default: auto = "
                        "TensorBoard when installed, logs in OUT/runs)")
    g.add_argument("--logging-dir", default=None, help="tracking log directory (default: OUT/runs)")
    g.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="after training, upload the model and its card to this Hugging Face repo (needs a network "
                        "and a token: huggingface-cli login or HF_TOKEN)")
    g.add_argument("--hub-private", action="store_true", help="create the Hub repository as private")


def _speed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed (docs/performance.md)")
    g.add_argument("--packing", choices=["auto", "on", "off"], default="auto",
                   help="unpadded execution: texts packed into rows, pooled per text (auto: on a CUDA GPU)")
    g.add_argument("--pack-length", type=int, default=0, help="tokens per packed row (default: ~2x max length)")
    g.add_argument("--compile", choices=["none", "default", "cudagraphs"], default="none",
                   help="torch.compile the transformer; cudagraphs adds CUDA graphs (GPU only; default: none)")
    g.add_argument("--sync-every", type=int, default=32,
                   help="steps between reads of the loss by the host on a CUDA device (a GPU sync; default: 32; "
                        "on the CPU every step)")


def run(args: argparse.Namespace) -> int:
    from ..jsonio import json_safe
    from ..trainer import train

    if args.batch_size < 2:
        raise InputError(f"--batch-size must be >= 2, got {args.batch_size}")
    config = TrainConfig(
        model=args.model, gguf_file=args.gguf_file, data=args.data, val_data=args.val_data,
        val_fraction=args.val_fraction, budget=args.budget, epochs=args.epochs, max_steps=args.max_steps,
        method=method_from_args(args),
        batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, max_seq_length=args.max_seq_length,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm or None, scale=args.scale, pooling=args.pooling,
        hard_negatives=args.hard_negatives, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, allow_repeat=not args.no_repeat,
        length_bucketing=not args.no_bucketing, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite,
        keep_adapter=args.keep_adapter, progress=not args.quiet, query_prompt=args.query_prompt,
        doc_prompt=args.doc_prompt, report_to=args.report_to, tracking_dir=args.logging_dir,
    )
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    config.packing, config.pack_length, config.compile, config.sync_every = (
        args.packing, args.pack_length, args.compile, args.sync_every)
    record = train(config)
    if record.status == "failed":  # e.g. a non-finite loss found at a sync point
        from ..errors import EmbrecipeError

        raise EmbrecipeError(f"training failed: {record.failure}")
    details = record.details
    summary = {"method_key": record.variant, "budget": record.budget, "model_flops": record.model_flops,
               "hardware_flops": details["hardware_flops"], "tokens": record.tokens, "steps": record.steps,
               "final_train_loss": record.final_train_loss, "final_val_loss": record.final_val_loss,
               "tokens_per_s": details["tokens_per_s"], "model_flops_per_s": details["model_flops_per_s"]}
    print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    print(f"saved to {args.out}")
    if args.push_to_hub:
        from ..hub import push_run

        print(f"pushed to the Hub: {push_run(args.out, args.push_to_hub, private=args.hub_private or None)}")
    return 0


def check_repo_id(repo_id: str) -> None:
    """Fail before training, not after, when ``--push-to-hub`` is not a repository id."""
    if not repo_id or repo_id.count("/") > 1 or any(c.isspace() for c in repo_id):
        raise InputError(f"--push-to-hub {repo_id!r}: expected a repository id like 'user/name'")
