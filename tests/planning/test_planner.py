"""The planner on synthetic laws: known optimum, crossover, uncertainty, warnings, errors (no torch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embrecipe.errors import BudgetError, InputError
from embrecipe.flops import ModelShape
from embrecipe.laws import LawSet, ScalingLaw, fit_laws
from embrecipe.models.family import Family, FamilyMember
from embrecipe.models.methods import flops_per_token
from embrecipe.planning.planner import load_laws, parse_budgets, plan, plan_many
from embrecipe.sweep.synthetic import synthetic_train, toy_shape, true_loss, variant_params

MODELS = ("toy-h64-l2", "toy-h128-l4", "toy-h256-l6", "toy-h512-l8")
METHODS = {"full": {"name": "full"}, "lora-r8": {"name": "lora", "rank": 8}}


def family():
    return [FamilyMember(name=m, path=m, shape=toy_shape(int(m.split("-")[1][1:]), int(m.split("-")[2][1:])))
            for m in MODELS]


def true_laws(with_samples: bool = False) -> LawSet:
    laws = {}
    for v, meth in METHODS.items():
        law = ScalingLaw()
        law.params_ = dict(zip(("E", "A", "alpha", "B", "beta"), variant_params(meth), strict=True))
        if with_samples:  # a tight cloud around the truth
            rng = np.random.default_rng(0)
            base = np.array(variant_params(meth))
            law.samples_ = base * np.exp(rng.normal(0, 0.002, (100, 5)))
        laws[v] = law
    return LawSet(laws=laws, methods=dict(METHODS), family=[m.to_dict() for m in family()],
                  tokens_per_pair=60.0, batch_size=32)


def brute_force(budget: float):
    """Independent optimum: the FLOP formulas written out by hand, the true synthetic law."""
    best = None
    for m in family():
        n = m.shape.non_embedding_params
        for v, meth in METHODS.items():
            if meth["name"] == "full":
                cost = flops_per_token("full", n, n)
            else:
                n_t = 8 * sum(m.shape.linear_in_out.values())
                cost = 4 * n + 2 * n_t
            loss = true_loss(meth, n, budget / cost)
            if best is None or loss < best[0]:
                best = (loss, m.name, v)
    return best


@pytest.mark.parametrize("budget", [1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18])
def test_planner_picks_the_known_optimum(budget):
    p = plan(budget, true_laws())
    loss, model, variant = brute_force(budget)
    assert (p.best.model, p.best.variant) == (model, variant)
    assert p.best.loss == pytest.approx(loss, rel=1e-9)
    assert [c.loss for c in p.candidates] == sorted(c.loss for c in p.candidates)


def test_crossover_between_full_and_lora():
    budgets = [10 ** e for e in np.arange(12, 19, 0.5)]
    table = plan_many(budgets, true_laws())
    winners = [p.best.variant for p in table.plans]
    expected = [brute_force(b)[2] for b in budgets]
    assert winners == expected
    # Full fine-tuning wins the small budgets, LoRA the large ones, with exactly one switch.
    assert winners[0] == "full" and winners[-1] == "lora-r8"
    assert len(table.crossovers()) == 1 and table.crossovers()[0]["from"] == "full"
    md = table.to_markdown()
    assert md.count("\n") == len(budgets) + 1 and "lora-r8" in md


def test_planner_finds_optimum_from_fitted_synthetic_runs():
    recs = [synthetic_train({"model": m, "method": meth, "budget": b, "batch_size": 32, "seed": 0})
            for m in MODELS for meth in METHODS.values() for b in (1e13, 4e13, 1.6e14, 6.4e14, 2.56e15)]
    laws = fit_laws(recs, bootstrap=50)
    for budget in (2e13, 3e14, 2e15):  # inside the fitted range
        p = plan(budget, laws)
        _, model, variant = brute_force(budget)
        assert (p.best.model, p.best.variant) == (model, variant), budget
        assert p.best.p_optimal > 0.5
        assert p.best.loss_low <= p.best.loss <= p.best.loss_high
        assert not p.warnings


def test_probabilities_and_steps():
    p = plan(1e15, true_laws(with_samples=True))
    probs = [c.p_optimal for c in p.candidates]
    assert sum(probs) == pytest.approx(1.0)
    assert p.best.p_optimal > 0.9  # tight samples: the optimum is clear
    c = p.best
    assert c.steps == math.floor(c.tokens / 60.0 / 32)
    assert c.tokens * c.flops_per_token == pytest.approx(1e15)
    json.dumps(p.to_dict())  # --json must serialise
    text = p.format()
    assert "Optimum:" in text and "Runner-up:" in text


def test_extrapolation_warnings():
    laws = true_laws()
    for v in laws.variants:
        laws.ranges[v] = {"N": [1e5, 5e6], "D": [1e6, 1e9], "C": [1e13, 1e15]}
    p = plan(1e18, laws)
    assert any("C (" in w and "above the largest fitted" in w for w in p.warnings)
    assert any("N (" in w for w in p.warnings)  # the chosen 25M model is above the fitted 5M
    inside = plan(1e14, laws, family=[m for m in family() if m.shape.non_embedding_params < 5e6])
    assert not any("extrapolating" in w for w in inside.warnings)


def test_budget_errors():
    with pytest.raises(BudgetError):
        plan(-1.0, true_laws())
    with pytest.raises(BudgetError, match="fewer than 1 step"):
        plan(1e6, true_laws())
    with pytest.raises(InputError, match="no law for variant"):
        plan(1e15, true_laws(), variants=["bias"])
    assert parse_budgets("1e15, 4e15") == [1e15, 4e15]
    with pytest.raises(InputError, match="not a number"):
        parse_budgets("1e15,lots")
    with pytest.raises(BudgetError):
        parse_budgets("0")


def test_unaffordable_methods_are_skipped_with_a_note():
    shape = ModelShape(name="nobias", embedding_params=100, block_params=(10**6,) * 2, final_norm_params=0,
                       bias_params=0, linear_in_out={"fc": 1000})
    laws = true_laws()
    law = laws.laws["full"]
    laws.laws["bias"] = law
    laws.methods["bias"] = {"name": "bias"}
    p = plan(1e15, laws, family=[FamilyMember("nobias", "nobias", shape)])
    assert any("bias on nobias" in s for s in p.skipped)


def test_family_file_and_law_sources(tmp_path, monkeypatch):
    fam = {"name": "toys", "members": [m.to_dict() for m in family()]}
    (tmp_path / "fam.json").write_text(json.dumps(fam))
    members = Family.load(tmp_path / "fam.json").members
    assert [m.name for m in members] == list(MODELS)
    (tmp_path / "bad.json").write_text(json.dumps({"members": [{"name": "x"}]}))
    with pytest.raises(InputError, match="members"):
        Family.load(tmp_path / "bad.json")
    import embrecipe.planning.planner as plan_module

    packaged = load_laws(None)  # the study's card ships with the package
    assert packaged.family and "smollm2" in packaged.provenance
    monkeypatch.setattr(plan_module, "default_card_path", lambda: tmp_path / "none.json")
    with pytest.raises(InputError, match="no default law card"):
        load_laws(None)
    laws = true_laws(with_samples=True)
    laws.save(tmp_path / "card.json")
    assert load_laws(tmp_path / "card.json").variants == laws.variants
    # A family that differs from the card's is flagged.
    other = [FamilyMember("x", "x", toy_shape(96, 3))]
    assert any("family differs" in w for w in plan(1e15, laws, other).warnings)
    no_family = LawSet(laws=laws.laws, methods=laws.methods)
    with pytest.raises(InputError, match="--family"):
        plan(1e15, no_family)


def test_plan_gives_a_single_run_interval_around_the_mean_law_interval():
    laws = true_laws(with_samples=True)
    assert plan(1e15, laws).best.run_low is None  # no noise term: no single-run interval is invented
    for v in laws.variants:
        laws[v].noise_ = {"sigma": 0.02, "dof": 10, "source": "test seeds", "measured": True}
    p = plan(1e15, laws)
    for c in p.candidates:
        assert c.run_low < c.loss_low <= c.loss <= c.loss_high < c.run_high
        # ±1.81 sigma of t(10) at 90 %: the run interval is at least ~7 % wide whatever the mean-law width.
        assert (c.run_high - c.run_low) / c.loss > 0.06
    text = p.format()
    assert "mean law 90%" in text and "one run 90%" in text and "from test seeds" in text
    assert "run_low/run_high" in p.to_dict()["intervals"]


def test_plan_counts_steps_with_the_trainers_arithmetic():
    # A budget that is exactly the cost of 3 steps of 32 pairs: the planner counts steps with the trainer's
    # flops.steps_for_budget, so it names the 3 steps the trainer will run (the old floor(D / tpp / batch)
    # rounded this one down to 2).
    from embrecipe.flops import steps_for_budget
    from embrecipe.models.methods import method_from_dict

    shape = {"name": "toy", "embedding_params": 1000, "block_params": [10**6] * 4, "final_norm_params": 0,
             "bias_params": 1000}
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 400.0, "alpha": 0.35, "B": 200.0, "beta": 0.3}
    laws = LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
                  family=[{"name": "toy", "path": "toy", "shape": shape}], tokens_per_pair=49.7)
    cost = method_from_dict({"name": "full"}).flops_per_token(ModelShape.from_dict(shape))
    budget = 3 * (cost * (49.7 * 32))
    best = plan(budget, laws, batch_size=32).best
    assert best.steps == steps_for_budget(budget, cost, 49.7 * 32) == 3


def test_every_candidate_carries_its_own_training_budget():
    """Candidate.budget is set in every mode (it was None without --hours/--embed-tokens), so no caller falls
    back to the plan's budget; with serving it is what is left for training."""
    p = plan(1e15, true_laws(), family())
    assert all(c.budget == 1e15 for c in p.candidates)
    served = plan(1e15, true_laws(), family(), embed_tokens=1e5)
    assert all(c.budget == pytest.approx(1e15 - c.serving_flops) for c in served.candidates)


