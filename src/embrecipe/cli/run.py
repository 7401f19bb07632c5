"""``embrecipe run --budget C``: plan the compute-optimal recipe, train it, evaluate it (step 5 of the algorithm)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="plan the optimal recipe for a budget, then train and evaluate it",
        description="`embrecipe plan` for one budget, then train the optimum with `embrecipe train`'s trainer "
                    "(budget-exact), record it in a store if given, and evaluate the exported model.",
    )
    p.add_argument("--budget", required=True, help="model FLOPs to spend, e.g. 1e15")
    p.add_argument("--data", required=True, help="training pairs (JSONL / Parquet / CSV / datasets dir)")
    p.add_argument("--out", required=True, help="output directory: the trained model, plan.json, eval/")
    p.add_argument("--laws", default=None, help="law card or run store (default: the packaged card)")
    p.add_argument("--family", default=None, help="family file (default: the card's models)")
    p.add_argument("--variants", default=None, help="comma-separated variants to consider (default: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per step (default and only accepted value: the card's, unless it was fitted "
                        "across batch sizes)")
    p.add_argument("--mini-batch-size", type=int, default=None, help="GradCache mini-batch (default: none)")
    p.add_argument("--max-seq-length", type=int, default=None, help="tokens per text (trainer default: 75)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the card's, selected for the planned variant and size; an "
                        "override leaves the recipe the law was fitted at and is flagged)")
    p.add_argument("--unique-pairs", type=int, default=None,
                   help="training pairs in --data for the epoch check (default: counted in --data)")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out fraction of --data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-per-pair", type=float, default=None,
                   help="mean tokens per pair for planning (default: measured on a sample spread over --data with "
                        "the family's tokenizer; the card's when that tokenizer is not here, with a warning)")
    p.add_argument("--store", default=None, help="also record the run in this run store")
    p.add_argument("--eval", default="local", dest="eval_tasks",
                   help="evaluation tasks for `embrecipe eval` (default: local; 'none' to skip)")
    p.add_argument("--eval-pairs", default=None, help="held-out pairs for evaluation (default: the testbed's)")
    p.add_argument("--train-fn", default=None,
                   help="module:function to train with (default: embrecipe.trainer:train_from_dict; "
                        "'synthetic' = fake trainer for testing)")
    p.add_argument("--dry-run", action="store_true", help="plan and print the training config; train nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run from --out/checkpoint (as `embrecipe train --resume`)")
    g.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out, replacing the files a run writes there (as `embrecipe "
                        "train --overwrite`); without it a non-empty --out is refused")
    p.add_argument("--device-memory", type=float, metavar="GIB", default=None,
                   help="plan only options that fit in GIB; trains with the GradCache mini-batch the plan sized "
                        "(unless --mini-batch-size is given)")
    p.add_argument("--embed-tokens", type=float, metavar="T", default=None,
                   help="--budget is training + embedding T tokens afterwards (2 x N x T); trains on the rest")
    from .train import add_feature_arguments

    add_feature_arguments(p)
    p.set_defaults(func=run)


def recipe_line(best, batch_size: int, lr_override: float | None) -> str:
    """What `run` says about the LR and batch size it trains with, against the card's."""
    if lr_override is not None:
        card = "none recorded" if best.lr is None else f"{best.lr:.3g}"
        return (f"WARNING: training at --lr {lr_override:.3g}, not the card's LR ({card}): the predicted loss "
                f"assumes the card's; batch size {batch_size} (the card's)")
    if best.lr is None:
        return (f"training at batch size {batch_size} (the card's); the card records no LR for {best.variant}, "
                "so the trainer's default rule applies (one tenth of the pre-training peak)")
    return f"training at the card's lr {best.lr:.3g} ({best.lr_note}) and batch size {batch_size}"


def _check_content(ref: str, local: str, family, card_family) -> None:
    """Warn when the model found here is not the one the card (or family file) was made with: its content
    hash differs (another build of the testbed member)."""
    from ..model_ref import testbed_content_hash

    known = [m.content_hash for m in family or () if m.path == ref]
    known += [m.get("content_hash") for m in card_family if m.get("path") == ref]
    want = next((h for h in known if h), None)
    have = testbed_content_hash(local)
    if want and have and have != want:
        print(f"WARNING: {ref} at {local} has content hash {have}, not the {want} it was planned with (another "
              "build): the predicted loss is for the card's weights")


