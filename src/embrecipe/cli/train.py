"""``embrecipe train``: one budget-exact fine-tuning run, exported as a SentenceTransformer."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Sequence
from typing import Any

from embrecipe.errors import InputError
from embrecipe.flops import is_budget
from embrecipe.training.config import MAIN, PROMPTS, SPEED, TRACKING, TrainConfig
from embrecipe.training.hub import check_repo_id


def parse_budget(text: str) -> float:
    """``3e13``, ``3E13`` or ``30_000_000_000_000`` → float; anything else is a one-line error."""
    try:
        value = float(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number of FLOPs (e.g. 3e13)") from None
    if not is_budget(value):
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
    from embrecipe.models.methods import METHODS

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(METHODS), default="full",
                   help="fine-tuning method (default: full)")
    # Each method's own flags (embrecipe.models.methods.MethodConfig.cli_options). Defaults are None so that a flag
    # given with the wrong --method is an error, not silently ignored.
    for cls in METHODS.values():
        for option in cls.cli_options:
            g.add_argument(option.flag, type=option.type, default=None, help=option.help)


def method_from_args(args: argparse.Namespace):
    from embrecipe.models.methods import METHODS, parse_method

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
    add_config_arguments(p, [MAIN])
    add_method_arguments(p)
    add_config_arguments(p, ["training"])
    add_feature_arguments(p)
    add_config_arguments(p, [SPEED])
    p.set_defaults(func=run)


# Flags that parse their text themselves (a budget may be written 3e13 or 30_000_000_000_000).
_PARSERS = {"budget": parse_budget, "epochs": parse_positive(float, "--epochs"),
            "max_steps": parse_positive(int, "--max-steps")}


def _flag_fields(groups: Sequence[str]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("help") and f.metadata["group"] in groups]


def add_config_arguments(p: argparse.ArgumentParser, groups: Sequence[str]) -> dict[str, argparse._ArgumentGroup]:
    """One flag per :class:`~embrecipe.training.config.TrainConfig` field of ``groups`` that has help: name, type,
    default, choices and help all come from the field (:func:`~embrecipe.training.config.setting`), so a new field
    with help is a new flag. Returns the argument groups made, by name."""
    hints = typing.get_type_hints(TrainConfig)
    made: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, Any] = {}
    for f in _flag_fields(groups):
        meta = f.metadata
        group = meta["group"]
        target: Any = p if group == MAIN else made.setdefault(group, p.add_argument_group(group))
        if meta.get("exclusive"):  # exactly one of them: --budget, --epochs or --max-steps
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group(required=True)
            target = exclusive[meta["exclusive"]]
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        kinds = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None)]
        if kinds == [bool]:
            # --no-repeat, --quiet: the flag turns a default-on setting off
            target.add_argument(flag, dest=f.name, action="store_false" if meta["negate"] else "store_true",
                                default=default, help=meta["help"])
            continue
        parse = _PARSERS.get(f.name) or (kinds[0] if kinds[0] in (int, float) else str)
        target.add_argument(flag, dest=f.name, type=parse, default=default, choices=meta["choices"],
                            required=meta["required"], help=meta["help"])
    return made


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~embrecipe.training.config.TrainConfig` the flags of :func:`register` describe."""
    values: dict[str, Any] = {}
    for f in _flag_fields([MAIN, "training", PROMPTS, TRACKING, SPEED]):
        value = getattr(args, f.name)
        values[f.name] = None if f.metadata["zero_is_none"] and not value else value
    return TrainConfig(method=method_from_args(args), **values)


def add_feature_arguments(p: argparse.ArgumentParser, *, prompts: bool = True) -> None:
    """Prompts, tracking and Hub flags (shared by ``train`` and ``run``)."""
    g = add_config_arguments(p, [PROMPTS, TRACKING] if prompts else [TRACKING])[TRACKING]
    g.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="after training, upload the model and its card to this Hugging Face repo (needs a network "
                        "and a token: huggingface-cli login or HF_TOKEN)")
    g.add_argument("--hub-private", action="store_true", help="create the Hub repository as private")


def run(args: argparse.Namespace) -> int:
    from embrecipe.jsonio import json_safe
    from embrecipe.training.trainer import train

    if args.batch_size < 2:
        raise InputError(f"--batch-size must be >= 2, got {args.batch_size}")
    config = config_from_args(args)
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    record = train(config)  # a diverged run raises TrainingDiverged (a one-line error): this one finished
    details = record.details
    summary = {"method_key": record.variant, "budget": record.budget, "model_flops": record.model_flops,
               "hardware_flops": details["hardware_flops"], "tokens": record.tokens, "steps": record.steps,
               "final_train_loss": record.final_train_loss, "final_val_loss": record.final_val_loss,
               "tokens_per_s": details["tokens_per_s"], "model_flops_per_s": details["model_flops_per_s"]}
    print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    print(f"saved to {args.out}")
    if args.push_to_hub:
        from embrecipe.training.hub import push_run

        print(f"pushed to the Hub: {push_run(args.out, args.push_to_hub, private=args.hub_private or None)}")
    return 0