def test_without_notes_are_the_same_request_with_one_field_cleared(monkeypatch):
    """The 'what would change without X' notes rank the request with X cleared, nothing else changed: one
    extra ranking per note, no notes of their own (the planner used to unpack 16 arguments and call itself,
    recursively: 5 plans for one with serving and a memory limit)."""
    import dataclasses

    from embrecipe.planning import planner as plan_module

    seen = []
    real = plan_module._resolve

    def spy(req, laws, fam=None):
        seen.append(req)
        return real(req, laws, fam)

    monkeypatch.setattr(plan_module, "_resolve", spy)
    req = plan_module.PlanRequest(1e15, embed_tokens=1e5, device_memory_gib=80.0, batch_size=32)
    p = plan_module.plan_request(req, true_laws(), family())
    assert seen == [req, dataclasses.replace(req, embed_tokens=None), dataclasses.replace(req, device_memory_gib=None)]
    assert any("the serving cost" in n for n in p.notes) and any("the memory limit" in n for n in p.notes)


def test_the_optimum_is_the_least_expected_loss_and_a_likelier_rival_is_explained():
    """One rule picks the optimum: the least mean loss over the bootstrap draws. Variant a's point fit is the
    lowest and it wins 60 % of the draws, but loses by a lot in the rest; b has the lower expected loss, so b is
    the optimum (the point fit ranked a first) and a note says why a's higher P(optimal) does not make it so."""
    rest = [400.0, 0.35, 200.0, 0.3]
    a, b = ScalingLaw(), ScalingLaw()
    a.params_ = dict(zip(("E", "A", "alpha", "B", "beta"), [0.50, *rest], strict=True))
    b.params_ = dict(zip(("E", "A", "alpha", "B", "beta"), [0.52, *rest], strict=True))
    a.samples_ = np.array([[0.49, *rest]] * 60 + [[0.70, *rest]] * 40)
    b.samples_ = np.array([[0.52, *rest]] * 100)
    laws = LawSet(laws={"a": a, "b": b}, methods={"a": {"name": "full"}, "b": {"name": "full"}},
                  family=[m.to_dict() for m in family()[:1]], tokens_per_pair=60.0, batch_size=32)
    p = plan(1e14, laws)
    assert p.best.variant == "b" and p.best.expected_loss < p.candidates[1].expected_loss
    assert p.best.p_optimal == pytest.approx(0.4) and p.candidates[1].p_optimal == pytest.approx(0.6)
    assert any("a on toy-h64-l2 is lowest in more of the 100 draws" in n for n in p.notes)
    assert "ranked by the expected loss" in p.format()
