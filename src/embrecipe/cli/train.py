"""``embrecipe train``: one budget-exact fine-tuning run, exported as a SentenceTransformer."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError


def parse_budget(text: str) -> float:
    """``3e13``, ``3E13`` or ``30_000_000_000_000`` → float; anything else is a one-line error."""
    try:
        value = float(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number of FLOPs (e.g. 3e13)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"budget must be a positive, finite number of FLOPs, got {text!r}")
    return value


def parse_blocks(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--trainable-blocks takes an int (blocks) or a fraction, got {text!r}") \
                from None


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=["full", "freeze", "bias", "lora"], default="full",
                   help="fine-tuning method (default: full)")
    g.add_argument("--trainable-blocks", type=parse_blocks, default=0.25,
                   help="freeze: train the last k blocks (int) or this fraction of blocks (default: 0.25)")
    g.add_argument("--lora-rank", type=int, default=32, help="lora: rank r (default: 32)")
    g.add_argument("--lora-alpha", type=float, default=None, help="lora: alpha (default: = rank)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="lora: dropout (default: 0)")
    g.add_argument("--lora-targets", default="all-linear",
                   help="lora: 'all-linear' (default: every linear layer of the blocks) or comma-separated "
                        "module names, e.g. query_key_value,dense")


def method_from_args(args: argparse.Namespace):
    from ..methods import parse_method

    if args.method == "freeze":
        return parse_method("freeze", trainable_blocks=args.trainable_blocks)
    if args.method == "lora":
        targets = args.lora_targets if args.lora_targets == "all-linear" else tuple(
            t.strip() for t in args.lora_targets.split(",") if t.strip())
        return parse_method("lora", rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                            targets=targets)
    return parse_method(args.method)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune one decoder into an embedding model within a FLOP budget",
        description="Budget-exact contrastive fine-tuning (symmetric InfoNCE, in-batch negatives). Stops before "
                    "the step that would exceed --budget model FLOPs and exports a SentenceTransformer to --out.",
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
    p.add_argument("--budget", type=parse_budget, required=True, help="model-FLOP budget, e.g. 3e13")
    p.add_argument("--out", required=True, help="output directory (SentenceTransformer + run.json)")
    add_method_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=1024, help="pairs per step (default: 1024)")
    g.add_argument("--mini-batch-size", type=int, default=None,
                   help="GradCache mini-batch: embeds this many texts at a time so large batches fit in memory")
    g.add_argument("--max-seq-length", type=int, default=75, help="tokens per text (default: 75)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1/10 of the model's published pre-training peak, "
                        "e.g. 6e-5 for pythia-160m; 1e-4 if unknown)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    g.add_argument("--scale", type=float, default=40.0, help="InfoNCE inverse temperature (default: 40)")
    g.add_argument("--pooling", choices=["mean", "last-token", "weighted-mean"], default="mean")
    g.add_argument("--hard-negatives", type=int, default=0, help="use this many 'neg' texts per pair")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where the hardware supports it")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--no-repeat", action="store_true", help="error instead of repeating data (epochs > 1)")
    g.add_argument("--no-bucketing", action="store_true", help="disable length bucketing of batches")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (0: never)")
    g.add_argument("--resume", action="store_true", help="continue a killed run from --out/checkpoint")
    g.add_argument("--keep-adapter", action="store_true", help="lora: save the adapter only, not merged")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..trainer import TrainConfig, train

    if args.batch_size < 2:
        raise InputError(f"--batch-size must be >= 2, got {args.batch_size}")
    config = TrainConfig(
        model=args.model, gguf_file=args.gguf_file, data=args.data, val_data=args.val_data,
        val_fraction=args.val_fraction, budget=args.budget, method=method_from_args(args),
        batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, max_seq_length=args.max_seq_length,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm or None, scale=args.scale, pooling=args.pooling,
        hard_negatives=args.hard_negatives, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, allow_repeat=not args.no_repeat,
        length_bucketing=not args.no_bucketing, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, keep_adapter=args.keep_adapter,
        progress=not args.quiet,
    )
    record = train(config)
    summary = {k: record[k] for k in ("method_key", "budget", "model_flops", "hardware_flops", "tokens", "steps",
                                      "final_train_loss", "final_val_loss", "tokens_per_s", "model_flops_per_s")}
    print(json.dumps(summary, indent=2))
    print(f"saved to {args.out}")
    return 0
