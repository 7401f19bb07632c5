"""Every number of docs/study.md, recomputed from the committed stores: one command.

    python study/full/report.py            # refit, replay, score; rewrite results.json, report/ and docs/study.md
    python study/full/report.py --check    # recompute and fail if docs/study.md would change

Inputs (all committed under study/full/): ``study.sqlite`` (the grid), ``check.sqlite`` + ``plans.json`` (the
recipe check, as planned on the GPU from the first fit), ``session.json`` (wall time, device), ``scores.json``
(the mteb scores of the check models' held-out test embeddings), ``baselines.json`` (raw ladder models and
all-MiniLM-L6-v2 on the same 500 test pairs, from ``embrecipe testbed baselines``).
Optional input: ``emb/*.npz``, those embeddings themselves (2.3 MB each, written on the GPU by
``device_study.py``; not tracked, to keep the repository small: ``git restore --source 9afc065 --worktree --
study/full/emb`` brings them back). When present, every one is scored again with mteb and checked against
``scores.json`` (``--check`` fails on a difference; a plain run rewrites ``scores.json``); when absent, the
committed scores are used and the run says so.
Outputs: ``results.json``, ``report/`` (Figure 1, residuals, law card), the packaged default law card
``src/embrecipe/resources/laws/default.json`` and ``docs/study.md`` (rendered from ``study.md.in``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embrecipe.runs.records import RunRecord

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CARD = ROOT / "src" / "embrecipe" / "resources" / "laws" / "default.json"
DOC = ROOT / "docs" / "study.md"
SCORES = HERE / "scores.json"
EMB = HERE / "emb"
NPZ_COMMIT = "9afc065"  # the last commit that tracks emb/*.npz
SCORE_TOLERANCE = 1e-6  # absolute, per score: mteb on another machine's BLAS may differ in the last digits
BOOTSTRAP = 200
LEVEL = 0.9


def _fmt_budget(b: float) -> str:
    return f"{b:.3g}"


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def sweep_cost(records: list[RunRecord], session: dict[str, Any]) -> dict[str, Any]:
    return {
        "runs": len(records),
        "model_flops": sum(float(r.model_flops) for r in records),
        "hardware_flops": sum(float(r.details.get("hardware_flops") or 0) for r in records),
        "train_seconds_summed": sum(float(r.details["train_time_s"]) for r in records),
        "run_wall_seconds_summed": sum(float(r.details["wall_time_s"]) for r in records),
        "sweep_wall_seconds": float(session.get("sweep", {}).get("seconds", math.nan)),
        "device": session.get("device"),
        "workers": session.get("workers"),
        "precision": sorted({r.details.get("precision") for r in records}),
        "budgets": sorted({float(r.budget) for r in records}),
        "steps_range": [min(int(r.steps) for r in records), max(int(r.steps) for r in records)],
        "smallest_model_steps_at_smallest_budget": min(
            int(r.steps) for r in records
            if _same(r.budget, min(float(x.budget) for x in records))
            and r.n_params == min(x.n_params for x in records)),
    }


def _steps_range(records: list[RunRecord], cost: dict[str, Any]) -> tuple[int, int]:
    """Optimizer steps of the smallest model's runs at the smallest budget (min, max over methods)."""
    b0 = cost["budgets"][0]
    n0 = min(r.n_params for r in records)
    steps = [int(r.steps) for r in records if _same(r.budget, b0) and r.n_params == n0]
    return min(steps), max(steps)


def validation_rows(laws: Any) -> list[dict[str, Any]]:
    rows = []
    for v in laws.variants:
        val = laws.validation.get(v, {})
        ci = laws[v].param_intervals(LEVEL)
        rows.append({"variant": v, "n_runs": laws[v].n_runs_, "rms_residual": laws[v].to_dict()["residual_rms"],
                     "held_out_budget": val.get("held_out_budget"), "n_test": val.get("n_test"),
                     "mean_abs_rel_error": val.get("mean_abs_rel_error"),
                     "max_abs_rel_error": val.get("max_abs_rel_error"),
                     "runs": val.get("runs", []), "skipped": val.get("skipped"),
                     "params": laws[v].params_, "intervals": ci})
    return rows


