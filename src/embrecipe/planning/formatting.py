"""How a plan reads: the text of :meth:`embrecipe.planning.planner.Plan.format` and the recipe table's markdown.

Kept apart from the algorithm (:mod:`embrecipe.planning.planner`) so that costing and ranking stay pure arithmetic and the
wording can change without touching them. Every function here only reads a finished plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# This module reads the planner's Plan, Candidate and RecipeTable but does not import them: planner.py imports it
# (Plan.format, RecipeTable.format), and even a typing-only import back would make an import cycle. The tests
# in tests/planning pin the text.
Plan = Any
Candidate = Any
RecipeTable = Any


def format_plan(p: Plan, top: int = 10) -> str:
    """Human-readable plan: the optimum, the runner-up, a ranked table and the warnings."""
    pct = f"{p.level:.0%}"
    lines = [_header(p)]
    b = p.best
    lines.append(f"Optimum:   {_describe(b, p)}")
    lines.append(f"Train at:  {_train_at(b, p)}")
    if p.runner_up is not None:
        lines.append(f"Runner-up: {_describe(p.runner_up, p)}")
    lines.append("")
    head = (f"{'#':>3} {'model':<22} {'variant':<14} {'N':>9} {'N_t':>9} {'tokens':>9} {'steps':>8} "
            f"{'loss':>8} {'E[loss]':>8} {'mean law ' + pct:>19} {'one run ' + pct:>19} {'P(opt)':>7} {'lr':>8}")
    head += _unit_text(p)
    lines.append(head)
    lines.append("-" * len(head))
    for c in p.candidates[:top]:
        interval = "" if c.loss_low is None else f"[{c.loss_low:.4g}, {c.loss_high:.4g}]"
        run = "" if c.run_low is None else f"[{c.run_low:.4g}, {c.run_high:.4g}]"
        prob = "" if c.p_optimal is None else f"{c.p_optimal:.2f}"
        mark = "" if c.feasible else "  (cannot afford min steps)"
        lr = "?" if c.lr is None else f"{c.lr:.3g}"
        lines.append(
            f"{c.rank:>3} {c.model[:22]:<22} {c.variant:<14} {c.n_params:>9.3g} {c.n_trainable:>9.3g} "
            f"{c.tokens:>9.3g} {c.steps:>8} {c.loss:>8.4g} {c.expected_loss:>8.4g} {interval:>19} {run:>19} {prob:>7} {lr:>8}"
            f"{_unit_text(p, c)}{mark}"
        )
    if len(p.candidates) > top:
        lines.append(f"... {len(p.candidates) - top} more options (--json lists all)")
    lines.append(f"(steps at batch size {p.batch_size} and {p.tokens_per_pair:.1f} tokens per pair; "
                 f"intervals and P(opt) over {p.n_bootstrap} bootstrap fits; {_rank_rule(p)}; 'mean law': where the "
                 f"seed-averaged loss lies, 'one run': where a single training run's loss lies, with run "
                 f"noise {p.noise_label or 'unknown'})")
    for w in p.warnings:
        lines.append(f"WARNING: {w}")
    for s in p.skipped:
        lines.append(f"note: skipped {s}")
    for n in p.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def _rank_rule(p: Plan) -> str:
    """The one rule the options are ranked by."""
    if p.n_bootstrap:
        return "ranked by the expected loss over those fits (E[loss]), P(opt) alongside"
    return "ranked by the point prediction (no bootstrap fits)"


def _train_at(c: Candidate, p: Plan) -> str:
    lr = "lr unknown (the card records none: the trainer's default rule applies)" if c.lr is None \
        else f"lr {c.lr:.3g} ({c.lr_note})"
    data = ("; training-set size unknown (pass --unique-pairs to check for repeated data)" if c.epochs is None
            else f", {c.epochs:.2g} epoch(s) of {p.unique_pairs:,} unique pairs")
    if c.effective_tokens is not None:
        data += f" (loss predicted at {c.effective_tokens:.3g} effective tokens)"
    return f"{lr}, batch size {p.batch_size}{data}"


def _describe(c: Candidate, p: Plan) -> str:
    interval = "" if c.loss_low is None else f" [{c.loss_low:.4g}, {c.loss_high:.4g}] (mean law)"
    if c.run_low is not None:
        interval += f", one run [{c.run_low:.4g}, {c.run_high:.4g}]"
    prob = "" if c.p_optimal is None else f", E[loss] {c.expected_loss:.4g}, P(optimal) = {c.p_optimal:.2f}"
    return (f"{c.variant} on {c.model} — {c.tokens:.3g} tokens = {c.steps} steps of {p.batch_size} pairs; "
            f"predicted loss {c.loss:.4g}{interval}{prob}{_unit_text(p, c, describe=True)}")


def _header(p: Plan) -> str:
    card = f"law card: {p.provenance or 'unlabelled'}"
    u = p.units
    if u.get("hours") is not None:
        budgets = [c.budget for c in p.candidates]
        span = f"{min(budgets):.3g}" if min(budgets) == max(budgets) else f"{min(budgets):.3g}..{max(budgets):.3g}"
        head = (f"Budget {u['hours']:g} device-hours = {span} model FLOPs "
                f"(each option at its measured throughput; {u.get('throughput', '')}) — {card}")
    else:
        head = f"Budget {p.budget:.3g} model FLOPs — {card}"
    if u.get("embed_tokens"):
        head += (f"\nServing: embedding {u['embed_tokens']:.3g} tokens afterwards costs 2 x N x tokens; "
                 "each option trains on the budget left after it")
    if u.get("device_memory_gib"):
        head += (f"\nMemory: {u['device_memory_gib']:g} GiB device, batch {p.batch_size} x "
                 f"{u['seq_len']} tokens, {u['precision']} activations (GradCache mini-batch sized to fit)")
    return head


@dataclass(frozen=True)
class _Unit:
    """One unit a plan can be in (Plan.units): what it adds to the table header, an option's row, and the
    sentence describing an option."""

    active: Callable[[Mapping[str, Any]], bool]
    head: str
    cells: Callable[[Candidate], str]
    describe: Callable[[Candidate, Mapping[str, Any]], str]


_UNITS = (
    _Unit(lambda u: u.get("hours") is not None, f" {'FLOPs':>9} {'FLOP/s':>9}",
          lambda c: f" {c.budget:>9.3g} {c.flops_per_s:>9.3g}",
          lambda c, u: f"; {c.budget:.3g} FLOPs in {u['hours']:g} h at {c.flops_per_s:.3g} model FLOP/s"),
    _Unit(lambda u: bool(u.get("embed_tokens")), f" {'serve':>9}",
          lambda c: f" {c.serving_flops:>9.3g}",
          lambda c, u: f"; training {c.budget:.3g} FLOPs + serving {c.serving_flops:.3g}"),
    _Unit(lambda u: bool(u.get("device_memory_gib")), f" {'GiB':>6} {'mini':>5}",
          lambda c: f" {c.memory_gib:>6.3g} {c.mini_batch or '-':>5}",
          lambda c, u: f"; ~{c.memory_gib:.3g} GiB with "
                       + (f"GradCache mini-batch {c.mini_batch}" if c.mini_batch else "no GradCache")),
)


def _unit_text(p: Plan, c: Candidate | None = None, *, describe: bool = False) -> str:
    """What the plan's units add to a line: the table header (no ``c``), ``c``'s row, or its description."""
    units = [unit for unit in _UNITS if unit.active(p.units)]
    if c is None:
        return "".join(unit.head for unit in units)
    if describe:
        return "".join(unit.describe(c, p.units) for unit in units)
    return "".join(unit.cells(c) for unit in units)


def table_markdown(table: RecipeTable) -> str:
    """The recipe table across budgets, as markdown: one row per budget."""
    level = f"{table.plans[0].level:.0%}" if table.plans else "90%"
    lines = [f"| budget (FLOPs) | model | method | tokens | steps | predicted loss [{level} mean law] | P(opt) | "
             "runner-up | warnings |",
             "|---:|---|---|---:|---:|---|---:|---|---:|"]
    for r in table.rows():
        interval = "" if r["loss_low"] is None else f" [{r['loss_low']:.4g}, {r['loss_high']:.4g}]"
        p = "" if r["p_optimal"] is None else f"{r['p_optimal']:.2f}"
        lines.append(
            f"| {r['budget']:.3g} | {r['model']} | {r['variant']} | {r['tokens']:.3g} | {r['steps']} | "
            f"{r['loss']:.4g}{interval} | {p} | {r['runner_up'] or ''} | {r['warnings']} |"
        )
    return "\n".join(lines)


def format_table(table: RecipeTable) -> str:
    """The markdown table, then one line per crossover."""
    out = [table_markdown(table)]
    for c in table.crossovers():
        out.append(f"crossover: {c['from']} → {c['to']} between {c['between'][0]:.3g} and "
                   f"{c['between'][1]:.3g} FLOPs")
    return "\n".join(out)
