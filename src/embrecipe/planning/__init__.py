"""The planner: budget → recipe.

- :mod:`~embrecipe.planning.planner`: :class:`PlanRequest` → :func:`plan_request` / :func:`plan` (enumerate,
  predict, choose by expected loss over the bootstrap draws, notes);
- :mod:`~embrecipe.planning.user_data`: the user's data as the planner sees it (tokens per pair, unique pairs);
- :mod:`~embrecipe.planning.units`: device-hours, throughput, serving cost;
- :mod:`~embrecipe.planning.formatting`: how a plan reads (tables, notes, JSON).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.planning.formatting import (
        format_plan,
        format_table,
        table_markdown,
    )
    from embrecipe.planning.planner import (
        ASSUMED_TOKENS_PER_PAIR,
        DEFAULT_BATCH_SIZE,
        INTERVALS_NOTE,
        Candidate,
        Plan,
        PlanRequest,
        RecipeTable,
        default_card_path,
        family_from_laws,
        load_laws,
        parse_budgets,
        plan,
        plan_many,
        plan_request,
    )
    from embrecipe.planning.units import (
        Measurement,
        ThroughputTable,
        default_benchmark_results,
        hours_to_flops,
        interpolate_loglog,
        load_throughput,
        record_device,
        serving_flops,
    )
    from embrecipe.planning.user_data import (
        measure_data,
    )

_EXPORTS = {
    **dict.fromkeys(['format_plan', 'format_table', 'table_markdown'], 'formatting'),
    **dict.fromkeys(['ASSUMED_TOKENS_PER_PAIR', 'Candidate', 'DEFAULT_BATCH_SIZE', 'INTERVALS_NOTE', 'Plan', 'PlanRequest', 'RecipeTable', 'default_card_path', 'family_from_laws', 'load_laws', 'parse_budgets', 'plan', 'plan_many', 'plan_request'], 'planner'),
    **dict.fromkeys(['Measurement', 'ThroughputTable', 'default_benchmark_results', 'hours_to_flops', 'interpolate_loglog', 'load_throughput', 'record_device', 'serving_flops'], 'units'),
    **dict.fromkeys(['measure_data'], 'user_data'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'ASSUMED_TOKENS_PER_PAIR',
    'DEFAULT_BATCH_SIZE',
    'INTERVALS_NOTE',
    'Candidate',
    'Measurement',
    'Plan',
    'PlanRequest',
    'RecipeTable',
    'ThroughputTable',
    'default_benchmark_results',
    'default_card_path',
    'family_from_laws',
    'format_plan',
    'format_table',
    'hours_to_flops',
    'interpolate_loglog',
    'load_laws',
    'load_throughput',
    'measure_data',
    'parse_budgets',
    'plan',
    'plan_many',
    'plan_request',
    'record_device',
    'serving_flops',
    'table_markdown',
]
