"""The bridges between stages: plan → train → evaluate (``embrecipe run``) and the recipe check.

- :mod:`~embrecipe.pipeline.run`: :class:`RecipeRun` → :func:`plan_recipe` / :func:`run_recipe`;
- :mod:`~embrecipe.pipeline.check`: train the plan and its rivals at a held-out budget; regret and coverage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.pipeline.check import (
        CheckedConfig,
        CheckReport,
        check_interval,
        recipe_check,
    )
    from embrecipe.pipeline.run import (
        DEFAULT_MAX_SEQ_LENGTH,
        RecipeOutcome,
        RecipeRun,
        plan_recipe,
        recipe_line,
        run_recipe,
    )

_EXPORTS = {
    **dict.fromkeys(['CheckReport', 'CheckedConfig', 'check_interval', 'recipe_check'], 'check'),
    **dict.fromkeys(['DEFAULT_MAX_SEQ_LENGTH', 'RecipeOutcome', 'RecipeRun', 'plan_recipe', 'recipe_line', 'run_recipe'], 'run'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'DEFAULT_MAX_SEQ_LENGTH',
    'CheckReport',
    'CheckedConfig',
    'RecipeOutcome',
    'RecipeRun',
    'check_interval',
    'plan_recipe',
    'recipe_check',
    'recipe_line',
    'run_recipe',
]
