"""The study report: Figure 1, residuals, the markdown report.

- :mod:`~embrecipe.report.writer`: :func:`write_report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.report.writer import (
        adaptive_plot,
        default_report_budgets,
        figure1,
        law_envelope,
        markdown_report,
        residual_plot,
        write_report,
    )

_EXPORTS = {
    **dict.fromkeys(['adaptive_plot', 'default_report_budgets', 'figure1', 'law_envelope', 'markdown_report', 'residual_plot', 'write_report'], 'writer'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'adaptive_plot',
    'default_report_budgets',
    'figure1',
    'law_envelope',
    'markdown_report',
    'residual_plot',
    'write_report',
]
