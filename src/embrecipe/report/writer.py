r"""Figure 1 and the markdown report: what the runs say and what the fitted laws recommend.

Figure 1 (after the study's): final contrastive loss against model FLOPs (log–log), one colour per method,
one ``x`` per run, and per variant the fitted trend — the law's best achievable loss at each budget,

.. math::

    L^*_v(C) = \min_{m \in \text{family}} L_v\big(N_m,\; C / \mathrm{cost}_v(m)\big),

with the optimal frontier :math:`\min_v L^*_v(C)` in black. When the law card records no family shapes the
trend falls back to the paper's straight line through the best loss at each budget. The residual plot shows
:math:`\log L_{obs} - \log L_{pred}` (in %) per run, by variant.

Example::

    from embrecipe.runs.store import RunStore
    from embrecipe.report.writer import write_report
    paths = write_report(RunStore("runs.sqlite").records(), "report/")   # figure1.png/.svg, residuals.png, report.md
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.laws import PARAM_NAMES, LawSet, RunPoint, finite_records, fit_laws, run_point
from embrecipe.runs.records import RunRecord

_LINESTYLES = ("-", "--", "-.", ":")


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    # Same runs, same files: fixed SVG element ids (and no dates, in _save) keep committed reports diff-free.
    matplotlib.rcParams["svg.hashsalt"] = "embrecipe"
    import matplotlib.pyplot as plt

    return plt


def _variant_styles(variants: Sequence[str], methods: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Colour by method, line style by variant within the method (so ranks/fractions stay apart)."""
    from embrecipe.models.methods import METHODS

    styles: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for v in sorted(variants):
        m = methods.get(v, v.split("-")[0])
        i = seen.get(m, 0)
        seen[m] = i + 1
        colour = METHODS[m].colour if m in METHODS else "#7f7f7f"
        styles[v] = {"color": colour, "linestyle": _LINESTYLES[i % len(_LINESTYLES)]}
    return styles


def law_envelope(laws: LawSet, variant: str, budgets: np.ndarray) -> np.ndarray | None:
    """:math:`L^*_v(C)` on ``budgets`` over the card's family; None without family shapes."""
    from embrecipe.models.methods import method_from_dict
    from embrecipe.planning.planner import family_from_laws

    try:
        members = family_from_laws(laws)
    except EmbrecipeError:
        return None
    method = method_from_dict(laws.methods[variant])
    curves = []
    for m in members:
        try:
            cost = method.flops_per_token(m.shape)
        except EmbrecipeError:  # e.g. bias-only on a model without biases
            continue
        curves.append(laws[variant].predict(m.shape.non_embedding_params, np.asarray(budgets) / cost))
    return np.min(np.vstack(curves), axis=0) if curves else None


