"""``embrecipe fit STORE --out laws.json``: fit one scaling law per variant on a run store's completed runs."""

from __future__ import annotations

import argparse
import json

from embrecipe.cli._common import add_fit_options, check_fit_options, require_store
from embrecipe.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="fit per-variant scaling laws (with bootstrap) on a run store → law card",
        description="Fit L(N, D) = E + A/N^alpha + B/D^beta per variant (method + hyper-parameters) by Huber "
                    "loss on log-loss or by variable projection (NNLS), whichever predicts the largest budget "
                    "better when it is held out; bootstrap the runs (multi-start refits); measure run-to-run "
                    "noise from repeated seeds; validate by leaving the largest budget out; write a law card "
                    "for `embrecipe plan`.",
    )
    p.add_argument("store", help="run store (runs.sqlite or sqlite:///path)")
    p.add_argument("--out", required=True, help="law card to write (.json, or .yaml/.yml)")
    add_fit_options(p, bootstrap_help="bootstrap refits per variant (default: 200; 0 = none)")
    p.add_argument("--loss-key", default=None,
                   help="record field to fit (default: final_val_loss; e.g. final_train_loss)")
    p.add_argument("--label", default=None, help="provenance label stored in the card")
    p.add_argument("--family", default=None, help="family file whose shapes go into the card "
                   "(default: the shapes recorded by the runs)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--estimator", default="auto", choices=("auto", "huber-log", "varpro-nnls"),
                   help="how to estimate the parameters (default: auto = chosen per variant by "
                        "leave-largest-budget-out error)")
    p.add_argument("--effective-data", action="store_true",
                   help="fit runs that repeated their data at the effective tokens D' (Muennighoff et al. "
                        "2023) instead of the tokens processed")
    p.add_argument("--json", action="store_true", help="print the card as JSON instead of the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from embrecipe.laws import finite_records, fit_laws
    from embrecipe.models.family import Family
    from embrecipe.runs.store import RunStore

    require_store(args.store)
    check_fit_options(args)
    with RunStore(args.store) as store:
        records = store.records()
        counts = store.counts()
    records, non_finite = finite_records(records, args.loss_key)
    skipped = [f"{counts.get('failed', 0)} failed run(s)"] if counts.get("failed") else []
    if non_finite:
        skipped.append(f"{non_finite} completed run(s) with a non-finite or missing loss")
    if skipped:
        print(f"skipped {' and '.join(skipped)} (left out of the fit)")
    if not records:
        raise InputError(f"{args.store}: no completed run with a finite loss to fit")
    family = ([{"name": m.name, "path": m.path, "shape": m.shape.to_dict()} for m in Family.load(args.family).members]
              if args.family else None)
    label = args.label or f"fitted on {len(records)} completed runs of {args.store}"
    laws = fit_laws(records, bootstrap=args.bootstrap, seed=args.seed, loss_key=args.loss_key,
                    min_runs=args.min_runs, provenance=label, family=family, estimator=args.estimator,
                    effective_data=args.effective_data)
    path = laws.save(args.out)
    if args.json:
        print(json.dumps(laws.to_dict(), indent=1))
        return 0
    print(format_summary(laws, counts))
    print(f"\nwrote law card {path}")
    return 0


def format_summary(laws, counts: dict[str, int] | None = None) -> str:
    from embrecipe.laws import FORM, PARAM_NAMES

    lines = []
    if counts:
        lines.append("runs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append(f"law: L(N, D) = {FORM}   (brackets: 90% bootstrap intervals of the mean law)")
    for v, law in laws.laws.items():
        ci = law.param_intervals(0.9)
        parts = []
        for k in PARAM_NAMES:
            s = f"{k}={law.params_[k]:.4g}"
            if ci:
                s += f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]"
            parts.append(s)
        d = law.to_dict()
        rms = d["residual_rms"]
        r = laws.ranges.get(v, {})
        lines.append(f"\n{v}: {law.n_runs_} runs, N {r['N'][0]:.3g}..{r['N'][1]:.3g}, "
                     f"C {r['C'][0]:.3g}..{r['C'][1]:.3g}")
        lines.append("  " + "  ".join(parts))
        res = ", ".join(f"{100 * x:+.2f}%" for x in law.residuals_) if law.residuals_ is not None else ""
        lines.append(f"  residuals (log obs - log fit): rms {100 * rms:.2f}%  [{res}]")
        val = laws.validation.get(v, {})
        if "mean_abs_rel_error" in val:
            lines.append(f"  leave-largest-budget-out ({val['held_out_budget']:.3g} held out, {val['n_test']} runs): "
                         f"mean |error| {100 * val['mean_abs_rel_error']:.2f}%, max {100 * val['max_abs_rel_error']:.2f}%")
        elif val:
            lines.append(f"  leave-largest-budget-out: n/a ({val.get('skipped')})")
        for model, e in sorted((laws.recipe.get(v) or {}).items()):
            tried = e.get("lr_candidates") or []
            lines.append(f"  lr {e['lr']:.3g} on {model.rsplit('/', 1)[-1]}"
                         + (f" (best of {', '.join(f'{x:.3g}' for x in tried)})" if len(tried) > 1 else "")
                         + f", batch size {e.get('batch_size')}")
        t = laws.trends.get(v, {})
        if t.get("slope") is not None:
            lines.append(f"  best-loss trend: log10 L = {t['intercept']:.3f} + {t['slope']:.4f} log10 C")
        choice = law.form_choice_ or {}
        errs = ", ".join(f"{k} {100 * e:.2f}%" for k, e in (choice.get("errors") or {}).items() if e is not None)
        lines.append(f"  estimator: {law.estimator}" + (f" (chosen by leave-largest-budget-out |log error|: {errs})"
                                                         if errs else ""))
        if "run_coverage" in val:
            lines.append(f"  held-out runs inside their {val['run_interval_level']:.0%} single-run interval: "
                         f"{sum(r['covered'] for r in val['runs'])}/{len(val['runs'])}")
        for w in law.warnings_ + list((law.diagnostics_ or {}).get("warnings", [])):
            lines.append(f"  warning: {w}")
    noise = laws.noise or {}
    if noise.get("sigma") is not None:
        lines.append(f"\nrun-to-run noise: sigma {100 * noise['sigma']:.2f}% of log-loss from {noise.get('source')}")
    else:
        lines.append(f"\nrun-to-run noise: {noise.get('note') or 'not measured'} (labelled in the card)")
    for v, why in laws.skipped.items():
        lines.append(f"\nnot fitted: {v}: {why}")
    return "\n".join(lines)
