r"""The planner — the algorithm: a compute budget → the compute-optimal fine-tuning recipe.

For a budget :math:`C` (model FLOPs, :mod:`embrecipe.flops` convention), a fitted
:class:`~embrecipe.laws.LawSet` and a model family (the real checkpoints one can train), every option
:math:`(m, v)` — family member :math:`m` with shape :math:`s_m`, fitted variant :math:`v` (method +
hyper-parameters) — is costed and scored:

.. math::

    N = N(s_m),\quad N_t = N_t(v, s_m),\quad
    D = \frac{C}{\mathrm{cost}_v(N, N_t)},\quad
    \hat L = E_v + \frac{A_v}{N^{\alpha_v}} + \frac{B_v}{D^{\beta_v}}

and the options are ranked by :math:`\hat L`. Uncertainty comes from the laws' bootstrap samples: sample
:math:`b` of every variant gives one predicted loss per option; the percentile interval of those is the
loss interval, and the share of samples in which an option has the lowest loss is its probability of being
optimal. Steps are ``floor(D / (batch_size * tokens_per_pair))`` where ``tokens_per_pair`` is the measured
mean number of (non-padding) tokens per training pair, query and positive together: the trainer's own
arithmetic (:func:`embrecipe.flops.steps_for_budget`), so a plan names the steps the trainer will run.

Everything here is pure: no torch, no model loading. A family is read from a JSON/YAML family file
(``{"name": ..., "members": [{"name", "path", "shape": ModelShape.to_dict()}]}``) or from the law card,
which records the shapes of the models its runs used.

Example::

    >>> from embrecipe.laws import LawSet, ScalingLaw
    >>> law = ScalingLaw(); law.params_ = {"E": 0.5, "A": 400.0, "alpha": 0.35, "B": 200.0, "beta": 0.3}
    >>> shape = {"name": "toy", "embedding_params": 1000, "block_params": [10**6] * 4,
    ...          "final_norm_params": 0, "bias_params": 1000}
    >>> laws = LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
    ...               family=[{"name": "toy", "path": "toy", "shape": shape}], tokens_per_pair=78)
    >>> p = plan(1e15, laws, batch_size=64)
    >>> p.best.model, p.best.variant, p.best.steps
    ('toy', 'full', 8346)
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embrecipe.errors import BudgetError, EmbrecipeError, InputError
from embrecipe.flops import ModelShape, check_budget, is_budget, steps_for_budget, tokens_for_budget
from embrecipe.laws import LawSet, fit_laws
from embrecipe.laws.noise import with_run_noise
from embrecipe.models.family import FamilyMember, family_fingerprint
from embrecipe.models.methods import MethodConfig, method_from_dict
from embrecipe.models.refs import shape_key
from embrecipe.planning.formatting import format_plan, format_table, table_markdown
from embrecipe.planning.units import (
    DEFAULT_OVERHEAD_BYTES,
    GIB,
    ThroughputTable,
    auto_mini_batch,
    hours_to_flops,
    serving_flops,
    training_memory,
)
from embrecipe.resources import resource_path

# The study's assumption when the real mean is unknown; used only with a warning.
ASSUMED_TOKENS_PER_PAIR = 78.0
DEFAULT_BATCH_SIZE = 1024
INTERVALS_NOTE = ("loss_low/loss_high: interval of the mean law (loss averaged over seeds; bootstrap over runs); "
                  "run_low/run_high: prediction interval for one training run (mean-law bootstrap + run-to-run "
                  "noise); p_optimal: share of the same bootstrap draws, joint across options, in which the "
                  "option's mean loss is lowest")


# ------------------------------------------------------------------------------------------------------
# The family from a law card (a family file is read by embrecipe.models.family.Family.load)
# ------------------------------------------------------------------------------------------------------
def family_from_laws(laws: LawSet) -> list[FamilyMember]:
    """The models the card's runs used, smallest first (each entry ``{"name", "path", "shape"}``)."""
    if not laws.family:
        raise InputError(
            "the law card records no model shapes; pass --family FILE (a family file with ModelShapes)"
        )
    members = []
    for i, m in enumerate(laws.family):
        if not isinstance(m, Mapping) or "shape" not in m:
            raise InputError(f"law card: member {i} has no 'shape' (a ModelShape dict)")
        try:
            shape = ModelShape.from_dict(m["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"law card: member {i} has a malformed shape ({exc})") from None
        name = str(m.get("name") or shape.name)
        members.append(FamilyMember(name=name, path=str(m.get("path") or name), shape=shape))
    return sorted(members, key=lambda m: m.shape.non_embedding_params)


# ------------------------------------------------------------------------------------------------------
# Law sources
# ------------------------------------------------------------------------------------------------------
def default_card_path() -> Path:
    """The law card that ships with the package: the testbed study's fit (``docs/study.md``)."""
    return resource_path("laws", "default.json")


def load_laws(source: str | os.PathLike[str] | None, *, bootstrap: int = 200, seed: int = 0) -> LawSet:
    """A law card file, or a run store (fitted on the fly), or the packaged default card."""
    from embrecipe.runs.store import RunStore, is_store_path

    if source is None:
        card = default_card_path()
        if not card.is_file():
            raise InputError(
                f"no default law card at {card} (the package ships one: reinstall embrecipe); "
                "pass --laws FILE (a card written by `embrecipe fit`) or --laws STORE (a run store)"
            )
        return LawSet.load(card)
    if is_store_path(source):
        with RunStore(source) as store:
            records = store.records()
        return fit_laws(records, bootstrap=bootstrap, seed=seed, provenance=f"fitted from store {source}")
    return LawSet.load(source)


# ------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One (model, variant) option at a budget, costed and scored."""

    model: str
    path: str
    variant: str
    method: dict[str, Any]
    n_params: int
    n_trainable: int
    flops_per_token: int
    tokens: float
    pairs: float
    steps: int
    loss: float
    # this option's own training budget: the plan's, or with --hours its FLOPs in that time, less serving with
    # --embed-tokens (so it differs per option then); always set, callers need no fallback to the plan's
    budget: float
    # the mean of the mean-law loss over the bootstrap draws (the point prediction ``loss`` without draws):
    # the options are ranked by it, the choice that minimises the expected loss
    expected_loss: float
    loss_low: float | None = None
    loss_high: float | None = None
    p_optimal: float | None = None
    # loss_low/high: interval of the MEAN law (the seed-averaged loss); run_low/high: prediction interval
    # for ONE training run (mean-law bootstrap combined with the run-to-run noise term).
    run_low: float | None = None
    run_high: float | None = None
    feasible: bool = True
    rank: int = 0
    warnings: list[str] = field(default_factory=list)
    # Plans in the user's units (embrecipe.planning.units), None where that unit was not asked: the option's measured
    # throughput, the serving cost taken out of the budget, and the estimated memory at the GradCache
    # mini-batch chosen to fit the device.
    flops_per_s: float | None = None
    serving_flops: float | None = None
    memory_gib: float | None = None
    mini_batch: int | None = None
    lr: float | None = None  # the LR the card's law was fitted at for this (variant, size)
    lr_note: str = ""
    epochs: float | None = None  # passes over the unique training pairs
    effective_tokens: float | None = None  # D' (Muennighoff et al.) the loss was predicted at, when < tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    budget: float
    batch_size: int
    tokens_per_pair: float
    level: float
    n_bootstrap: int
    candidates: list[Candidate]
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    provenance: str = ""
    units: dict[str, Any] = field(default_factory=dict)  # hours / device memory / embed tokens asked for
    notes: list[str] = field(default_factory=list)
    noise_label: str = ""
    unique_pairs: int | None = None

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def runner_up(self) -> Candidate | None:
        return self.candidates[1] if len(self.candidates) > 1 and self.candidates[1].feasible else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "batch_size": self.batch_size,
            "tokens_per_pair": self.tokens_per_pair,
            "unique_pairs": self.unique_pairs,
            "interval_level": self.level,
            "intervals": INTERVALS_NOTE,
            "n_bootstrap": self.n_bootstrap,
            "provenance": self.provenance,
            "best": self.best.to_dict(),
            "runner_up": None if self.runner_up is None else self.runner_up.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "warnings": list(self.warnings),
            "skipped": list(self.skipped),
            "units": dict(self.units),
            "notes": list(self.notes),
        }

    def format(self, top: int = 10) -> str:
        """Human-readable plan: the optimum, the runner-up, a ranked table and the warnings."""
        return format_plan(self, top)


@dataclass
class RecipeTable:
    """Plans across budgets: where the optimal method changes (the crossover)."""

    plans: list[Plan]

    def to_dict(self) -> dict[str, Any]:
        return {"plans": [p.to_dict() for p in self.plans], "crossovers": self.crossovers()}

    def crossovers(self) -> list[dict[str, Any]]:
        """Consecutive budgets between which the optimal variant changes."""
        out = []
        for a, b in itertools.pairwise(self.plans):
            if a.best.variant != b.best.variant:
                out.append({"between": [a.budget, b.budget], "from": a.best.variant, "to": b.best.variant})
        return out

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.plans:
            b, r = p.best, p.runner_up
            rows.append({
                "budget": p.budget, "model": b.model, "variant": b.variant, "tokens": b.tokens,
                "steps": b.steps, "loss": b.loss, "loss_low": b.loss_low, "loss_high": b.loss_high,
                "p_optimal": b.p_optimal, "runner_up": None if r is None else f"{r.variant} on {r.model}",
                "runner_up_loss": None if r is None else r.loss, "warnings": len(p.warnings),
            })
        return rows

    def to_markdown(self) -> str:
        return table_markdown(self)

    def format(self) -> str:
        """The markdown table, then one line per crossover."""
        return format_table(self)


# ------------------------------------------------------------------------------------------------------
# The algorithm
# ------------------------------------------------------------------------------------------------------
def _range_warning(what: str, value: float, lo_hi: Sequence[float] | None) -> str | None:
    if not lo_hi:
        return None
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if value > hi * (1 + 1e-9):
        return f"{what} = {value:.3g} is {value / hi:.3g}x above the largest fitted ({hi:.3g}): extrapolating"
    if value < lo * (1 - 1e-9):
        return f"{what} = {value:.3g} is {lo / value:.3g}x below the smallest fitted ({lo:.3g}): extrapolating"
    return None


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked: the budget and every option of :func:`plan` (see there), as one value.

    ``None`` means "the card's" for ``batch_size``, ``tokens_per_pair`` and ``unique_pairs``. The notes on what
    serving or the memory limit change are plans of the same request with that one field cleared
    (:func:`dataclasses.replace`), so nothing has to be unpacked and passed on by hand.
    """

    budget: float | None
    batch_size: int | None = None
    tokens_per_pair: float | None = None
    level: float = 0.9
    variants: Sequence[str] | None = None
    min_steps: int = 1
    hours: float | None = None
    throughput: ThroughputTable | None = None
    embed_tokens: float | None = None
    device_memory_gib: float | None = None
    seq_len: int = 75
    precision: str = "bf16"
    memory_overhead_gib: float = DEFAULT_OVERHEAD_BYTES / GIB
    unique_pairs: int | None = None
    # the user's data (embrecipe plan/run --data): its fingerprint, compared with the card's, and why its tokens
    # per pair could not be measured (then the card's value is used, with a warning)
    data_fingerprint: str | None = None
    data_note: str | None = None


def plan(budget: float | None, laws: LawSet, family: Sequence[FamilyMember] | None = None,
         **options: Any) -> Plan:
    """Rank every (family member × fitted variant) at ``budget``; see the module docstring.

    ``options`` are the fields of :class:`PlanRequest`; this is ``plan_request(PlanRequest(budget, **options),
    laws, family)``.

    In the user's units (:mod:`embrecipe.planning.units`): ``hours`` (with ``throughput``, and ``budget=None``) gives
    every option its own FLOP budget, ``3600 * hours * measured FLOP/s`` of that variant and size, so the
    options compete at equal wall time. ``embed_tokens`` makes ``budget`` the total of training and serving:
    each option trains on ``budget - 2 * N * embed_tokens``. ``device_memory_gib`` drops the options whose
    estimated training memory at ``batch_size`` x ``seq_len`` does not fit, after trying GradCache
    mini-batches (the largest power of two that fits is recorded as ``Candidate.mini_batch``).

    ``batch_size`` must be the card's (the InfoNCE loss depends on the number of in-batch negatives) unless the
    card was fitted across several batch sizes. ``unique_pairs`` (default: the card's training-set size) makes
    the plan warn when it needs more than one epoch and predict at the effective data
    :func:`embrecipe.recipe.effective_tokens` then.

    Example (hours; ``laws`` as in the module docstring, one full fine-tuning run measured at 2e12 FLOP/s)::

        from embrecipe.planning.units import Measurement, ThroughputTable
        t = ThroughputTable([Measurement("full", "full", 4e6, 2e12)])
        plan(None, laws, hours=2.0, throughput=t).best.budget      # 3600 * 2 * 2e12 = 1.44e16
    """
    return plan_request(PlanRequest(budget, **options), laws, family)


def plan_request(req: PlanRequest, laws: LawSet, family: Sequence[FamilyMember] | None = None) -> Plan:
    """The plan for ``req``: resolve the card's defaults, cost every option, rank, then warn and note."""
    k, members, chosen, warnings = _resolve(req, laws, family)
    candidates, skipped, best = _ranked_options(k, members, chosen, laws)
    warnings.extend(_plan_warnings(best, members, laws, family, k))
    n_boot = min((len(s) for v in chosen if (s := laws[v].samples_) is not None), default=0)
    units, notes = _units_and_notes(best, laws, family, k)
    notes.extend(_rule_note(candidates, n_boot))
    return Plan(budget=_plan_budget(req.budget, best), batch_size=k.batch_size,
                tokens_per_pair=float(k.tokens_per_pair), level=req.level, n_bootstrap=n_boot,
                candidates=candidates, warnings=warnings, skipped=skipped, provenance=laws.provenance,
                units=units, notes=notes, noise_label=_noise_label(laws[best.variant].noise_),
                unique_pairs=k.unique_pairs)


def _best_option(req: PlanRequest, laws: LawSet, family: Sequence[FamilyMember] | None) -> Candidate:
    """The optimum of ``req`` alone (no warnings, no notes): what a "without X" note compares with."""
    k, members, chosen, _ = _resolve(req, laws, family)
    return _ranked_options(k, members, chosen, laws)[2]


def _ranked_options(k: _Costing, members: Sequence[FamilyMember], chosen: Sequence[str],
                    laws: LawSet) -> tuple[list[Candidate], list[str], Candidate]:
    """Every option costed and ranked (best first), the skipped ones as notes, and the best."""
    candidates, skipped = _cost_options(members, chosen, laws, k)
    _refuse_no_candidates(candidates, skipped, members, k)
    return candidates, skipped, _rank(candidates, laws, k)


# --- plan(), phase 1: inputs and defaults -------------------------------------------------------------
def _resolve(req: PlanRequest, laws: LawSet, family: Sequence[FamilyMember] | None
             ) -> tuple[_Costing, list[FamilyMember], list[str], list[str]]:
    """The request checked and its defaults taken from the card: the costing inputs, the family members,
    the chosen variants, and the warnings resolving them raised."""
    _check_budget_and_units(req)
    members = list(family) if family is not None else family_from_laws(laws)
    batch_size = _resolve_batch_size(req.batch_size, laws)
    tokens_per_pair, warnings = _resolve_tokens_per_pair(req.tokens_per_pair, laws, req.data_note)
    if tokens_per_pair <= 0 or batch_size <= 0:
        raise InputError("batch size and tokens per pair must be positive")
    chosen = _chosen_variants(req.variants, laws)
    if req.unique_pairs is not None and not (isinstance(req.unique_pairs, int) and req.unique_pairs > 0):
        raise InputError(f"unique pairs must be a positive integer, got {req.unique_pairs!r}")
    k = _Costing(req=req, batch_size=batch_size, tokens_per_pair=tokens_per_pair,
                 unique_pairs=req.unique_pairs or laws.unique_pairs)
    return k, members, chosen, warnings


def _check_budget_and_units(req: PlanRequest) -> None:
    """Refuse a malformed budget (FLOPs, or hours with a throughput table) and malformed unit options."""
    _check_budget(req.budget, req.hours, req.throughput, req.embed_tokens)
    embed_tokens, device_memory_gib = req.embed_tokens, req.device_memory_gib
    if embed_tokens is not None and not (math.isfinite(embed_tokens) and embed_tokens >= 0):
        raise InputError(f"tokens to embed must be a non-negative number, got {embed_tokens!r}")
    if device_memory_gib is not None and not (math.isfinite(device_memory_gib) and device_memory_gib > 0):
        raise InputError(f"device memory must be a positive number of GiB, got {device_memory_gib!r}")
    if req.precision not in ("bf16", "fp32"):
        raise InputError(f"precision must be bf16 or fp32, got {req.precision!r}")
    if not 0 < req.level < 1:
        raise InputError(f"interval level must be in (0, 1), got {req.level}")


def _check_budget(budget: float | None, hours: float | None, throughput: ThroughputTable | None,
                  embed_tokens: float | None) -> None:
    """A positive FLOP budget, or positive hours (not both) with a throughput table and no serving."""
    if hours is not None:
        if budget is not None:
            raise InputError("give a FLOP budget or hours, not both")
        if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
            raise BudgetError(f"hours must be a positive number, got {hours!r}")
        if throughput is None:
            raise InputError("a plan in hours needs measured throughput: --throughput-from STORE or "
                             "--throughput-row NAME")
        if embed_tokens:
            raise InputError("--embed-tokens with --hours is not supported: serving time would need a measured "
                             "inference throughput, which runs do not record; plan in FLOPs (--budget) instead")
    else:
        check_budget(budget)


def _resolve_batch_size(batch_size: int | None, laws: LawSet) -> int:
    """The asked batch size, else the card's, else the default; refused when it is not the card's one."""
    fitted_bs = sorted(set(laws.batch_sizes or ([laws.batch_size] if laws.batch_size else [])))
    if batch_size is not None and len(fitted_bs) == 1 and int(batch_size) != fitted_bs[0]:
        raise InputError(
            f"batch size {batch_size} differs from the {fitted_bs[0]} the law card was fitted at; the contrastive "
            "loss depends on the in-batch negatives, so the laws do not predict it -- plan at batch size "
            f"{fitted_bs[0]}, or sweep and fit across batch sizes")
    return int(batch_size or laws.batch_size or DEFAULT_BATCH_SIZE)


def _resolve_tokens_per_pair(tokens_per_pair: float | None, laws: LawSet,
                             data_note: str | None = None) -> tuple[float, list[str]]:
    """The asked (or measured) mean tokens per pair, else the card's measured one, else the study's assumption
    (warned); ``data_note`` says why the user's data could not be measured (warned too)."""
    if tokens_per_pair is not None:
        return tokens_per_pair, []
    if laws.tokens_per_pair is not None:
        if data_note:
            return laws.tokens_per_pair, [
                f"tokens per pair not measured on your data ({data_note}): planned at the card's "
                f"{laws.tokens_per_pair:.1f}; the trainer counts your real tokens, so its steps will differ "
                "(pass --tokens-per-pair)"]
        return laws.tokens_per_pair, []
    return ASSUMED_TOKENS_PER_PAIR, [
        f"tokens per pair unknown (not in the law card): assumed {ASSUMED_TOKENS_PER_PAIR:g} "
        "as in the study; pass --tokens-per-pair with your data's measured mean"]


def _chosen_variants(variants: Sequence[str] | None, laws: LawSet) -> list[str]:
    """The variants to consider (default: all the card's); an unknown one is refused by ``laws[v]``."""
    chosen = list(variants) if variants else laws.variants
    for v in chosen:
        laws[v]
    return chosen


@dataclass(frozen=True)
class _Costing:
    """The request with the card's defaults resolved: what costing one (model, variant) option needs."""

    req: PlanRequest
    batch_size: int
    tokens_per_pair: float
    unique_pairs: int | None

    @property
    def unique_tokens(self) -> float | None:
        return None if not self.unique_pairs else self.unique_pairs * float(self.tokens_per_pair)

    @property
    def activation_bytes(self) -> int:
        return 2 if self.req.precision == "bf16" else 4


# --- plan(), phase 2: cost and predict every option ---------------------------------------------------
class _Skipped(Exception):
    """An option that cannot be planned (the message names it and why); it is listed in ``Plan.skipped``."""


def _cost_options(members: Sequence[FamilyMember], chosen: Sequence[str], laws: LawSet,
                  k: _Costing) -> tuple[list[Candidate], list[str]]:
    """Every family member × chosen variant, costed and predicted; the options that cannot be, as notes."""
    sizes = {str(m.get(key)): float(m["shape"].get("non_embedding_params") or 0) for m in laws.family
             for key in ("path", "name") if isinstance(m.get("shape"), Mapping) and m.get(key)}
    # The card's names for each model content (shape key): a family member at another path or under another
    # name finds the LR its identical model was fitted at.
    aliases: dict[str, list[str]] = {}
    for entry in laws.family:
        if isinstance(entry.get("shape"), Mapping) and (key := shape_key(entry["shape"])):
            aliases.setdefault(key, []).extend(str(entry[k]) for k in ("path", "name") if entry.get(k))
    candidates: list[Candidate] = []
    skipped: list[str] = []
    for m in members:
        known_as = aliases.get(shape_key(m.shape.to_dict()) or "", [])
        for v in chosen:
            try:
                candidates.append(_cost_option(m, v, laws, k, sizes, known_as))
            except _Skipped as exc:
                skipped.append(str(exc))
    return candidates, skipped


def _cost_option(m: FamilyMember, v: str, laws: LawSet, k: _Costing, sizes: dict[str, float],
                 aliases: Sequence[str]) -> Candidate:
    """One option: its training budget (after hours and serving), memory fit, tokens, steps and loss."""
    method = method_from_dict(laws.methods[v])
    try:
        n_t = method.trainable_params(m.shape)
        cost = method.flops_per_token(m.shape)
    except EmbrecipeError as exc:
        raise _Skipped(f"{v} on {m.name}: {exc}") from None
    n = m.shape.non_embedding_params
    cand_budget, fps, unit_notes = _training_budget(v, method.name, n, k)
    cand_budget, serve = _after_serving(cand_budget, n, k, f"{v} on {m.name}")
    fit = _memory_fit(m, method, k, f"{v} on {m.name}")
    cand = _predict(m, v, laws, k, sizes, aliases, n_t=n_t, cost=cost, budget=cand_budget)
    cand.flops_per_s, cand.serving_flops = fps, serve
    if fit is not None:
        cand.mini_batch, cand.memory_gib = fit[0], fit[1]["total"] / GIB
    cand.warnings.extend(unit_notes)
    cand.warnings.extend(_option_warnings(cand, laws, k, cand_budget))
    return cand


def _training_budget(variant: str, method_name: str, n: int, k: _Costing) -> tuple[float, float | None, list[str]]:
    """The option's FLOP budget: the plan's, or with hours ``3600 * hours * its measured FLOP/s``; its
    FLOP/s (None without hours) and the throughput table's notes on how that was measured."""
    if k.req.hours is None:
        assert k.req.budget is not None  # a budget, or hours converted to one
        return k.req.budget, None, []
    assert k.req.throughput is not None  # refused in phase 1: hours need a throughput table
    fps, unit_notes = k.req.throughput.flops_per_s(variant, method_name, n)
    return hours_to_flops(k.req.hours, fps), fps, unit_notes


def _after_serving(budget: float, n: int, k: _Costing, option: str) -> tuple[float, float | None]:
    """The training budget left after serving ``embed_tokens`` (``2 N T`` FLOPs), and that serving cost."""
    if not k.req.embed_tokens:
        return budget, None
    serve = serving_flops(n, k.req.embed_tokens)
    if serve >= budget:
        raise _Skipped(f"{option}: serving {k.req.embed_tokens:.3g} tokens costs {serve:.3g} FLOPs, "
                       f"the whole budget {budget:.3g} or more")
    return budget - serve, serve


def _memory_fit(m: FamilyMember, method: MethodConfig, k: _Costing,
                option: str) -> tuple[int | None, dict[str, float]] | None:
    """With a device memory: the GradCache mini-batch that fits and its memory estimate (None without one)."""
    if k.req.device_memory_gib is None:
        return None
    fit = auto_mini_batch(m.shape, method, batch_size=k.batch_size, seq_len=k.req.seq_len,
                          memory_bytes=k.req.device_memory_gib * GIB, activation_bytes=k.activation_bytes,
                          overhead_bytes=k.req.memory_overhead_gib * GIB)
    if fit is None:
        need = training_memory(m.shape, method, batch_size=k.batch_size, seq_len=k.req.seq_len, mini_batch=1,
                               activation_bytes=k.activation_bytes,
                               overhead_bytes=k.req.memory_overhead_gib * GIB)["total"]
        raise _Skipped(f"{option}: does not fit in {k.req.device_memory_gib:g} GiB (needs "
                       f"~{need / GIB:.3g} GiB even with a GradCache mini-batch of 1)")
    return fit


def _predict(m: FamilyMember, v: str, laws: LawSet, k: _Costing, sizes: dict[str, float], aliases: Sequence[str],
             *, n_t: int, cost: int, budget: float) -> Candidate:
    r"""The option at its training budget: :math:`D = C / \mathrm{cost}`, the trainer's steps, the law's loss
    at the effective data (repeated pairs count less) and the LR the card's law was fitted at."""
    from embrecipe.recipe import effective_tokens, epochs, recipe_lr

    n = m.shape.non_embedding_params
    tokens = tokens_for_budget(budget, cost)
    pairs = tokens / k.tokens_per_pair
    # the trainer's own arithmetic (flops.steps_for_budget), so the plan names the steps it will run
    steps = steps_for_budget(budget, cost, k.tokens_per_pair * k.batch_size)
    d_eff = effective_tokens(tokens, k.unique_tokens)
    loss = float(laws[v].predict(n, d_eff))
    lr, lr_note = None, ""
    for name in (m.path, m.name, *aliases):  # the model itself, by any name the card knows it by
        if lr is None:
            lr, lr_note = recipe_lr(laws.recipe, v, name)
    if lr is None:
        lr, lr_note = recipe_lr(laws.recipe, v, m.name, n, sizes)
    return Candidate(model=m.name, path=m.path, variant=v, method=dict(laws.methods[v]), n_params=n,
                     n_trainable=n_t, flops_per_token=cost, tokens=tokens, pairs=pairs, steps=steps,
                     loss=loss, budget=budget, expected_loss=loss, feasible=steps >= k.req.min_steps, lr=lr,
                     lr_note=lr_note,
                     epochs=epochs(tokens, k.unique_tokens),
                     effective_tokens=d_eff if d_eff < tokens else None)


def _option_warnings(cand: Candidate, laws: LawSet, k: _Costing, budget: float) -> list[str]:
    """Repeated data (more than one epoch) and extrapolation beyond the fitted C, N and D ranges."""
    out = []
    if cand.epochs is not None and cand.epochs > 1:
        d_eff = cand.effective_tokens if cand.effective_tokens is not None else cand.tokens
        out.append(
            f"needs {cand.epochs:.2g} epochs of the {k.unique_pairs:,} unique training pairs (repeated data; "
            f"loss predicted at the effective {d_eff:.3g} of {cand.tokens:.3g} tokens, Muennighoff et al. 2023)")
    v = cand.variant
    rng = laws.ranges.get(v, {})
    for what, value, key in (("C", budget, "C"), ("N", cand.n_params, "N"), ("D", cand.tokens, "D")):
        w = _range_warning(f"{what} ({v})", value, rng.get(key))
        if w:
            out.append(w)
    return out


# --- plan(), phase 3: refuse, rank, and what the plan says besides the ranking -------------------------
def _refuse_no_candidates(candidates: list[Candidate], skipped: list[str], members: Sequence[FamilyMember],
                          k: _Costing) -> None:
    """No option left: say why (serving costs all of the budget, nothing fits in memory, or each reason)."""
    if candidates:
        return
    req = k.req
    if req.embed_tokens and all(": serving " in x for x in skipped):
        smallest = min(members, key=lambda m: m.shape.non_embedding_params)
        raise BudgetError(
            f"budget {req.budget:.3g} FLOPs cannot pay for embedding {req.embed_tokens:.3g} tokens with any model "
            f"(the smallest, {smallest.name}, needs "
            f"{serving_flops(smallest.shape.non_embedding_params, req.embed_tokens):.3g}"
            " for serving alone); raise --budget or lower --embed-tokens")
    if req.device_memory_gib is not None and all("does not fit" in x for x in skipped):
        raise BudgetError(f"no option fits in {req.device_memory_gib:g} GiB even with GradCache: " + skipped[0])
    raise InputError("no (model, variant) option can be costed: " + "; ".join(skipped))


def _rank(candidates: list[Candidate], laws: LawSet, k: _Costing) -> Candidate:
    """Intervals and P(optimal), then feasible options first by expected loss (the mean over the bootstrap draws,
    the point prediction without them); the best, refused if even it cannot afford ``min_steps``.

    One rule decides: the least expected loss. P(optimal), the share of draws in which an option is lowest, is
    reported beside it and can favour another option whose draws are more spread (it wins more often, by
    less, and loses by more); :func:`_rule_note` says so when that happens."""
    _attach_uncertainty(candidates, laws, k.req.level)
    candidates.sort(key=lambda c: (not c.feasible, c.expected_loss, c.loss))
    for i, c in enumerate(candidates, 1):
        c.rank = i
    best = candidates[0]
    if not best.feasible:
        raise BudgetError(
            f"budget {best.budget:.3g} FLOPs affords fewer than {k.req.min_steps} step(s) of "
            f"{k.batch_size} pairs with every option; raise the budget or lower the batch size"
        )
    return best


def _plan_warnings(best: Candidate, members: Sequence[FamilyMember], laws: LawSet,
                   family: Sequence[FamilyMember] | None, k: _Costing) -> list[str]:
    """The optimum's own warnings, data other than the card's, a family other than the card's, a throughput
    measured at another batch size, and the diagnostics of the optimum's law."""
    out = [f"optimum {best.variant} on {best.model}: {w}" for w in best.warnings]
    out.extend(_data_warning(k.req.data_fingerprint, laws.data_fingerprint))
    # both fingerprints hash the shapes without names (the content): the card's models named by another path match
    if laws.family_fingerprint and family is not None:
        if family_fingerprint(m.shape.to_dict() for m in members) != laws.family_fingerprint:
            out.append("the family differs from the one the laws were fitted on (family fingerprint)")
    if k.req.throughput is not None and k.req.hours is not None:
        if k.req.throughput.batch_sizes and k.batch_size not in k.req.throughput.batch_sizes:
            out.append(f"throughput was measured at batch size {', '.join(map(str, k.req.throughput.batch_sizes))}, "
                       f"the plan is at {k.batch_size}: FLOP/s depend on the batch size (measure at yours)")
    for w in (laws[best.variant].diagnostics_ or {}).get("warnings", []):
        out.append(f"law of {best.variant}: {w}")
    return out


def _data_warning(yours: str | None, card: str | None) -> list[str]:
    """One line when the plan is for other data than the card's laws were fitted on, and what that means."""
    if not yours or not card or yours in card.split(","):
        return []
    return [f"the laws were fitted on other data (card {card}, yours {yours}): the predicted losses are those of "
            "the card's data at these settings, not of yours (another data set sits at another loss level); the "
            "steps and epochs are your data's. To predict your loss, sweep and fit on your data"]


def _units_and_notes(best: Candidate, laws: LawSet, family: Sequence[FamilyMember] | None,
                     k: _Costing) -> tuple[dict[str, Any], list[str]]:
    """``Plan.units`` (what the plan was asked in) and the notes on it: one throughput for every option,
    and whether serving or the memory limit moves the optimum."""
    req = k.req
    units: dict[str, Any] = {}
    notes: list[str] = []
    if req.hours is not None:
        assert req.throughput is not None  # refused in phase 1: hours need a throughput table
        units.update(hours=float(req.hours), throughput=req.throughput.label)
        if req.throughput.single:
            notes.append("one benchmark row gives one throughput for every option: all get the same FLOP budget "
                         "(use --throughput-from STORE for per-method, per-size throughput)")
    if req.device_memory_gib is not None:
        units.update(device_memory_gib=float(req.device_memory_gib), seq_len=int(req.seq_len),
                     precision=req.precision)
    if req.embed_tokens:
        units.update(embed_tokens=float(req.embed_tokens))
        notes.extend(_shift_note("the serving cost", best, replace(req, embed_tokens=None), laws, family))
    if req.device_memory_gib is not None:
        notes.extend(_shift_note("the memory limit", best, replace(req, device_memory_gib=None), laws, family))
    return units, notes


def _rule_note(candidates: Sequence[Candidate], n_boot: int) -> list[str]:
    """When an option other than the optimum is lowest in more bootstrap draws: why the optimum is still the
    optimum (it has the least expected loss over the same draws)."""
    best = candidates[0]
    rival = max(candidates, key=lambda c: c.p_optimal or 0.0)
    if rival is best or best.p_optimal is None or rival.p_optimal is None or rival.p_optimal <= best.p_optimal:
        return []
    return [f"{rival.variant} on {rival.model} is lowest in more of the {n_boot} draws (P(optimal) "
            f"{rival.p_optimal:.2f} against {best.p_optimal:.2f}) but its expected loss over them is higher "
            f"({rival.expected_loss:.4g} against {best.expected_loss:.4g}): the optimum is the least expected loss"]


def _plan_budget(budget: float | None, best: Candidate) -> float:
    """The plan's budget: the one asked for; with hours the budget differs per option, so the optimum's."""
    if budget is not None:
        return float(budget)
    return best.budget


def _shift_note(what: str, best: Candidate, without: PlanRequest, laws: LawSet,
                family: Sequence[FamilyMember] | None) -> list[str]:
    """A note on whether ``what`` (the serving cost, the memory limit) moves the optimum: the plan is made
    again for the request ``without`` it and the two choices compared."""
    try:
        base = _best_option(without, laws, family)
    except EmbrecipeError:
        return []
    if (base.model, base.variant) == (best.model, best.variant):
        return [f"{what} does not change the choice ({best.variant} on {best.model})"]
    if best.n_params == base.n_params:
        where = "changes the method at the same model size"
    else:
        where = f"moves the optimum to a {'smaller' if best.n_params < base.n_params else 'larger'} model"
    return [f"{what} {where}: {best.variant} on {best.model} (N = {best.n_params:.3g}) instead of "
            f"{base.variant} on {base.model} (N = {base.n_params:.3g}) without it"]


def _noise_label(noise: Mapping[str, Any] | None) -> str:
    if not noise or noise.get("sigma") is None:
        return ""
    return f"sigma {100 * float(noise['sigma']):.2g}% of log-loss from {noise.get('source', '?')}"


def _attach_uncertainty(candidates: list[Candidate], laws: LawSet, level: float) -> None:
    """Intervals and P(optimal) from the bootstrap samples, paired across variants by sample index."""
    samples = [s for c in candidates if (s := laws[c.variant].samples_) is not None]
    if len(samples) < len(candidates):
        return
    n_boot = min(len(s) for s in samples)
    preds = np.empty((n_boot, len(candidates)))
    for j, c in enumerate(candidates):
        preds[:, j] = laws[c.variant].predict_samples(c.n_params, c.effective_tokens or c.tokens)[:n_boot]
    q = (1 - level) / 2
    lo, hi = np.quantile(preds, q, axis=0), np.quantile(preds, 1 - q, axis=0)
    for j, c in enumerate(candidates):
        noise = laws[c.variant].noise_
        if noise and noise.get("sigma") is not None:
            runs = with_run_noise(preds[:, j], noise)
            c.run_low, c.run_high = float(np.quantile(runs, q)), float(np.quantile(runs, 1 - q))
    # P(optimal) uses the mean-law draws (which option has the lowest expected loss), the same draws as the
    # intervals; draw b of every variant's bootstrap forms one joint draw of all options.
    feasible = np.array([c.feasible for c in candidates])
    masked = np.where(feasible[None, :], preds, np.inf)
    wins = np.bincount(np.argmin(masked, axis=1), minlength=len(candidates)) / n_boot
    mean = preds.mean(axis=0)
    for j, c in enumerate(candidates):
        c.loss_low, c.loss_high = float(lo[j]), float(hi[j])
        c.expected_loss = float(mean[j])
        c.p_optimal = float(wins[j]) if c.feasible else 0.0


def plan_many(budgets: Iterable[float], laws: LawSet, family: Sequence[FamilyMember] | None = None,
              **kwargs: Any) -> RecipeTable:
    """:func:`plan` at each budget (sorted): the recipe table across budgets."""
    budgets = sorted(float(b) for b in budgets)
    if not budgets:
        raise InputError("no budgets given")
    return RecipeTable([plan(b, laws, family, **kwargs) for b in budgets])


def parse_budgets(text: str) -> list[float]:
    """``"1e15,1e16,4e16"`` → floats (a clear error for anything else)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"budget {part!r} is not a number (write e.g. 1e17)") from None
        if not is_budget(value):
            raise BudgetError(f"budget {part!r} must be a positive number of FLOPs")
        out.append(value)
    if not out:
        raise InputError("no budgets given")
    return out