def figure1(points: Sequence[RunPoint], laws: LawSet | None, path_stem: str | os.PathLike[str]) -> list[Path]:
    """Loss vs model FLOPs per method; writes ``<stem>.png`` and ``<stem>.svg``."""
    plt = _matplotlib()
    if not points:
        raise InputError("no runs to plot")
    variants = sorted({p.variant for p in points})
    methods = {p.variant: p.method["name"] for p in points}
    styles = _variant_styles(variants, methods)
    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=130)
    cs = np.array([p.C for p in points])
    grid = np.geomspace(cs.min() / 1.5, cs.max() * 1.5, 60)
    envelopes = {}
    for v in variants:
        pts = [p for p in points if p.variant == v]
        st = styles[v]
        ax.scatter([p.C for p in pts], [p.loss for p in pts], marker="x", s=36, linewidths=1.4,
                   color=st["color"], zorder=4)
        env = None
        if laws is not None and v in laws.laws:
            env = law_envelope(laws, v, grid)
        if env is not None:
            envelopes[v] = env
            ax.plot(grid, env, color=st["color"], linestyle=st["linestyle"], linewidth=1.8, label=f"{v} (fit)",
                    zorder=3)
        elif laws is not None and laws.trends.get(v, {}).get("slope") is not None:
            t = laws.trends[v]
            ax.plot(grid, 10 ** (t["intercept"] + t["slope"] * np.log10(grid)), color=st["color"],
                    linestyle=st["linestyle"], linewidth=1.6, label=f"{v} (log-log trend)")
        else:
            ax.plot([], [], color=st["color"], marker="x", linestyle="none", label=f"{v} (runs only)")
    if envelopes:
        frontier = np.nanmin(np.vstack(list(envelopes.values())), axis=0)
        # A wide black band *under* the variant lines: the variant that is optimal stays visible inside it.
        ax.plot(grid, frontier, color="black", linewidth=5.5, alpha=0.9, label="optimal frontier", zorder=2,
                solid_capstyle="butt")
    ax.scatter([], [], marker="x", color="#444444", label="run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Losses span well under a decade: plain-number ticks at 1-2-5 steps read better than 10^0 alone.
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model FLOPs (training budget)")
    ax.set_ylabel("final contrastive loss (held-out)")
    ax.set_title("Contrastive loss vs compute, per fine-tuning method", fontsize=11)
    if laws is not None and laws.provenance:
        # A law card's label can be long (family, data, hardware): wrap it under the plot, never over it.
        lines = textwrap.wrap(laws.provenance, 110)
        fig.text(0.01, 0.005, "\n".join(lines[:4] + (["…"] if len(lines) > 4 else [])), fontsize=6.5,
                 color="#555555", va="bottom", ha="left")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    n_lines = len(textwrap.wrap(laws.provenance, 110)) if laws is not None and laws.provenance else 0
    footer = 0.03 + 0.022 * min(n_lines, 5) if n_lines else 0.0
    fig.tight_layout(rect=(0, footer, 1, 1))
    return _save(fig, plt, path_stem)


def residual_plot(points: Sequence[RunPoint], laws: LawSet, path_stem: str | os.PathLike[str]) -> list[Path]:
    """``log L_obs − log L_pred`` in % per run against model FLOPs, by variant."""
    plt = _matplotlib()
    variants = sorted({p.variant for p in points if p.variant in laws.laws})
    if not variants:
        raise InputError("no fitted variant to plot residuals for")
    styles = _variant_styles(variants, {p.variant: p.method["name"] for p in points})
    markers = ("x", "o", "s", "^", "v", "D", "P", "*")
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=130)
    for i, v in enumerate(variants):
        pts = [p for p in points if p.variant == v]
        pred = laws[v].predict([p.N for p in pts], [p.D for p in pts])
        res = 100 * (np.log([p.loss for p in pts]) - np.log(pred))
        ax.scatter([p.C for p in pts], res, marker=markers[i % len(markers)], s=30, color=styles[v]["color"],
                   facecolors="none" if markers[i % len(markers)] not in ("x", "P", "*") else None,
                   label=f"{v} (rms {np.sqrt(np.mean(res ** 2)):.2f}%)")
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("model FLOPs (training budget)")
    ax.set_ylabel("residual: log L_obs − log L_fit  (%)")
    ax.set_title("Scaling-law fit residuals", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, plt, path_stem)