def run(args: argparse.Namespace) -> int:
    from ..executors import resolve_train_fn
    from ..family import Family
    from ..model_ref import resolve_model
    from ..plan import load_laws, parse_budgets, plan
    from ..records import as_record
    from ..store import RunStore
    from .plan import measure_data

    budgets = parse_budgets(args.budget)
    if len(budgets) != 1:
        raise InputError("--budget takes one number")
    budget = budgets[0]
    if not Path(args.data).exists():
        raise InputError(f"data {args.data} does not exist")
    laws = load_laws(args.laws)
    family = Family.load(args.family).members if args.family else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    # the plan is made for the data it will train on: its tokens per pair and its size, measured
    measured = measure_data(args.data, laws, family, max_seq_length=args.max_seq_length or 75,
                            tokens_per_pair=args.tokens_per_pair, unique_pairs=args.unique_pairs,
                            hard_negatives=getattr(args, "hard_negatives", 0) or 0, val_fraction=args.val_fraction)
    result = plan(budget, laws, family, batch_size=args.batch_size, variants=variants,
                  device_memory_gib=args.device_memory, embed_tokens=args.embed_tokens,
                  seq_len=args.max_seq_length or 75, **measured)
    print(result.format(top=5))
    best = result.best
    # With --embed-tokens the option's own budget is what remains for training after serving.
    config = {"model": best.path, "data": args.data, "method": best.method,
              "budget": best.budget,
              "batch_size": result.batch_size, "seed": args.seed, "out": args.out}
    if best.lr is not None:
        config["lr"] = best.lr
    if best.mini_batch and args.mini_batch_size is None:
        config["mini_batch_size"] = best.mini_batch
    for key, value in (("mini_batch_size", args.mini_batch_size), ("max_seq_length", args.max_seq_length),
                       ("lr", args.lr), ("val_fraction", args.val_fraction),
                       ("query_prompt", args.query_prompt), ("doc_prompt", args.doc_prompt),
                       ("tracking_dir", args.tracking_dir)):
        if value is not None:
            config[key] = value
    if args.report_to != "auto":
        config["report_to"] = args.report_to
    if args.push_to_hub:
        from .train import check_repo_id

        check_repo_id(args.push_to_hub)
    print(f"\n{recipe_line(best, result.batch_size, args.lr)}")
    print("training config: " + json.dumps(config))
    if args.dry_run:
        return 0
    # The card names the model portably (a testbed name, a hub id); where it is here is decided now, before
    # anything is written: a testbed member that is not built is one line naming the command that builds it.
    _check_content(best.path, resolve_model(best.path), family, laws.family)
    out = Path(args.out)
    from ..jsonio import atomic_write_json
    from ..preflight import check_out_dir

    check_out_dir(out, resume=args.resume, overwrite=args.overwrite)  # the trainer's --out checks, before it starts
    config.update(resume=args.resume, overwrite=args.overwrite)
    record = as_record(resolve_train_fn(args.train_fn)(config), where=f"the record of {args.train_fn or 'train'}")
    if not record.completed:
        raise InputError(f"training did not complete (status {record.status!r})")
    # plan.json only beside a finished run: a failed run leaves nothing of ours (a killed one leaves the
    # trainer's checkpoint, which --resume continues)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "plan.json", result.to_dict())
    achieved = record.final_val_loss
    print(f"\ntrained {best.variant} on {best.model}: {record.steps} steps, "
          f"{float(record.model_flops or 0):.3g} model FLOPs; predicted loss {best.loss:.4g}"
          # One run is compared with the single-run interval (mean law + run noise), not the mean-law one.
          + (f" [{best.run_low:.4g}, {best.run_high:.4g}] for one run" if best.run_low is not None else
             f" [{best.loss_low:.4g}, {best.loss_high:.4g}] (mean law)" if best.loss_low is not None else "")
          + (f", held-out loss {achieved:.4g}" if achieved is not None else " (no validation split: "
             "pass --val-fraction to compare with the prediction)"))
    if args.store:
        with RunStore(args.store) as store:
            key = store.put(record)
        print(f"recorded run {key} in {args.store}")
    if args.eval_tasks != "none" and not record.synthetic:
        from ..evaluate import evaluate, format_table

        ev = evaluate(out, tasks=args.eval_tasks, pairs=args.eval_pairs, out=out / "eval",
                      max_seq_length=args.max_seq_length or 75)
        print(format_table(ev))
    if args.push_to_hub and not record.synthetic:
        from ..hub import push_run

        print(f"pushed to the Hub: {push_run(out, args.push_to_hub, private=args.hub_private or None)}")
    return 0