def recipe_check(plans: dict[str, Any], checks: list[RunRecord]) -> list[dict[str, Any]]:
    """Planned configuration vs the two best alternatives, each trained at the check budget."""
    out = []
    for label, p in plans["plans"].items():
        budget = float(p["budget"])
        cands = [c for c in p["candidates"] if c.get("feasible", True)][:3]
        rows = []
        for rank, c in enumerate(cands, 1):
            match = [r for r in checks if _same(r.budget, budget) and r.variant == c["variant"]
                     and Path(str(r.config.model)).name == c["model"]]
            measured = float(match[0].final_val_loss) if match else None
            rows.append({"rank": rank, "model": c["model"], "variant": c["variant"], "predicted": c["loss"],
                         "low": c.get("loss_low"), "high": c.get("loss_high"), "p_optimal": c.get("p_optimal"),
                         "steps": c["steps"], "measured": measured,
                         "covered": (None if measured is None or c.get("loss_low") is None
                                     else bool(c["loss_low"] <= measured <= c["loss_high"]))})
        measured = [r["measured"] for r in rows if r["measured"] is not None]
        planned = rows[0]["measured"] if rows else None
        best = min(measured) if measured else None
        out.append({"label": label, "budget": budget, "rows": rows,
                    "regret": None if planned is None or best is None else planned - best,
                    "relative_regret": None if planned is None or best is None else (planned - best) / best,
                    "planned_is_best": None if planned is None else planned == best,
                    "complete": len(measured) == len(rows)})
    return out