def adaptive_plot(trace: Mapping[str, Any], path_stem: str | os.PathLike[str]) -> list[Path]:
    """The adaptive design's trace: model FLOPs spent against the recipe's stated expected regret, with the
    stopping threshold."""
    plt = _matplotlib()
    steps = [s for s in trace.get("steps", []) if s.get("expected_regret") is not None]
    if not steps:
        raise InputError("the adaptive trace has no decision with an expected regret yet")
    spent = [float(s["spent"]) for s in steps]
    er = [max(100 * float(s["expected_regret"]), 1e-4) for s in steps]
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=130)
    ax.plot(spent, er, marker="o", color="tab:blue", label="expected regret of the recipe")
    thr = (trace.get("spec") or {}).get("threshold")
    if thr is not None:
        ax.axhline(100 * float(thr), color="tab:red", linestyle="--", label=f"threshold {100 * float(thr):g}%")
    if trace.get("flops_grid"):
        ax.axvline(float(trace["flops_grid"]), color="grey", linestyle=":", label="full grid's FLOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model FLOPs spent by the design")
    ax.set_ylabel("expected regret at the target (%)")
    ax.set_title(f"Adaptive design: {trace.get('stop') or 'not finished'}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8.5)
    fig.tight_layout()
    return _save(fig, plt, path_stem)


def _adaptive_lines(trace: Mapping[str, Any], figure: str) -> list[str]:
    last = (trace.get("steps") or [{}])[-1]
    rec = last.get("recipe")
    er, po = last.get("expected_regret"), last.get("p_optimal")
    sure = "" if er is None or po is None else f", P(optimal) {po:.2f}, expected regret {100 * er:.2f}%"
    return ["## Adaptive design", "",
            f"{len(trace.get('steps', []))} decisions for the target {float(trace.get('target', 0)):.3g} FLOPs; "
            f"{float(last.get('spent', 0)):.3g} model FLOPs spent; recipe "
            f"{'none' if not rec else f'{rec[1]} on {rec[0]}'}{sure}; "
            f"{'stopped: ' + trace['stop'] if trace.get('stop') else 'not finished'}.", "",
            f"![FLOPs spent vs expected regret]({figure})", ""]


def _save(fig: Any, plt: Any, stem: str | os.PathLike[str]) -> list[Path]:
    stem = Path(stem)
    out = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        out.append(path)
    plt.close(fig)
    return out


def default_report_budgets(laws: LawSet) -> list[float]:
    """The budgets the runs used, then 10x and 100x the largest: in-range rows and flagged extrapolations."""
    budgets = sorted(set(laws.trends.get("frontier", {}).get("budgets", [])))
    if not budgets:
        budgets = sorted({r["C"][1] for r in laws.ranges.values() if "C" in r})
    return [*budgets, budgets[-1] * 10, budgets[-1] * 100]


def markdown_report(points: Sequence[RunPoint], laws: LawSet, *, figure: str = "figure1.png",
                    residuals: str | None = "residuals.png", budgets: Sequence[float] | None = None,
                    batch_size: int | None = None, tokens_per_pair: float | None = None) -> str:
    from embrecipe.planning.planner import family_from_laws, plan_many

    lines = ["# embrecipe report", ""]
    lines.append(f"- law card provenance: {laws.provenance}")
    lines.append(f"- runs: {len(points)} completed, variants: {', '.join(sorted({p.variant for p in points}))}")
    lines.append(f"- data fingerprint: `{laws.data_fingerprint}`; family fingerprint: `{laws.family_fingerprint}`")
    if "synthetic" in laws.provenance.lower():
        lines.append("- **SYNTHETIC data**: these runs come from a fake trainer, not measurements.")
    lines += ["", f"![Figure 1: loss vs model FLOPs]({figure})", ""]

    lines += ["## Fitted laws: L(N, D) = E + A/N^α + B/D^β (Huber on log-loss)", ""]
    lines.append("| variant | runs | E | A | α | B | β | residual rms | leave-largest-budget-out error |")
    lines.append("|---|---:|---|---|---|---|---|---:|---|")
    for v, law in laws.laws.items():
        ci = law.param_intervals(0.9)
        cells = []
        params = law.params_ or {}
        for k in PARAM_NAMES:
            cells.append(f"{params[k]:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if ci else ""))
        rms = law.to_dict()["residual_rms"]
        val = laws.validation.get(v, {})
        llo = (f"mean {100 * val['mean_abs_rel_error']:.2f}%, max {100 * val['max_abs_rel_error']:.2f}% "
               f"(held out {val['held_out_budget']:.3g})") if "mean_abs_rel_error" in val else \
            (f"n/a: {val['skipped']}" if "skipped" in val else "n/a")
        lines.append(f"| {v} | {law.n_runs_} | " + " | ".join(cells) +
                     f" | {'' if rms is None else f'{100 * rms:.2f}%'} | {llo} |")
    lines.append("")
    lines.append("Brackets: 90% bootstrap intervals over resampled runs (intervals of the mean law, not of single "
                 "runs). Residual rms is of log-loss (≈ relative).")
    lines.append("")
    lines.extend(_uncertainty_lines(laws))
    for v, why in laws.skipped.items():
        lines.append(f"- not fitted: {v} — {why}")
    for v, law in laws.laws.items():
        for w in law.warnings_ + list((law.diagnostics_ or {}).get("warnings", [])):
            lines.append(f"- {v}: {w}")

    lines += ["", "## Best loss at each budget (the paper's view)", ""]
    lines.append("| variant | log10 L = a + b·log10 C: slope b | budgets: best loss (model) |")
    lines.append("|---|---:|---|")
    for v, t in laws.trends.items():
        if v == "frontier":
            continue
        pairs = ", ".join(f"{b:.3g}: {loss:.4g} ({m})" for b, loss, m in
                          zip(t["budgets"], t["best_loss"], t["best_model"], strict=True))
        slope = "—" if t["slope"] is None else f"{t['slope']:.4f}"
        lines.append(f"| {v} | {slope} | {pairs} |")
    fr = laws.trends.get("frontier")
    if fr:
        lines.append("")
        lines.append("Best run per budget: " + ", ".join(
            f"{b:.3g} → {v} ({loss:.4g})" for b, v, loss in zip(fr["budgets"], fr["best_variant"], fr["best_loss"], strict=True)))

    lines += ["", "## Recipe table (the planner across budgets)", ""]
    try:
        members = family_from_laws(laws)
        table = plan_many(budgets or default_report_budgets(laws), laws, members, batch_size=batch_size,
                          tokens_per_pair=tokens_per_pair, min_steps=1)
        lines.append(table.to_markdown())
        for c in table.crossovers():
            lines.append(f"\nCrossover: {c['from']} → {c['to']} between {c['between'][0]:.3g} and "
                         f"{c['between'][1]:.3g} FLOPs.")
        warned = [(p.budget, w) for p in table.plans for w in p.warnings]
        if warned:
            lines.append("")
            lines += [f"- at {b:.3g}: {w}" for b, w in warned]
    except EmbrecipeError as exc:
        lines.append(f"(no recipe table: {exc})")
    if residuals:
        lines += ["", "## Residuals", "", f"![residuals]({residuals})"]
    lines.append("")
    return "\n".join(lines)


def write_report(records: Sequence[RunRecord | Mapping[str, Any]], out_dir: str | os.PathLike[str], *,
                 laws: LawSet | None = None, bootstrap: int = 200, loss_key: str | None = None,
                 budgets: Sequence[float] | None = None, provenance: str | None = None,
                 adaptive_trace: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Fit (unless ``laws`` is given), draw Figure 1 and the residuals, write report.md and the law card;
    with ``adaptive_trace`` (:func:`embrecipe.sweep.adaptive.read_trace`) also the design's FLOPs-vs-regret figure.

    The fit comes first: a store that cannot be fitted is an error before ``out_dir`` is touched."""
    out = Path(out_dir)
    points = [run_point(r, loss_key=loss_key) for r in finite_records(records, loss_key)[0]]
    if not points:
        raise InputError("no completed runs to report on")
    if laws is None:
        laws = fit_laws(records, bootstrap=bootstrap, loss_key=loss_key,
                        provenance=provenance or f"fitted on {len(points)} runs")
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    png, svg = figure1(points, laws, out / "figure1")
    paths["figure_png"], paths["figure_svg"] = png, svg
    res = residual_plot(points, laws, out / "residuals")
    paths["residuals_png"], paths["residuals_svg"] = res
    md = markdown_report(points, laws, figure=png.name, residuals=res[0].name, budgets=budgets)
    if adaptive_trace and any(s.get("expected_regret") is not None for s in adaptive_trace.get("steps", [])):
        ad = adaptive_plot(adaptive_trace, out / "adaptive")
        paths["adaptive_png"], paths["adaptive_svg"] = ad
        md = md.rstrip("\n") + "\n\n" + "\n".join(_adaptive_lines(adaptive_trace, ad[0].name))
    paths["report"] = out / "report.md"
    paths["report"].write_text(md)
    paths["laws"] = laws.save(out / "laws.json")
    return paths


def _uncertainty_lines(laws: LawSet) -> list[str]:
    """Which estimator each law uses (chosen by leave-largest-budget-out), the run-noise term, and how the
    held-out runs fell relative to their single-run intervals."""
    noise = laws.noise or {}
    if noise.get("sigma") is not None:
        out = [f"Run-to-run noise: sigma = {100 * noise['sigma']:.2f}% of log-loss, measured from "
               f"{noise.get('source')} ({noise.get('dof')} degrees of freedom)."]
    else:
        out = [f"Run-to-run noise: not measured ({noise.get('note') or 'no repeated seeds'}); single-run "
               "intervals use each law's residual scatter (includes misfit)."]
    for v, law in laws.laws.items():
        choice = law.form_choice_ or {}
        errs = ", ".join(f"{k} {100 * e:.2f}%" for k, e in (choice.get("errors") or {}).items() if e is not None)
        val = laws.validation.get(v, {})
        cov = "" if "run_coverage" not in val else (
            f"; held-out runs inside their {val['run_interval_level']:.0%} single-run interval: "
            f"{sum(r['covered'] for r in val['runs'])}/{len(val['runs'])}")
        out.append(f"- {v}: estimator {law.estimator}" + (f" (leave-largest-out |log error|: {errs})" if errs else "")
                   + cov)
    return [*out, ""]
