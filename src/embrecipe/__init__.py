"""embrecipe: compute-optimal recipes for turning decoder language models into text-embedding models.

The pipeline, one subpackage per stage (each ``__init__`` is that stage's public face):
:mod:`~embrecipe.data` (pairs) → :mod:`~embrecipe.models` (family, methods, loading) → :mod:`~embrecipe.training`
(the trainer and its FLOP meter; the formulas in :mod:`~embrecipe.flops`) → :mod:`~embrecipe.runs` (records, store)
→ :mod:`~embrecipe.sweep` → :mod:`~embrecipe.laws` → :mod:`~embrecipe.planning` → :mod:`~embrecipe.evaluate` /
:mod:`~embrecipe.report`; :mod:`~embrecipe.pipeline` bridges them (``run_recipe`` is ``embrecipe run``: plan for
your data, train the optimum, record and evaluate it; the recipe check) and :mod:`~embrecipe.cli` is a thin shell
over all of it. The common names are importable from here::

    from embrecipe import TrainConfig, train, plan, fit_laws, RunStore, run_recipe
"""

from __future__ import annotations

from embrecipe._lazy import lazy_exports

__version__ = "0.1.0"

# Heavy modules (torch, transformers) load lazily so that `import embrecipe` and the pure-math stages stay fast.
_EXPORTS = {
    "TrainConfig": "training.config",
    "train": "training.trainer",
    "RunRecord": "runs.records",
    "RunConfig": "runs.records",
    "RunStore": "runs.store",
    "load_pairs": "data.pairs",
    "PairData": "data.pairs",
    "parse_method": "models.methods",
    "flops_per_token": "models.methods",
    "ModelShape": "flops",
    "fit_laws": "laws.fit",
    "LawSet": "laws.card",
    "PlanRequest": "planning.planner",
    "plan": "planning.planner",
    "run_sweep": "sweep.orchestration",
    "RecipeRun": "pipeline.run",
    "RecipeOutcome": "pipeline.run",
    "plan_recipe": "pipeline.run",
    "run_recipe": "pipeline.run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_EXPORTS]
