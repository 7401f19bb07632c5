"""The whole study in one timed session (made for a single short GPU lease): sweep → fit → plan → recipe check.

    python study/full/device_study.py --grid study/full/grid.yaml --out OUT --until EPOCH_SECONDS

1. **sweep**: ``embrecipe sweep GRID --workers W`` in a subprocess (cheapest budgets first, so a cut-off sweep
   still holds whole rungs); stopped at ``--until - --reserve`` if it has not finished. Resumable as usual.
2. **fit**: the laws on every completed run (the store is the source of truth; docs/study.md refits them).
3. **plan** at two budgets not in the grid, one inside the range (geometric middle of the 3rd- and
   2nd-largest rungs) and one ×3 above the largest completed rung, and **train** the planned configuration
   and the two best alternatives at each (exported, into ``check.sqlite``).
4. **embed** the held-out test texts with every check model (``embed_eval_texts``), so the MTEB-style scores
   can be computed where ``mteb`` is installed (``study/full/report.py``).

Everything lands in ``--out``: ``study.sqlite``, ``check.sqlite`` (consistent SQLite backups), ``plans.json``,
``session.json`` (timings, device, versions) and ``emb/*.npz``. The orchestration is plain subprocesses on
purpose: killing a stage at its deadline must leave the stores consistent, which the sweep's claims guarantee.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def backup(src: Path, dst: Path) -> None:
    """A consistent copy of a WAL-mode SQLite store (copying the file alone could miss the WAL)."""
    if not src.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    with sqlite3.connect(src) as a, sqlite3.connect(tmp) as b:
        a.backup(b)
    tmp.replace(dst)


def run_until(cmds: list[list[str]], deadline: float, env: dict[str, str], logs: list[Path]) -> list[int | None]:
    """Start every command (own process group), wait until all end or ``deadline``; then kill the rest."""
    procs = []
    for cmd, lp in zip(cmds, logs, strict=True):
        procs.append(subprocess.Popen(cmd, env=env, stdout=lp.open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(1.0)
    for p in procs:
        if p.poll() is None:
            log(f"deadline: stopping {' '.join(p.args[3:5])} (pid {p.pid})")
            os.killpg(p.pid, signal.SIGTERM)
    t = time.time()
    while time.time() - t < 10 and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return [p.returncode for p in procs]


def check_budgets(budgets: list[float]) -> dict[str, float]:
    """One budget inside the fitted range (between two grid budgets) and one ×3 above it."""
    b = sorted(budgets)
    inside = math.sqrt(b[-3] * b[-2]) if len(b) >= 3 else math.sqrt(b[0] * b[-1])
    return {"inside": inside, "above": 3.0 * b[-1]}


def method_spec(method: dict[str, Any]) -> dict[str, Any]:
    """A method dict as the grid's ``methods`` mapping (each value one combination)."""
    hp = {k: [v] for k, v in method.items() if k != "name" and v is not None}
    return {method["name"]: hp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=str(HERE / "grid.yaml"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--until", type=float, required=True, help="wall-clock end (epoch seconds) of the session")
    ap.add_argument("--reserve", type=float, default=170.0, help="seconds kept after the sweep for fit+check")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--check-workers", type=int, default=6)
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--store-from", default=None,
                    help="start from a copy of this run store (e.g. the committed study/full/study.sqlite), so the "
                         "sweep trains only its missing cells")
    args = ap.parse_args(argv)

    import yaml

    from embrecipe.errors import EmbrecipeError
    from embrecipe.laws import fit_laws
    from embrecipe.planning.planner import plan
    from embrecipe.runs.store import RunStore

    out = Path(args.out)
    work = Path(os.environ.get("STUDY_WORK", "/tmp/study"))
    work.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TOKENIZERS_PARALLELISM": "false"}
    session: dict[str, Any] = {"started": time.time(), "until": args.until, "workers": args.workers}
    try:
        import torch

        session["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        session["torch"] = torch.__version__
    except Exception as exc:
        session["device"] = f"unknown ({exc})"

    def save_session() -> None:
        (out / "session.json").write_text(json.dumps(session, indent=1, default=str) + "\n")

    # -- 1. sweep
    store = work / "study.sqlite"
    if args.store_from and not store.exists():
        backup(Path(args.store_from), store)
        log(f"resuming from {args.store_from}")
    grid_raw = yaml.safe_load(Path(args.grid).read_text())
    t0 = time.time()
    rc = run_until([[sys.executable, "-m", "embrecipe.cli", "sweep", args.grid, "--store", str(store),
                     "--workers", str(args.workers), "--no-progress"]],
                   args.until - args.reserve, env, [out / "logs" / "sweep.log"])
    session["sweep"] = {"seconds": time.time() - t0, "returncode": rc[0]}
    backup(store, out / "study.sqlite")
    with RunStore(store) as st:
        records = st.records()
        session["sweep"]["counts"] = st.counts()
    session["sweep"]["model_flops"] = sum(float(r.model_flops or 0) for r in records)
    log(f"sweep: {session['sweep']}")
    save_session()

    # -- 2. fit on every completed run, 3. plan at the check budgets
    done_budgets = sorted({float(r.budget) for r in records})
    grid_budgets = sorted(float(b) for b in grid_raw["budgets"])
    # a rung counts as fitted only when every configuration of it finished
    per_budget = {b: sum(1 for r in records if math.isclose(float(r.budget), b, rel_tol=1e-6)) for b in done_budgets}
    full_rungs = [b for b in grid_budgets if per_budget.get(b, 0) >= max(per_budget.values(), default=0) * 0.8]
    t0 = time.time()
    try:
        laws = fit_laws(records, bootstrap=args.bootstrap,
                        provenance="device_study.py (first fit; refit in report.py)")
    except EmbrecipeError as exc:
        session["fit_error"] = str(exc)
        save_session()
        log(f"no recipe check: {exc}")
        return 1
    checks = check_budgets(full_rungs or done_budgets)
    plans: dict[str, Any] = {"check_budgets": checks, "fit_seconds": time.time() - t0, "plans": {}}
    cells: list[tuple[str, float, Any]] = []
    for label, budget in checks.items():
        p = plan(budget, laws, batch_size=int(grid_raw["train"]["batch_size"]))
        plans["plans"][label] = p.to_dict()
        picked = [c for c in p.candidates if c.feasible][:3]
        for c in picked:
            cells.append((label, budget, c))
        log(f"plan at {budget:.3g} ({label}): " + "; ".join(f"{c.variant} on {c.model} ({c.loss:.4f})" for c in picked))
    (out / "plans.json").write_text(json.dumps(plans, indent=1) + "\n")

    # -- 3b. train the checks: one tiny grid per (model, variant, budget), all into check.sqlite
    check_store = work / "check.sqlite"
    models_dir = work / "models"
    cmds, logs = [], []
    train = dict(grid_raw["train"])
    for k in ("data", "val_data"):
        if k in train:
            train[k] = str((Path(args.grid).parent / train[k]).expanduser().resolve())
    for i, (label, budget, c) in enumerate(cells):
        g = {"name": f"check-{label}-{i}", "models": [{"name": c.model, "path": c.path}],
             "methods": method_spec(c.method), "budgets": [budget], "train": train, "out": str(models_dir),
             "min_steps": 1, "allow_repeat": True,
             # the check trains exactly like the grid did (same trainer, same data statistics)
             **{k: grid_raw[k] for k in ("trainer", "tokens_per_pair", "dataset_pairs") if k in grid_raw}}
        gp = work / f"check_{i}.yaml"
        gp.write_text(json.dumps(g))
        cmds.append([sys.executable, "-m", "embrecipe.cli", "sweep", str(gp), "--store", str(check_store),
                     "--no-progress"])
        logs.append(out / "logs" / f"check_{i}.log")
    t0 = time.time()
    # at most check_workers at once: later ones start when earlier ones finish
    rcs: list[int | None] = []
    for s in range(0, len(cmds), args.check_workers):
        rcs += run_until(cmds[s:s + args.check_workers], args.until - 45, env, logs[s:s + args.check_workers])
    session["check"] = {"seconds": time.time() - t0, "returncodes": rcs}
    backup(check_store, out / "check.sqlite")
    save_session()

    # -- 4. embeddings of the held-out test texts (scored with mteb elsewhere)
    from embrecipe.evaluate import embed_eval_texts

    t0 = time.time()
    emb = out / "emb"
    emb.mkdir(exist_ok=True)
    with RunStore(check_store) as st:
        check_records = st.records()
    for r in check_records:
        d = models_dir / r.key
        if time.time() > args.until - 15 or not (d / "modules.json").is_file():
            continue
        try:
            embed_eval_texts(d, emb / f"{r.key}.npz", limit=args.eval_limit)
        except Exception as exc:
            log(f"embedding {r.key} failed: {exc}")
    session["embed_seconds"] = time.time() - t0
    session["finished"] = time.time()
    save_session()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
