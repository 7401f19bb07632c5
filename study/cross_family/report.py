"""Issue 23 req. 4: the cross-family check. Reads the two committed stores of this folder, prints and writes
the table (held-out loss per family, budget, model and method; the winner of each), fits one law per variant
per family (the same `fit_laws` as `embrecipe fit`), and asks whether family A's laws rank family B's methods
in the order of B's measured losses.

    PYTHONPATH=src .venv/bin/python study/cross_family/report.py   # → report.md and the tables of docs/cross_family.md

How the cross check reads: for every cell of B (one model, one budget) A's law of each method is evaluated at
the N and D that B's run of that method had (its own tokens at that budget), and the order of those
predictions is compared with the order of B's measured losses: Kendall's tau and whether the winner is the
same. Only methods both families have laws for are compared (SmolLM2 has no biases: no bias law). A's laws
are fitted on A's two sizes, so at B's N they extrapolate (Qwen's N lies above SmolLM2's): the check asks
whether the law's *ordering* transfers, not whether its loss levels do (the families tokenize differently).
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from scipy.stats import kendalltau

from embrecipe.errors import InputError
from embrecipe.laws.fit import fit_laws
from embrecipe.laws.points import finite_records, run_point
from embrecipe.runs.store import RunStore

HERE = Path(__file__).resolve().parent
FAMILIES = {"SmolLM2-135M": HERE / "smollm2.sqlite", "Qwen2.5-Coder-0.5B (AWQ→GGUF)": HERE / "qwen.sqlite"}
GRIDS = {"SmolLM2-135M": HERE / "smollm2.yaml", "Qwen2.5-Coder-0.5B (AWQ→GGUF)": HERE / "qwen.yaml"}
DOC = HERE.parent.parent / "docs" / "cross_family.md"
BEGIN, END = "<!-- report.py: begin -->", "<!-- report.py: end -->"
METHODS = ["full", "freeze-f0.5", "bias", "lora-r8"]


def short_model(model: str) -> str:
    name = Path(model).name
    return name.replace("qwen2.5-coder-0.5b-", "qwen-")


def planned_cells(grid: Path) -> int:
    """Cells the grid trains (bias on a model without biases is no cell: the sweep skips it)."""
    import yaml
    g = yaml.safe_load(grid.read_text())
    n_methods = sum(len(v.get("trainable_blocks", v.get("rank", [None]))) if v else 1
                    for v in g["methods"].values())
    if "smollm2" in grid.name:
        n_methods -= 1  # bias-only: not applicable (no bias parameters)
    return len(g["models"]) * n_methods * len(g["budgets"])


def load(store: Path) -> list[Any]:
    if not store.exists():
        return []
    with RunStore(store) as st:
        records, _ = finite_records(st.records())
    return [run_point(r) for r in records]


def cells(points: list[Any]) -> dict[tuple[float, str], dict[str, Any]]:
    """(budget, model) → {variant: point}."""
    out: dict[tuple[float, str], dict[str, Any]] = defaultdict(dict)
    for p in points:
        out[(p.budget, p.model)][p.variant] = p
    return out


def ranking_agreement(predicted: dict[str, float], measured: dict[str, float]) -> tuple[float, bool]:
    """Kendall's tau between two loss orderings of the same methods, and whether the lowest is the same."""
    names = sorted(predicted)
    tau = kendalltau([predicted[n] for n in names], [measured[n] for n in names]).statistic
    return float(tau), min(predicted, key=predicted.__getitem__) == min(measured, key=measured.__getitem__)