def empirical_winners(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per grid budget, the best measured run of each variant and the overall winner (no law involved)."""
    out = []
    for b in sorted({float(r.budget) for r in records}):
        at = [r for r in records if _same(r.budget, b)]
        per_variant = {}
        for r in at:
            v = r.variant
            if v not in per_variant or r.final_val_loss < per_variant[v]["loss"]:
                per_variant[v] = {"model": Path(str(r.config.model)).name, "loss": float(r.final_val_loss),
                                  "steps": int(r.steps)}
        win = min(per_variant, key=lambda v: per_variant[v]["loss"])
        out.append({"budget": b, "per_variant": per_variant, "winner": win, "winner_model": per_variant[win]["model"]})
    return out


def plan_reproduces(records: list[RunRecord], keys: list[str], plans: dict[str, Any]) -> dict[str, Any]:
    """Refit on exactly the runs the GPU session had when it planned, and plan again: same top-3?"""
    from embrecipe.laws import fit_laws
    from embrecipe.planning.planner import plan

    subset = [r for r in records if r.key in set(keys)]
    laws = fit_laws(subset, bootstrap=int(plans["plans"]["inside"]["n_bootstrap"] or 100), seed=0)
    out = {"runs": len(subset), "same_top3": True, "by_budget": {}}
    for label, p in plans["plans"].items():
        again = plan(float(p["budget"]), laws, batch_size=int(p["batch_size"]))
        was = [(c["model"], c["variant"]) for c in p["candidates"][:3]]
        now = [(c.model, c.variant) for c in again.candidates[:3]]
        out["by_budget"][label] = {"then": was, "now": now,
                                   "max_abs_pred_diff": max(abs(a["loss"] - b.loss) for a, b in
                                                            zip(p["candidates"][:3], again.candidates[:3], strict=True))}
        out["same_top3"] &= was == now
    return out


ADAPTIVE_SETTINGS = [  # the default design first; then a looser one, to show what the verification buys
    {"label": "default (threshold 0.5 %, min_sizes 2, min_budgets 3, verify 3)"},
    {"label": "verify 1", "verify": 1},
]


def _check_label(r: RunRecord, check: list[dict[str, Any]]) -> tuple[str, int | None]:
    """A check model's row label in the MTEB table and its plan rank."""
    model = Path(str(r.config.model)).name
    rank = next((row["rank"] for c in check if _same(c["budget"], r.budget) for row in c["rows"]
                 if row["model"] == model and row["variant"] == r.variant), None)
    name = (f"{r.variant} on {model} @ {r.budget:.3g}"
            + (" — **planned**" if rank == 1 else f" (plan rank {rank})"))
    return name, rank


def rescore_embeddings(checks: list[RunRecord], check: list[dict[str, Any]],
                       emb_dir: Path = EMB) -> dict[str, dict[str, Any]]:
    """mteb scores of every stored ``emb_dir/KEY.npz`` (the check run KEY's held-out test embeddings), by key."""
    from embrecipe.evaluate import evaluate_embeddings

    by_key = {r.key: r for r in checks}
    out = {}
    for npz in sorted(emb_dir.glob("*.npz")):
        r = by_key.get(npz.stem)
        if r is None:
            raise SystemExit(f"{npz}: no run with this key in check.sqlite")
        rec = evaluate_embeddings(npz, name=_check_label(r, check)[0])
        out[npz.stem] = {"npz_sha256": hashlib.sha256(npz.read_bytes()).hexdigest(), "npz_bytes": npz.stat().st_size,
                         "heldout_loss": rec["heldout_loss"],
                         "tasks": {t: v["main_score"] for t, v in rec["tasks"].items()},
                         "num_pairs": rec["num_pairs"], "pairs": rec["pairs"], "versions": rec["versions"]}
    return out


def score_differences(committed: dict[str, dict[str, Any]], fresh: dict[str, dict[str, Any]],
                      tolerance: float = SCORE_TOLERANCE) -> list[str]:
    """What the recomputed ``fresh`` scores contradict in the ``committed`` ones (one line each; [] = agree)."""
    diffs = []
    for key, f in sorted(fresh.items()):
        c = committed.get(key)
        if c is None:
            diffs.append(f"{key}: not in {SCORES.name}")
            continue
        if c["npz_sha256"] != f["npz_sha256"]:
            diffs.append(f"{key}: emb/{key}.npz is not the file the committed scores came from (sha256)")
        for name in sorted(set(c["tasks"]) | set(f["tasks"]) | {"heldout_loss"}):
            a = c["heldout_loss"] if name == "heldout_loss" else c["tasks"].get(name, math.nan)
            b = f["heldout_loss"] if name == "heldout_loss" else f["tasks"].get(name, math.nan)
            if not abs(a - b) <= tolerance:
                diffs.append(f"{key}: {name} {b!r} recomputed, {a!r} committed")
    return diffs


def score_embeddings(checks: list[RunRecord], check: list[dict[str, Any]],
                     scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The MTEB table's trained rows from per-run ``scores``, ordered by check budget and plan rank."""
    out = []
    by_key = {r.key: r for r in checks}
    for key, sc in sorted(scores.items()):
        r = by_key.get(key)
        if r is None:
            raise SystemExit(f"{SCORES}: run {key} is not in check.sqlite")
        name, rank = _check_label(r, check)
        out.append({"name": name, "key": key, "budget": r.budget, "rank": rank,
                    "heldout_loss": sc["heldout_loss"], "tasks": dict(sc["tasks"])})
    return sorted(out, key=lambda e: (-e["budget"], e["rank"] or 99))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_scores(checks: list[dict[str, Any]], check: list[dict[str, Any]], *, strict: bool,
                out_path: Path) -> dict[str, dict[str, Any]] | None:
    """The per-run scores the report uses: the committed ``scores.json``, checked against ``emb/*.npz`` when
    those are present. A difference fails under ``strict`` (None) and otherwise rewrites ``out_path``."""
    committed = json.loads(SCORES.read_text())["runs"] if SCORES.is_file() else {}
    if not any(EMB.glob("*.npz")):
        if not committed:
            raise SystemExit(f"neither {SCORES} nor {EMB}/*.npz: nothing to score the check models from")
        print(f"{_shown(EMB)}/*.npz absent: using the committed scores in {_shown(SCORES)} "
              f"(restore the embeddings with: git restore --source {NPZ_COMMIT} --worktree -- "
              f"{_shown(EMB)})", file=sys.stderr)
        return committed
    fresh = rescore_embeddings(checks, check)
    diffs = score_differences(committed, fresh)
    if not diffs:
        print(f"{len(fresh)} embedding file(s) rescored: they match {_shown(SCORES)}", file=sys.stderr)
        return committed
    print("\n".join([f"{SCORES} disagrees with {EMB}/*.npz:", *diffs]), file=sys.stderr)
    if strict:
        return None
    write_scores({**committed, **fresh}, out_path)
    print(f"wrote {out_path}", file=sys.stderr)
    return {**committed, **fresh}


def write_scores(runs: dict[str, dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"about": "mteb main scores (LocalDocRetrieval: nDCG@10, LocalDocRelatedness: Spearman) and held-out "
                    "loss of each recipe-check model (check.sqlite key), computed by "
                    "embrecipe.evaluate.evaluate_embeddings from emb/KEY.npz (the model's held-out test "
                    "embeddings, written on the GPU by device_study.py with embed_eval_texts)",
           "command": "python study/full/report.py (with study/full/emb/*.npz present)",
           "restore_npz": f"git restore --source {NPZ_COMMIT} --worktree -- study/full/emb",
           "tolerance": SCORE_TOLERANCE, "runs": dict(sorted(runs.items()))}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def table(head: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "|".join("---" for _ in head)
    lines = ["| " + " | ".join(head) + " |", "|" + align + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def render_tables(res: dict[str, Any]) -> dict[str, str]:
    t: dict[str, str] = {}
    t["VALIDATION"] = table(
        ["variant", "runs", "fit rms", f"held out (budget {_fmt_budget(res['validation'][0]['held_out_budget'] or 0)})",
         "mean abs error", "max abs error"],
        [[r["variant"], r["n_runs"], _pct(r["rms_residual"]), r["n_test"] or "–",
          _pct(r["mean_abs_rel_error"]), _pct(r["max_abs_rel_error"])] for r in res["validation"]],
        "---|---:|---:|---:|---:|---:")
    t["PARAMS"] = table(
        ["variant", "E", "A", "α", "B", "β"],
        [[r["variant"]] + [f"{r['params'][k]:.3g} [{r['intervals'][k][0]:.3g}, {r['intervals'][k][1]:.3g}]"
                           if r["intervals"] else f"{r['params'][k]:.3g}" for k in ("E", "A", "alpha", "B", "beta")]
         for r in res["validation"]],
        "---|---|---|---|---|---")
    t["RECIPE"] = res["recipe_table_md"]
    rows = []
    for chk in res["recipe_check"]:
        for r in chk["rows"]:
            rows.append([f"{chk['label']} ({_fmt_budget(chk['budget'])})", r["rank"], f"{r['variant']} on {r['model']}",
                         r["steps"], f"{r['predicted']:.4f} [{r['low']:.4f}, {r['high']:.4f}]",
                         "–" if r["measured"] is None else f"{r['measured']:.4f}",
                         {True: "yes", False: "no", None: "–"}[r["covered"]]])
    t["CHECK"] = table(["check budget", "plan rank", "configuration", "steps", f"predicted [{LEVEL:.0%}]",
                        "measured", "covered"], rows, "---|---:|---|---:|---|---:|---")
    t["REGRET"] = table(
        ["check budget", "planned", "best measured", "regret (loss)", "regret (relative)"],
        [[f"{c['label']} ({_fmt_budget(c['budget'])})", f"{c['rows'][0]['variant']} on {c['rows'][0]['model']}",
          "–" if not c["complete"] else min((r for r in c["rows"] if r["measured"] is not None),
                                             key=lambda r: r["measured"])["variant"] + " on " +
          min((r for r in c["rows"] if r["measured"] is not None), key=lambda r: r["measured"])["model"],
          "–" if c["regret"] is None else f"{c['regret']:.4f}", _pct(c["relative_regret"])]
         for c in res["recipe_check"]],
        "---|---|---|---:|---:")
    order = {"all-MiniLM-L6-v2": 0}
    base = sorted(res["baselines"], key=lambda b: (order.get(b["name"], 1), b["name"]))
    task_names = sorted({k for b in base for k in b["tasks"]} | {k for e in res["mteb"] for k in e["tasks"]},
                        reverse=True)  # retrieval first
    rows = [[b["name"], f"{b['heldout_loss']:.4f}"] + [f"{b['tasks'].get(k, math.nan):.4f}" for k in task_names]
            for b in base]
    rows += [[e["name"], f"{e['heldout_loss']:.4f}"] + [f"{e['tasks'].get(k, math.nan):.4f}" for k in task_names]
             for e in res["mteb"]]
    metric = {"LocalDocRetrieval": "LocalDocRetrieval (nDCG@10)", "LocalDocRelatedness": "LocalDocRelatedness (Spearman)"}
    t["MTEB"] = table(["model", "held-out loss", *(metric.get(k, k) for k in task_names)], rows,
                      "---|---:" + "|---:" * len(task_names))
    a = res["adaptive"]
    t["ADAPTIVE"] = table(
        ["design", "target budget", "runs (adaptive / grid)", "model FLOPs (adaptive / grid)", "fraction",
         "same recommendation", "recommendation (grid → adaptive)", "P(optimal)", "stated expected regret",
         "stopped because"],
        [[x["setting"], _fmt_budget(x["target"]), f"{x['runs_adaptive']} / {x['runs_grid']}",
          f"{x['flops_adaptive']:.3g} / {x['flops_grid']:.3g}", _pct(x["fraction"], 1),
          "yes" if x["same_recommendation"] else "**no**",
          f"{x['grid_best']['variant']} on {x['grid_best']['model']} → "
          + ("none" if not x["adaptive_best"] else
             f"{x['adaptive_best']['variant']} on {Path(x['adaptive_best']['model']).name}"),
          "—" if x["p_optimal"] is None else f"{x['p_optimal']:.2f}",
          "—" if x["expected_regret"] is None else _pct(x["expected_regret"], 2), x["stop"]] for x in a],
        "---|---:|---:|---:|---:|---|---|---:|---:|---")
    variants = sorted({v for w in res["empirical"] for v in w["per_variant"]})
    t["EMPIRICAL"] = table(
        ["budget", *variants, "best run"],
        [[_fmt_budget(w["budget"])] + [
            (f"{w['per_variant'][v]['loss']:.3f} ({w['per_variant'][v]['model'].replace('smollm2-', '')})"
             if v in w["per_variant"] else "–") for v in variants]
         + [f"**{w['winner']} on {w['winner_model']}**"] for w in res["empirical"]],
        "---:" + "|---:" * len(variants) + "|---")
    return t


def render_doc(res: dict[str, Any], template: str) -> str:
    tables = render_tables(res)

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in tables:
            return tables[key]
        value: Any = res["numbers"]
        for part in key.split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\{\{([A-Za-z0-9_.]+)\}\}", sub, template)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail (exit 1) if docs/study.md is not up to date")
    ap.add_argument("--out-dir", default=None,
                    help="write results.json, report/, the card and study.md here instead of their committed places")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else None
    card_path = out_dir / "default.json" if out_dir else CARD
    doc_path = out_dir / "study.md" if out_dir else DOC
    results_path = (out_dir or HERE) / "results.json"
    report_dir = (out_dir or HERE) / "report"

    from embrecipe.laws import fit_laws
    from embrecipe.planning.planner import plan_many
    from embrecipe.report.writer import write_report
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.adaptive import AdaptiveSpec, replay_adaptive

    with RunStore(HERE / "study.sqlite") as st:
        records = st.records()
    with RunStore(HERE / "check.sqlite") as st:
        checks = st.records()
    plans = json.loads((HERE / "plans.json").read_text())
    session = json.loads((HERE / "session.json").read_text())
    cost = sweep_cost(records, session)
    label = (f"family smollm2-135m-depth-ladder (SmolLM2-135M-Instruct Q4_1 GGUF, first 2/4/8/16/30 layers); "
             f"data: embrecipe testbed docstring pairs (train split, 28,712 pairs, mean pooling, 75 tokens); "
             f"batch 32, lr 1e-3, AdamW wd 0.1, warm-up 10 % + cosine; hardware: 1x {cost['device']}, "
             f"{'/'.join(cost['precision'])}; {len(records)} runs, budgets {_fmt_budget(cost['budgets'][0])}"
             f"..{_fmt_budget(cost['budgets'][-1])} FLOPs (study/full/study.sqlite)")
    laws = fit_laws(records, bootstrap=BOOTSTRAP, seed=0, provenance=label)
    # The card's date is the study's (its newest run), not the day the report was regenerated.
    with RunStore(HERE / "study.sqlite") as st:
        newest = max(float(r["updated_at"]) for r in st.rows("completed"))
    laws.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))
    # The runs record the models' shapes, not their builds: keep the content hashes the committed card gives its
    # testbed members (a card names a model by name, shape and content hash: embrecipe.models.refs).
    if CARD.is_file():
        known = {m.get("name"): m.get("content_hash") for m in json.loads(CARD.read_text()).get("family", [])}
        for member in laws.family:
            if known.get(member.get("name")) and not member.get("content_hash"):
                member["content_hash"] = known[member["name"]]
    paths = write_report(records, report_dir, laws=laws)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    laws.save(card_path)
    paths["laws"].unlink()  # the packaged card is that same card: keep one copy in the repository

    check_budgets = [float(p["budget"]) for p in plans["plans"].values()]
    table_budgets = sorted(set(cost["budgets"]) | set(check_budgets) | {1e12, 1e15, 3e15, 1e16})
    recipe = plan_many(table_budgets, laws, level=LEVEL)
    adaptive = []
    for setting in ADAPTIVE_SETTINGS:
        knobs = {k: v for k, v in setting.items() if k != "label"}
        for t in (cost["budgets"][-1], max(check_budgets)):
            a = replay_adaptive(records, target=t, spec=AdaptiveSpec().with_overrides(**knobs)).to_dict()
            for k in ("adaptive_keys", "steps", "trace"):
                a.pop(k, None)
            a["setting"] = setting["label"]
            adaptive.append(a)
    check = recipe_check(plans, checks)
    scores = load_scores(checks, check, strict=args.check,
                         out_path=(out_dir or HERE) / "scores.json")
    if scores is None:
        print(f"{SCORES} is out of date: rerun python study/full/report.py", file=sys.stderr)
        return 1
    plan_time = json.loads((HERE / "plan_time_runs.json").read_text())["keys"]
    baselines = json.loads((HERE / "baselines.json").read_text())
    res: dict[str, Any] = {
        "cost": cost,
        "validation": validation_rows(laws),
        "recipe_table": recipe.to_dict(),
        "recipe_table_md": recipe.to_markdown(),
        "crossovers": recipe.crossovers(),
        "recipe_check": check,
        "plan_reproduction": plan_reproduces(records, plan_time, plans),
        "empirical": empirical_winners(records),
        "adaptive": adaptive,
        "mteb": score_embeddings(checks, check, scores),
        "baselines": [{"name": b["name"], "heldout_loss": b["heldout_loss"],
                       "tasks": {t: v["main_score"] for t, v in b["tasks"].items()}} for b in baselines],
        "law_card": str(CARD.relative_to(ROOT)),
        "figure": "study/full/report/figure1.png",
    }
    res["numbers"] = {
        "runs": cost["runs"], "model_flops": f"{cost['model_flops']:.3g}",
        "sweep_minutes": f"{cost['sweep_wall_seconds'] / 60:.1f}",
        "gpu_seconds_summed": f"{cost['train_seconds_summed']:.0f}", "device": cost["device"],
        "workers": cost["workers"], "l2_steps": cost["smallest_model_steps_at_smallest_budget"],
        "adaptive_fraction": _pct(adaptive[1]["fraction"], 1),
        "adaptive_fraction_largest": _pct(adaptive[0]["fraction"], 1),
        "plan_runs": len(plan_time),
        "resume_seconds": json.loads((HERE / "resume.json").read_text())["seconds"],
        "llo_mean_range": f"{100 * min(r['mean_abs_rel_error'] for r in res['validation']):.1f}–"
                          f"{100 * max(r['mean_abs_rel_error'] for r in res['validation']):.1f} %",
        "llo_max": f"{100 * max(r['max_abs_rel_error'] for r in res['validation']):.1f} %",
        "budgets": ", ".join(_fmt_budget(b) for b in cost["budgets"]),
        "n_budgets": len(cost["budgets"]),
        "l2_steps_range": "{}–{}".format(*_steps_range(records, cost)),
        "steps_range": "{}–{:,}".format(*cost["steps_range"]),
    }
    for chk in res["recipe_check"]:
        top = chk["rows"][0]
        res["numbers"][chk["label"]] = {
            "budget": _fmt_budget(chk["budget"]), "config": f"{top['variant']} on {top['model']}",
            "predicted": f"{top['predicted']:.3f}", "interval": f"[{top['low']:.3f}, {top['high']:.3f}]",
            "measured": "–" if top["measured"] is None else f"{top['measured']:.3f}",
            "error": "–" if top["measured"] is None else f"{100 * (top['predicted'] - top['measured']) / top['measured']:+.1f} %",
            "regret": "–" if chk["regret"] is None else f"{chk['regret']:.4f}",
            "covered": {True: "covered", False: "not covered", None: "–"}[top["covered"]],
        }
    res["numbers"]["check_seconds"] = f"{session.get('check', {}).get('seconds', math.nan):.0f}"
    results_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    doc = render_doc(res, (HERE / "study.md.in").read_text())
    if args.check:
        if DOC.read_text() != doc:
            print(f"{DOC} is out of date: rerun python study/full/report.py", file=sys.stderr)
            return 1
        print(f"{DOC} reproduces from the committed stores")
        return 0
    doc_path.write_text(doc)
    print(f"wrote {doc_path}, {results_path}, {card_path}, {paths['figure_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
