"""embrecipe: compute-optimal recipes for turning decoder language models into text-embedding models.

The pipeline, one module per stage: :mod:`~embrecipe.data` → :mod:`~embrecipe.family` /
:mod:`~embrecipe.methods` → :mod:`~embrecipe.trainer` (with the FLOP meter of :mod:`~embrecipe.flops`) →
:mod:`~embrecipe.store` → :mod:`~embrecipe.sweep` → :mod:`~embrecipe.laws` → :mod:`~embrecipe.plan` →
:mod:`~embrecipe.evaluate` / :mod:`~embrecipe.report`. :mod:`~embrecipe.pipeline_run` (``run_recipe``) is
``embrecipe run``: plan for your data, train the optimum, record and evaluate it.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Heavy modules (torch, transformers) load lazily so that `import embrecipe` and the pure-math stages stay fast.
_LAZY = {
    "TrainConfig": "train_config",
    "train": "trainer",
    "RunRecord": "records",
    "RunConfig": "records",
    "load_pairs": "data",
    "PairData": "data",
    "parse_method": "methods",
    "ModelShape": "flops",
    "flops_per_token": "methods",
    "fit_laws": "laws",
    "RunStore": "store",
    "RecipeRun": "pipeline_run",
    "RecipeOutcome": "pipeline_run",
    "plan_recipe": "pipeline_run",
    "run_recipe": "pipeline_run",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'embrecipe' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
