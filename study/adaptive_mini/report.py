"""Issue 20's real CPU mini-study, summarised: the full grid (full.sqlite) against the live adaptive design
(adaptive.sqlite), both trained on the testbed corpus by `embrecipe sweep` (commands: README.md here).

Reads the two stores and the design's trace, replays the design on the full grid's store (it must take the
decisions the live design took: the runs are the same experiments, by run key) and writes ``results.json`` and
``results.md`` (pasted into benchmarks/adaptive.md, section 5). Every number comes from a trained run: the
losses are held-out contrastive losses, one seed per cell.

    python study/adaptive_mini/report.py            # needs both stores complete
    python study/adaptive_mini/report.py --check    # fail when results.md is not what the stores say
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import shutil
import sys
from pathlib import Path

import yaml

from embrecipe.recipe import select_lrs
from embrecipe.runs.store import RunStore
from embrecipe.sweep.adaptive import (
    AdaptiveSpec,
    config_id,
    read_trace,
    recommend,
    record_flops,
    replay_adaptive,
)

HERE = Path(__file__).resolve().parent


def store_path(name: str, work: Path = HERE) -> Path:
    """``<name>.sqlite`` here; when only the committed ``<name>.sqlite.xz`` is, it is unpacked into ``work``
    first (the stores are committed compressed: the GPU window carries the working tree within 64 MiB)."""
    path = HERE / f"{name}.sqlite"
    packed = path.with_name(path.name + ".xz")
    if path.exists() or not packed.exists():
        return path
    path = Path(work) / path.name
    if not path.exists():
        with lzma.open(packed) as src, open(path.with_suffix(".tmp"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(path.with_suffix(".tmp"), path)
    return path


def _completed(path: Path) -> list:
    with RunStore(path) as store:
        return [r for r in store.records() if r.completed]


def _short(model: str) -> str:
    return str(model).rstrip("/").rsplit("/", 1)[-1]


def _name(config: tuple[str, str] | None) -> str:
    return "none" if config is None else f"{config[1]} on {_short(config[0])}"


def summarise(work: Path = HERE) -> dict:
    # the grid's design settings (its paths need $EMBRECIPE_HOME; its adaptive key does not)
    spec = AdaptiveSpec.from_value(yaml.safe_load((HERE / "grid.yaml").read_text())["adaptive"])
    assert spec is not None and spec.targets
    target = spec.targets[0]
    full, adaptive = _completed(store_path("full", work)), _completed(store_path("adaptive", work))
    trace = read_trace(HERE / "adaptive.sqlite") or {}
    # the chosen LR per configuration (the LR search's rule, on the full grid's runs)
    chosen = select_lrs([(*config_id(r), r.budget, r.lr, r.loss()) for r in full])
    at_target = {}
    for r in full:
        c, lr = config_id(r), chosen.get(config_id(r))
        if math.isclose(r.budget, target, rel_tol=1e-6) and (lr is None or math.isclose(float(r.lr), lr)):
            at_target[c] = r.loss()
    best_measured = min(at_target, key=at_target.get) if at_target else None
    grid_best = recommend(full, target, seed=spec.seed)
    replay = replay_adaptive(full, target=target, spec=spec)
    steps = trace.get("steps", [])
    last = steps[-1] if steps else {}
    live_recipe = tuple(last["recipe"]) if last.get("recipe") else None
    live_keys = sorted(r.key for r in adaptive)
    replay_keys = sorted(replay.to_dict()["adaptive_keys"])
    flops_full = sum(record_flops(r) for r in full)
    flops_live = sum(record_flops(r) for r in adaptive)

    def measured(config):
        return None if config is None else at_target.get(tuple(config))

    out = {
        "target": target,
        "spec": spec.to_dict(),
        "full_grid": {"runs": len(full), "model_flops": flops_full,
                      "recipe_fitted": {"model": _short(grid_best.model), "variant": grid_best.variant,
                                        "predicted_loss": grid_best.loss},
                      "best_measured_at_target": None if best_measured is None else
                      {"model": _short(best_measured[0]), "variant": best_measured[1],
                       "loss": at_target[best_measured]}},
        "adaptive_live": {"runs": len(adaptive), "model_flops": flops_live,
                          "fraction_of_grid": flops_live / flops_full if flops_full else None,
                          "stop": trace.get("stop"), "decisions": len(steps),
                          "recipe": None if live_recipe is None else
                          {"model": _short(live_recipe[0]), "variant": live_recipe[1]},
                          "p_optimal": last.get("p_optimal"), "expected_regret": last.get("expected_regret"),
                          "measured_loss_at_target": measured(live_recipe)},
        "replay_on_full_grid": {k: replay.to_dict()[k] for k in
                                ("runs_adaptive", "flops_adaptive", "fraction", "same_recommendation",
                                 "expected_regret", "p_optimal", "stop", "lr_cost_flops")},
        "replay_takes_the_live_runs": replay_keys == live_keys,
        "measured_at_target": {_name(c): v for c, v in sorted(at_target.items(), key=lambda kv: kv[1])},
    }
    grid_recipe = next((c for c in at_target if (_short(c[0]), c[1]) == (_short(grid_best.model), grid_best.variant)),
                       None)
    out["full_grid"]["recipe_fitted"]["measured_loss_at_target"] = measured(grid_recipe)
    if best_measured is not None and measured(grid_recipe) is not None:
        out["full_grid"]["recipe_fitted"]["measured_regret_vs_best_at_target"] = \
            measured(grid_recipe) / at_target[best_measured] - 1
    out["replay_on_full_grid"]["recipe"] = _name(replay.adaptive_recipe)
    if best_measured is not None and live_recipe is not None and measured(live_recipe) is not None:
        out["adaptive_live"]["measured_regret_vs_best_at_target"] = \
            measured(live_recipe) / at_target[best_measured] - 1
    return out


def markdown(res: dict) -> str:
    g, a, rp = res["full_grid"], res["adaptive_live"], res["replay_on_full_grid"]
    rows = [
        "| | full grid | adaptive design (live) |",
        "|---|---:|---:|",
        f"| runs | {g['runs']} | {a['runs']} |",
        f"| model FLOPs | {g['model_flops']:.3g} | {a['model_flops']:.3g} ({100 * a['fraction_of_grid']:.1f} %) |",
        f"| recipe at {res['target']:.3g} | {g['recipe_fitted']['variant']} on {g['recipe_fitted']['model']} "
        f"(fitted laws) | {a['recipe']['variant']} on {a['recipe']['model']} |"
        if a["recipe"] else f"| recipe | {g['recipe_fitted']['variant']} on {g['recipe_fitted']['model']} | none |",
        f"| how sure | — | P(optimal) {a['p_optimal']:.2f}, expected regret {100 * a['expected_regret']:.2f} % |"
        if a["p_optimal"] is not None else "| how sure | — | — |",
        f"| stopped | — | {a['stop']} |",
    ]
    lines = [*rows, ""]
    bm, gr = g["best_measured_at_target"], g["recipe_fitted"]

    def versus(loss: float | None, regret: float | None) -> str:
        return "no run at the target" if loss is None else f"{loss:.4f} ({100 * regret:+.2f} %)"

    if bm:
        lines.append(f"Measured at {res['target']:.3g} (held-out loss, one seed, chosen LR): best "
                     f"{bm['variant']} on {bm['model']} {bm['loss']:.4f}; the design's recipe "
                     f"{versus(a.get('measured_loss_at_target'), a.get('measured_regret_vs_best_at_target'))}; "
                     f"the full grid's fitted recipe "
                     f"{versus(gr.get('measured_loss_at_target'), gr.get('measured_regret_vs_best_at_target'))}.")
    lines.append(f"Replay of the design on the full grid's store (`--adaptive-replay`): {rp['runs_adaptive']} runs, "
                 f"{100 * rp['fraction']:.1f} % of the grid's FLOPs, recipe {rp['recipe']}, same recommendation as "
                 f"the full grid: {'yes' if rp['same_recommendation'] else 'NO'}; it trains exactly the live "
                 f"design's runs: {'yes' if res['replay_takes_the_live_runs'] else 'NO'}.")
    lines += ["", "Every configuration at the target, measured (held-out loss, lower is better):", "",
              "| configuration | loss at target |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in res["measured_at_target"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when results.md differs from the stores")
    ap.add_argument("--work", type=Path, default=HERE, help="where to unpack the committed stores (default: here)")
    args = ap.parse_args(argv)
    res = summarise(args.work)
    md = markdown(res)
    if args.check:
        ok = (HERE / "results.md").read_text() == md
        print("results.md is up to date" if ok else "results.md differs from the stores: rerun report.py")
        return 0 if ok else 1
    (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (HERE / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
