"""Plan → train → record → evaluate → push: the whole of ``embrecipe run``, as a Python API.

:func:`plan_recipe` makes the plan for the user's data (its tokens per pair and its size measured) and the training
config that plan implies, with no side effects. :func:`run_recipe` then trains that config, writes ``plan.json``
beside the finished run, records the run in a store, evaluates the exported model and pushes it to the Hub, as
asked. ``embrecipe run`` is argparse → :class:`RecipeRun` → :func:`run_recipe` → exit code.

Example (a notebook)::

    >>> from embrecipe import RecipeRun, plan_recipe, run_recipe
    >>> req = RecipeRun(budget=5e13, data="pairs.csv", out="runs/best", store="runs.sqlite")
    >>> plan, config = plan_recipe(req)                          # doctest: +SKIP
    >>> outcome = run_recipe(req)                                # doctest: +SKIP
    >>> outcome.plan.best.loss, outcome.record.final_val_loss    # doctest: +SKIP

(This module is ``pipeline_run``, not ``run_recipe``: a submodule named like the function that
``embrecipe.run_recipe`` exports would replace it on the package once imported.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError

if TYPE_CHECKING:
    from embrecipe.laws import LawSet
    from embrecipe.models.family import FamilyMember
    from embrecipe.planning.planner import Candidate, Plan
    from embrecipe.runs.records import RunRecord
    from embrecipe.sweep.executors import TrainFn

#: The trainer's default tokens per text; the plan's memory and tokens-per-pair estimates use the same.
DEFAULT_MAX_SEQ_LENGTH = 75


@dataclass(frozen=True)
class RecipeRun:
    """What ``embrecipe run`` takes: one budget, the user's pairs and where the model goes, plus options.

    ``laws`` is a law card or run store path (None: the packaged card) or a loaded :class:`~embrecipe.laws.LawSet`;
    ``family`` a family file or its members (None: the card's models). ``eval_tasks`` None or ``"none"`` skips the
    evaluation. ``train_fn`` is a callable, ``"module:function"``, ``"synthetic"`` (the fake trainer, for tests) or
    None (the real trainer). The rest are ``embrecipe run``'s flags of the same names.
    """

    budget: float | str
    data: str | os.PathLike[str]
    out: str | os.PathLike[str]
    laws: str | os.PathLike[str] | LawSet | None = None
    family: str | os.PathLike[str] | Sequence[FamilyMember] | None = None
    variants: Sequence[str] | None = None
    batch_size: int | None = None
    mini_batch_size: int | None = None
    max_seq_length: int | None = None
    lr: float | None = None
    val_fraction: float | None = None
    seed: int = 0
    tokens_per_pair: float | None = None
    unique_pairs: int | None = None
    store: str | os.PathLike[str] | None = None
    eval_tasks: str | None = "local"
    eval_pairs: str | os.PathLike[str] | None = None
    device_memory_gib: float | None = None
    embed_tokens: float | None = None
    query_prompt: str | None = None
    doc_prompt: str | None = None
    tracking_dir: str | None = None
    report_to: str = "auto"
    push_to_hub: str | None = None
    hub_private: bool = False
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    train_fn: str | TrainFn | None = None


@dataclass(frozen=True)
class RecipeOutcome:
    """What :func:`run_recipe` did: the plan, the training config it implied (as printed), and, unless it was a dry
    run, the trained run's record, its evaluation (None when skipped or synthetic), the store key it was recorded
    under and the Hub commit URL (None when not asked)."""

    plan: Plan
    config: dict[str, Any]
    record: RunRecord | None = None
    evaluation: dict[str, Any] | None = None
    store_key: str | None = None
    hub_url: str | None = None


@dataclass(frozen=True)
class _Planned:
    laws: LawSet
    family: list[FamilyMember] | None
    plan: Plan
    config: dict[str, Any]


def plan_recipe(request: RecipeRun) -> tuple[Plan, dict[str, Any]]:
    """The plan for ``request``'s data (tokens per pair and training pairs measured on it) and the training config
    it implies (model, method, budget, batch size, LR, GradCache mini-batch, ...). Reads only: nothing is written
    and nothing trains."""
    planned = _plan(request)
    return planned.plan, planned.config


def run_recipe(request: RecipeRun, log: Callable[[str], object] = print) -> RecipeOutcome:
    """Plan ``request`` (:func:`plan_recipe`), then, unless it is a dry run, train the optimum budget-exactly into
    ``request.out``, write ``plan.json`` beside the finished run, record it in ``request.store``, evaluate the
    exported model and push it to the Hub, as asked. ``log`` gets each line ``embrecipe run`` prints.

    Bad input (a budget, data, laws, out folder) is an :class:`~embrecipe.errors.EmbrecipeError` raised before
    anything is written; a run that fails leaves no ``plan.json`` (a killed one leaves the trainer's checkpoint,
    which ``resume=True`` continues)."""
    if request.resume and request.overwrite:
        raise InputError("resume and overwrite exclude each other")
    planned = _plan(request)
    result, config = planned.plan, planned.config
    log(result.format(top=5))
    best = result.best
    if request.push_to_hub:
        from embrecipe.training.hub import check_repo_id

        check_repo_id(request.push_to_hub)
    log(f"\n{recipe_line(best, result.batch_size, request.lr)}")
    log("training config: " + json.dumps(config))
    if request.dry_run:
        return RecipeOutcome(plan=result, config=config)

    from embrecipe.jsonio import atomic_write_json
    from embrecipe.models.refs import resolve_model
    from embrecipe.runs.records import as_record
    from embrecipe.sweep.executors import resolve_train_fn
    from embrecipe.training.preflight import check_out_dir

    # The card names the model portably (a testbed name, a hub id); where it is here is decided now, before
    # anything is written: a testbed member that is not built is one line naming the command that builds it.
    _check_content(best.path, resolve_model(best.path), planned.family, planned.laws.family, log)
    out = Path(request.out)
    check_out_dir(out, resume=request.resume, overwrite=request.overwrite)  # the trainer's checks, before it starts
    train_fn = resolve_train_fn(request.train_fn)
    record = as_record(train_fn({**config, "resume": request.resume, "overwrite": request.overwrite}),
                       where=f"the record of {_train_fn_name(request.train_fn)}")
    if not record.completed:
        raise InputError(f"training did not complete (status {record.status!r})")
    # plan.json only beside a finished run: a failed run leaves nothing of ours (a killed one leaves the
    # trainer's checkpoint, which --resume continues)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "plan.json", result.to_dict())
    log(_trained_line(best, record))
    store_key = None
    if request.store:
        from embrecipe.runs.store import RunStore

        with RunStore(request.store) as store:
            store_key = store.put(record)
        log(f"recorded run {store_key} in {request.store}")
    evaluation = None
    if request.eval_tasks not in (None, "none") and not record.synthetic:
        from embrecipe.evaluate import evaluate, format_table

        evaluation = evaluate(out, tasks=request.eval_tasks, pairs=request.eval_pairs, out=out / "eval",
                              max_seq_length=request.max_seq_length or DEFAULT_MAX_SEQ_LENGTH)
        log(format_table(evaluation))
    hub_url = None
    if request.push_to_hub and not record.synthetic:
        from embrecipe.training.hub import push_run

        hub_url = push_run(out, request.push_to_hub, private=request.hub_private or None)
        log(f"pushed to the Hub: {hub_url}")
    return RecipeOutcome(plan=result, config=config, record=record, evaluation=evaluation, store_key=store_key,
                         hub_url=hub_url)


def recipe_line(best: Candidate, batch_size: int, lr_override: float | None) -> str:
    """What `run` says about the LR and batch size it trains with, against the card's."""
    if lr_override is not None:
        card = "none recorded" if best.lr is None else f"{best.lr:.3g}"
        return (f"WARNING: training at --lr {lr_override:.3g}, not the card's LR ({card}): the predicted loss "
                f"assumes the card's; batch size {batch_size} (the card's)")
    if best.lr is None:
        return (f"training at batch size {batch_size} (the card's); the card records no LR for {best.variant}, "
                "so the trainer's default rule applies (one tenth of the pre-training peak)")
    return f"training at the card's lr {best.lr:.3g} ({best.lr_note}) and batch size {batch_size}"


def _plan(request: RecipeRun) -> _Planned:
    """Budget, data, laws and family checked and loaded; the data measured; the plan and its training config."""
    from embrecipe.planning.planner import parse_budgets, plan
    from embrecipe.planning.user_data import measure_data

    budgets = parse_budgets(str(request.budget))
    if len(budgets) != 1:
        raise InputError("--budget takes one number")
    if not Path(request.data).exists():
        raise InputError(f"data {request.data} does not exist")
    laws = _laws(request.laws)
    family = _family(request.family)
    variants = list(request.variants) if request.variants else None
    seq_len = request.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    # the plan is made for the data it will train on: its tokens per pair and its size, measured
    measured = measure_data(request.data, laws, family, max_seq_length=seq_len,
                            tokens_per_pair=request.tokens_per_pair, unique_pairs=request.unique_pairs,
                            val_fraction=request.val_fraction, query_prompt=request.query_prompt,
                            doc_prompt=request.doc_prompt)
    result = plan(budgets[0], laws, family, batch_size=request.batch_size, variants=variants,
                  device_memory_gib=request.device_memory_gib, embed_tokens=request.embed_tokens,
                  seq_len=seq_len, **measured)
    return _Planned(laws=laws, family=family, plan=result, config=_train_config(request, result))


def _train_config(request: RecipeRun, result: Plan) -> dict[str, Any]:
    """The trainer's config for the plan's optimum; the request's explicit settings win over the plan's."""
    best = result.best
    # With --embed-tokens the option's own budget is what remains for training after serving.
    config: dict[str, Any] = {"model": best.path, "data": str(request.data), "method": best.method,
                              "budget": best.budget, "batch_size": result.batch_size, "seed": request.seed,
                              "out": str(request.out)}
    if best.lr is not None:
        config["lr"] = best.lr
    if best.mini_batch and request.mini_batch_size is None:
        config["mini_batch_size"] = best.mini_batch
    for key, value in (("mini_batch_size", request.mini_batch_size), ("max_seq_length", request.max_seq_length),
                       ("lr", request.lr), ("val_fraction", request.val_fraction),
                       ("query_prompt", request.query_prompt), ("doc_prompt", request.doc_prompt),
                       ("tracking_dir", request.tracking_dir)):
        if value is not None:
            config[key] = value
    if request.report_to != "auto":
        config["report_to"] = request.report_to
    return config


def _laws(source: str | os.PathLike[str] | LawSet | None) -> LawSet:
    from embrecipe.laws import LawSet
    from embrecipe.planning.planner import load_laws

    return source if isinstance(source, LawSet) else load_laws(source)


def _family(source: str | os.PathLike[str] | Sequence[FamilyMember] | None) -> list[FamilyMember] | None:
    from embrecipe.models.family import Family

    if source is None or isinstance(source, (str, os.PathLike)):
        return Family.load(Path(source)).members if source else None
    return list(source)


def _train_fn_name(ref: str | TrainFn | None) -> str:
    if ref is None or isinstance(ref, str):
        return ref or "train"
    return getattr(ref, "__qualname__", repr(ref))


def _trained_line(best: Candidate, record: RunRecord) -> str:
    """The trained run against the plan's prediction."""
    achieved = record.final_val_loss
    return (f"\ntrained {best.variant} on {best.model}: {record.steps} steps, "
            f"{float(record.model_flops or 0):.3g} model FLOPs; predicted loss {best.loss:.4g}"
            # One run is compared with the single-run interval (mean law + run noise), not the mean-law one.
            + (f" [{best.run_low:.4g}, {best.run_high:.4g}] for one run" if best.run_low is not None else
               f" [{best.loss_low:.4g}, {best.loss_high:.4g}] (mean law)" if best.loss_low is not None else "")
            + (f", held-out loss {achieved:.4g}" if achieved is not None else " (no validation split: "
               "pass --val-fraction to compare with the prediction)"))


def _check_content(ref: str, local: str, family: Sequence[FamilyMember] | None,
                   card_family: Sequence[dict[str, Any]], log: Callable[[str], object]) -> None:
    """Warn when the model found here is not the one the card (or family file) was made with: its content
    hash differs (another build of the testbed member)."""
    from embrecipe.models.refs import testbed_content_hash

    known = [m.content_hash for m in family or () if m.path == ref]
    known += [m.get("content_hash") for m in card_family if m.get("path") == ref]
    want = next((h for h in known if h), None)
    have = testbed_content_hash(local)
    if want and have and have != want:
        log(f"WARNING: {ref} at {local} has content hash {have}, not the {want} it was planned with (another "
            "build): the predicted loss is for the card's weights")