def main() -> int:
    lines: list[str] = []

    def out(s: str = "") -> None:
        print(s)
        lines.append(s)

    points = {fam: load(path) for fam, path in FAMILIES.items()}
    # The untrained models' held-out loss, same pairs/batch/precision as the runs (baselines.py).
    bl_file = HERE / "baselines.json"
    baselines = json.loads(bl_file.read_text()) if bl_file.exists() else {}
    out("Held-out loss: symmetric InfoNCE on the first 256 validation pairs of the general sample, in-batch "
        "negatives at batch 8 (chance: ln 8 = 2.079); lower is better. 'untrained': the ladder member before "
        "any training (baselines.py). In brackets: the tokens the run trained on. Losses are recorded at bf16 "
        "resolution (about 3 significant digits).")
    out()
    laws: dict[str, Any] = {}
    for fam, pts in points.items():
        done, planned = len(pts), planned_cells(GRIDS[fam])
        out(f"## {fam}: {done} of {planned} runs completed")
        out()
        if not pts:
            out("(no runs yet)")
            out()
            continue
        out("| budget (FLOPs) | model | N (non-emb.) | untrained | " + " | ".join(METHODS) + " | winner |")
        out("|---|---|---|---|" + "---|" * len(METHODS) + "---|")
        for (budget, model), by in sorted(cells(pts).items()):
            row = []
            for m in METHODS:
                if m == "bias" and fam.startswith("SmolLM2"):
                    row.append("n/a (no biases)")
                elif m in by:
                    p = by[m]
                    row.append(f"{p.loss:.4f} ({p.D / 1e3:.1f}k tok)")
                else:
                    row.append("pending")
            ranked = sorted(by, key=lambda v: by[v].loss)
            ties = [v for v in ranked if by[v].loss == by[ranked[0]].loss]
            winner = "—" if len(by) < 2 else (" = ".join(ties) + " (tie)" if len(ties) > 1 else ranked[0])
            n = next(iter(by.values())).N
            raw = baselines.get(model, {}).get("raw_val_loss")
            raw_s = "?" if raw is None else f"{raw:.4f}"
            out(f"| {budget:.3g} | {short_model(model)} | {n / 1e6:.1f}M | {raw_s} | " + " | ".join(row)
                + f" | {winner} |")
        out()
        best: dict[float, tuple[str, str, float]] = {}
        for (budget, model), by in cells(pts).items():
            for v, p in by.items():
                if budget not in best or p.loss < best[budget][2]:
                    best[budget] = (v, short_model(model), p.loss)
        out("Best (method, model) per budget, over both models: " + "; ".join(
            f"{b:.3g}: {v} on {m} ({loss:.4f})" for b, (v, m, loss) in sorted(best.items())))
        out()
        try:
            laws[fam] = fit_laws([p for p in load_records(FAMILIES[fam])], bootstrap=0, validate=False,
                                 provenance=f"study/cross_family {fam}")
        except InputError as exc:
            out(f"No law fitted for {fam}: {exc}")
            out()
            continue
        ls = laws[fam]
        out(f"Laws fitted ({fam}): " + "; ".join(
            f"{v}: E={law.params_['E']:.3g} A={law.params_['A']:.3g} alpha={law.params_['alpha']:.3g} "
            f"B={law.params_['B']:.3g} beta={law.params_['beta']:.3g} ({law.n_runs_} runs)"
            for v, law in ls.laws.items()))
        if ls.skipped:
            out("Not fitted: " + "; ".join(f"{v}: {why}" for v, why in ls.skipped.items()))
        out()

    out("## Does one family's law rank the other's methods?")
    out()
    out("| law from | ranks cells of | budget | model | methods compared | predicted order | measured order "
        "| Kendall tau | same winner |")
    out("|---|---|---|---|---|---|---|---|---|")
    summary: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    for a, ls in laws.items():
        for b, pts in points.items():
            for (budget, model), by in sorted(cells(pts).items()):
                common = [v for v in by if v in ls.laws]
                if len(common) < 2:
                    continue
                pred = {v: float(ls.predict(v, by[v].N, by[v].D)) for v in common}
                meas = {v: by[v].loss for v in common}
                tau, same = ranking_agreement(pred, meas)
                summary[(a, b)].append((tau, same))
                order = lambda d: " < ".join(sorted(d, key=d.__getitem__))  # noqa: E731
                tau_s = "n/a" if math.isnan(tau) else f"{tau:+.2f}"
                out(f"| {a.split()[0]} | {b.split()[0]} | {budget:.3g} | {short_model(model)} | {len(common)} "
                    f"| {order(pred)} | {order(meas)} | {tau_s} | {'yes' if same else 'no'} |")
    out()
    for (a, b), rows in summary.items():
        taus = [t for t, _ in rows if not math.isnan(t)]
        kind = "in-sample (own law)" if a == b else "cross-family"
        mean_tau = f"{sum(taus) / len(taus):+.2f}" if taus else "n/a"
        out(f"- {a.split()[0]} law on {b.split()[0]} cells ({kind}): same winner in "
            f"{sum(s for _, s in rows)} of {len(rows)} cells, mean Kendall tau {mean_tau}")
    out()
    out("Law-free comparison: the measured order of the methods both families have (full, freeze-f0.5, lora-r8), "
        "rung against rung (the i-th budget of each grid) and smaller member against smaller member:")
    out()
    out("| rung | member | SmolLM2 measured order | Qwen measured order | Kendall tau | same winner |")
    out("|---|---|---|---|---|---|")
    fams = list(points)
    by_pos = [positions(points[f]) for f in fams]
    for pos in sorted(set(by_pos[0]) & set(by_pos[1])):
        a_by, b_by = by_pos[0][pos], by_pos[1][pos]
        common = sorted(set(a_by) & set(b_by))
        if len(common) < 2:
            continue
        a_loss = {v: a_by[v].loss for v in common}
        b_loss = {v: b_by[v].loss for v in common}
        tau, same = ranking_agreement(a_loss, b_loss)
        order = lambda d: " < ".join(sorted(d, key=d.__getitem__))  # noqa: E731
        out(f"| {pos[0] + 1} | L{'2' if pos[1] == 0 else '4'} | {order(a_loss)} | {order(b_loss)} | "
            f"{'n/a' if math.isnan(tau) else f'{tau:+.2f}'} | {'yes' if same else 'no'} |")
    text = "\n".join(lines) + "\n"
    (HERE / "report.md").write_text(text)
    splice(DOC, text)
    return 0


def splice(doc: Path, text: str) -> None:
    """Put the generated tables between the page's markers, so the page and the stores cannot disagree."""
    if not doc.exists():
        return
    page = doc.read_text()
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{doc}: markers {BEGIN} / {END} not found")
    doc.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def positions(points: list[Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """(budget rung index, member index by size) → {variant: point}: lines the two grids up rung by rung."""
    budgets = sorted({p.budget for p in points})
    sizes = sorted({p.N for p in points})
    out: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
    for p in points:
        out[(budgets.index(p.budget), sizes.index(p.N))][p.variant] = p
    return out


def load_records(store: Path) -> list[Any]:
    with RunStore(store) as st:
        return list(st.records())


if __name__ == "__main__":
    sys.exit(main())
