"""`embrecipe run` as a Python API (embrecipe.pipeline.run): the same plan → train → record → evaluate bridge
the CLI drives, called as from a notebook. Cheap: the SYNTHETIC trainer on a toy model named in a hand-made card."""

from __future__ import annotations

import json

import pytest

from embrecipe.cli import main
from embrecipe.errors import EmbrecipeError
from embrecipe.laws import LawSet, ScalingLaw
from embrecipe.sweep.synthetic import toy_shape


def _laws() -> LawSet:
    law = ScalingLaw()
    law.params_ = {"E": 0.5, "A": 10.0, "alpha": 0.3, "B": 100.0, "beta": 0.4}
    return LawSet(laws={"full": law}, methods={"full": {"name": "full"}},
                  family=[{"name": "m2", "path": "toy-h32-l2", "shape": toy_shape(32, 2).to_dict()}],
                  tokens_per_pair=40.0, batch_size=8, provenance="hand-made test card")


def _pairs(tmp_path, n: int = 200) -> str:
    from embrecipe.testing import tiny_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(n)))
    return str(data)


def test_run_recipe_from_python_trains_records_and_returns_the_outcome(tmp_path):
    from embrecipe import RecipeRun, RunStore, run_recipe

    out, store = tmp_path / "out", tmp_path / "runs.sqlite"
    lines: list[str] = []
    req = RecipeRun(budget=3e8, data=_pairs(tmp_path), out=out, laws=_laws(), store=store, val_fraction=0.1,
                    seed=3, train_fn="synthetic")
    outcome = run_recipe(req, log=lines.append)

    best = outcome.plan.best
    assert best.path == "toy-h32-l2" and outcome.plan.budget == 3e8
    assert outcome.plan.unique_pairs == 180  # 200 pairs less the 10 % held out, measured on the data
    assert outcome.config == {"model": "toy-h32-l2", "data": req.data, "method": best.method,
                              "budget": best.budget, "batch_size": 8, "seed": 3, "out": str(out),
                              "val_fraction": 0.1}
    rec = outcome.record
    assert rec is not None and rec.completed and rec.synthetic
    assert rec.model == "toy-h32-l2" and rec.budget == 3e8 and 0 < float(rec.model_flops) <= 3e8
    assert outcome.evaluation is None and outcome.hub_url is None  # synthetic runs are not evaluated or pushed
    # plan.json beside the run, the run in the store under the key returned, the CLI's lines through `log`
    assert json.loads((out / "plan.json").read_text()) == json.loads(json.dumps(outcome.plan.to_dict()))
    assert [r.model for r in RunStore(store).records()] == ["toy-h32-l2"]
    assert RunStore(store).get(outcome.store_key) is not None
    assert f"recorded run {outcome.store_key} in {store}" in lines
    config_line = next(line for line in lines if line.startswith("training config: "))
    assert json.loads(config_line.removeprefix("training config: ")) == outcome.config
    assert any(line.lstrip().startswith("trained full on") for line in lines)


def test_dry_run_writes_nothing_and_plan_recipe_is_the_plan_the_cli_prints(tmp_path, capsys):
    from embrecipe import RecipeRun, plan_recipe, run_recipe

    card = str(_laws().save(tmp_path / "card.json"))
    out, store = tmp_path / "out", tmp_path / "runs.sqlite"
    req = RecipeRun(budget="3e8", data=_pairs(tmp_path), out=out, laws=card, store=store, lr=1e-4,
                    train_fn="synthetic", dry_run=True)
    before = sorted(tmp_path.iterdir())
    outcome = run_recipe(req, log=lambda line: None)
    assert outcome.record is None and outcome.store_key is None and outcome.evaluation is None
    assert sorted(tmp_path.iterdir()) == before and not out.exists() and not store.exists()

    plan, config = plan_recipe(req)
    assert config == outcome.config and config["lr"] == 1e-4
    assert plan.to_dict() == outcome.plan.to_dict()
    # `embrecipe run --dry-run` prints the same config: the CLI is a thin layer over this call
    assert main(["run", "--budget", "3e8", "--laws", card, "--data", req.data, "--out", str(out),
                 "--lr", "1e-4", "--dry-run"]) == 0
    printed = capsys.readouterr().out.split("training config: ", 1)[1].splitlines()[0]
    assert json.loads(printed) == config and not out.exists()


def test_run_recipe_takes_a_callable_trainer_and_family_members(tmp_path):
    from embrecipe.models.family import FamilyMember
    from embrecipe.pipeline.run import RecipeRun, run_recipe
    from embrecipe.sweep.synthetic import synthetic_train

    calls = []

    def train(config):
        calls.append(config)
        return synthetic_train(config)

    members = [FamilyMember(name="m2", path="toy-h32-l2", shape=toy_shape(32, 2))]
    outcome = run_recipe(RecipeRun(budget=3e8, data=_pairs(tmp_path), out=tmp_path / "out", laws=_laws(),
                                   family=members, eval_tasks=None, train_fn=train), log=lambda line: None)
    assert len(calls) == 1 and calls[0]["resume"] is False and calls[0]["overwrite"] is False
    assert outcome.record is not None and outcome.record.model == "toy-h32-l2"


@pytest.mark.parametrize("change, message", [
    ({"budget": "1e8,1e9"}, "--budget takes one number"),
    ({"budget": float("nan")}, "must be a positive number of FLOPs"),
    ({"data": "missing.jsonl"}, "does not exist"),
    ({"resume": True, "overwrite": True}, "exclude each other"),
    ({"push_to_hub": "a/b/c"}, "expected a repository id"),
])
def test_bad_requests_are_one_line_errors_before_anything_is_written(tmp_path, change, message):
    from dataclasses import replace

    from embrecipe.pipeline.run import RecipeRun, run_recipe

    req = replace(RecipeRun(budget=3e8, data=_pairs(tmp_path), out=tmp_path / "out", laws=_laws(),
                            train_fn="synthetic"), **change)
    with pytest.raises(EmbrecipeError, match=message):
        run_recipe(req, log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_the_package_exports_the_functions_not_the_module():
    """``embrecipe.run_recipe`` stays the function once its module is imported (a submodule named like the
    function would replace it on the package)."""
    import embrecipe
    import embrecipe.pipeline.run as module

    assert embrecipe.run_recipe is module.run_recipe and callable(embrecipe.run_recipe)
    assert embrecipe.RecipeRun is module.RecipeRun and embrecipe.plan_recipe is module.plan_recipe
    assert "run_recipe" in embrecipe.__all__ and "RecipeRun" in embrecipe.__all__
