"""Calibrate and validate the planner's training-memory formula (:func:`embrecipe.planning.units.training_memory`)
against measured peaks on this machine.

Each configuration trains TWO steps in a fresh process (the second step's forward and backward run with
the AdamW states already allocated: the steady state the formula describes) on pairs whose texts all truncate to exactly
``--seq`` tokens (so the number of live activation tokens is known: 2 x batch x seq), in fp32 on the CPU,
and reports the process's peak RSS (``VmHWM``, see benchmarks/run.py for why not ``getrusage``). A
``baseline`` process imports the same libraries and loads nothing: the formula's fixed overhead on this
machine. The activation coefficient kappa and a constant c (memory the formula does not model: the loaded
checkpoint's buffers, tokenizer, allocator arenas) are fitted on the plain full fine-tuning rows only (least
squares of measured-minus-static on the formula's activation term); every other row is a validation point.

    python benchmarks/memory_model.py --model $EMBRECIPE_HOME/testbed/smollm2-L2
    python benchmarks/memory_model.py --compare     # re-print the table from memory_model.json
    (a rerun measures only the configurations missing from memory_model.json: delete it to start over)

Writes benchmarks/memory_model.json (measurements, fitted kappa, relative errors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "memory_model.json"

LORA8 = {"name": "lora", "rank": 8, "alpha": 8.0, "targets": "all-linear"}
LORA32 = {"name": "lora", "rank": 32, "alpha": 32.0, "targets": "all-linear"}
CONFIGS = [  # (method dict, batch, mini-batch or None); calibration: plain full rows and LoRA r8 at 64
    ({"name": "full"}, 16, None),
    ({"name": "full"}, 64, None),
    ({"name": "full"}, 128, None),
    ({"name": "freeze", "trainable_blocks": 0.5}, 64, None),
    (LORA8, 64, None),
    ({"name": "full"}, 64, 8),
    (LORA8, 128, None),
    (LORA32, 64, None),
    ({"name": "freeze", "trainable_blocks": 0.5}, 128, None),
]
CALIBRATION_LORA = (LORA8, 64)


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _long_pairs(path: Path, n: int) -> None:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly zebras".split()
    with path.open("w") as f:
        for i in range(n):
            text = " ".join(words[(i + j) % len(words)] for j in range(200))
            f.write(json.dumps({"query": f"q{i} " + text, "pos": f"p{i} " + text}) + "\n")


def child(model: str, method: str, batch: int, mini: int, seq: int, data: str) -> None:
    import torch  # noqa: F401  (the baseline imports what the training process imports)

    from embrecipe.models.methods import method_from_dict
    from embrecipe.training.trainer import TrainConfig, train_until_stopped

    if method != "baseline":
        train_until_stopped(TrainConfig(model=model, data=data, budget=1e30, batch_size=batch,
                                        mini_batch_size=mini or None, method=method_from_dict(json.loads(method)),
                                        max_seq_length=seq, stop_after_steps=2, progress=False, precision="fp32",
                                        length_bucketing=False))
    print(json.dumps({"peak_bytes": _peak_rss_bytes()}))


def measure(model: str, seq: int, done: dict | None = None) -> dict:
    """Measure every configuration not already in ``done`` (a previous result of the same model and seq)."""
    rows = list(done["rows"]) if done else []
    have = {(json.dumps(r["method"]), r["batch"], r["mini_batch"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        _long_pairs(data, 256)
        for method, batch, mini in [("baseline", 0, None), *CONFIGS]:
            if (json.dumps(method), batch, mini) in have:
                continue
            spec = method if method == "baseline" else json.dumps(method)
            cmd = [sys.executable, __file__, "--child", model, spec, str(batch), str(mini or 0), str(seq), str(data)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"child {cmd} failed:\n{proc.stderr[-3000:]}")
            peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
            rows.append({"method": method, "batch": batch, "mini_batch": mini, "peak_bytes": peak})
            print(rows[-1], flush=True)
            RESULTS.write_text(json.dumps({"model": model, "seq": seq, "rows": rows}, indent=1))  # resumable
    return {"model": model, "seq": seq, "precision": "fp32", "device": _device(), "rows": rows,
            "shape": _shape(model).to_dict()}


def _device() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return "cpu"


def compare(result: dict) -> dict:
    from embrecipe.flops import ModelShape
    from embrecipe.models.methods import method_from_dict
    from embrecipe.planning.units import fit_activation_coefficient, training_memory

    # the shape is saved with the measurements, so the fit reruns without the checkpoint (tests/planning/test_units.py)
    shape = ModelShape.from_dict(result["shape"]) if "shape" in result else _shape(result["model"])
    base = next(r for r in result["rows"] if r["method"] == "baseline")["peak_bytes"]
    rows = [r for r in result["rows"] if r["method"] != "baseline"]

    def est(r: dict, kappa: float, extra: float = 0.0, lora_excess: float = 0.0) -> dict:
        return training_memory(shape, method_from_dict(r["method"]), batch_size=r["batch"], seq_len=result["seq"],
                               mini_batch=r["mini_batch"], param_bytes=4, activation_bytes=4,
                               overhead_bytes=base + extra, kappa=kappa, lora_excess=lora_excess)

    calib = [r for r in rows if r["method"]["name"] == "full" and not r["mini_batch"]]
    kappa, unmodelled = fit_activation_coefficient(
        [(r["peak_bytes"] - est(r, 0.0)["total"], est(r, 1.0)["activations"]) for r in calib])
    lora_row = next(r for r in rows if (r["method"], r["batch"]) == CALIBRATION_LORA and not r["mini_batch"])
    # lambda: the LoRA row's excess over the formula without it, per unit of its activation term
    lora_excess = (lora_row["peak_bytes"] - est(lora_row, kappa, unmodelled)["total"]) / \
        est(lora_row, kappa, unmodelled)["activations"]
    calib.append(lora_row)
    for r in rows:
        e = est(r, kappa, unmodelled, lora_excess)
        r["estimate_bytes"] = e["total"]
        r["relative_error"] = e["total"] / r["peak_bytes"] - 1
        r["estimate_without_unmodelled_bytes"] = e["total"] - unmodelled
        r["used_for_calibration"] = r in calib
    result.update(baseline_bytes=base, kappa=kappa, lora_excess=lora_excess, unmodelled_bytes=unmodelled)
    return result


def _shape(model: str):
    from embrecipe.models.family import shape_of_checkpoint

    return shape_of_checkpoint(model)


def table(result: dict) -> str:
    from embrecipe.models.methods import method_from_dict

    lines = [f"model {result['model']}, seq {result['seq']}, {result['precision']} on {result['device']}; "
             f"baseline (imports only) {result['baseline_bytes'] / 2**20:.0f} MiB; fitted kappa = {result['kappa']:.3f}, "
             f"LoRA excess lambda = {result['lora_excess']:.3f}, "
             f"unmodelled fixed memory c = {result['unmodelled_bytes'] / 2**20:.0f} MiB",
             "| method | batch | mini-batch | measured peak MiB | estimate MiB | error | role |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        m = r["method"]
        if m == "baseline":
            continue
        name = method_from_dict(m).key
        lines.append(f"| {name} | {r['batch']} | {r['mini_batch'] or '-'} | {r['peak_bytes'] / 2**20:.0f} | "
                     f"{r['estimate_bytes'] / 2**20:.0f} | {r['relative_error']:+.1%} | "
                     f"{'calibration' if r['used_for_calibration'] else 'validation'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=6, metavar=("MODEL", "METHOD", "BATCH", "MINI", "SEQ", "DATA"))
    ap.add_argument("--model")
    ap.add_argument("--seq", type=int, default=75)
    ap.add_argument("--compare", action="store_true", help="re-fit and print from the saved measurements")
    args = ap.parse_args()
    if args.child:
        model, method, batch, mini, seq, data = args.child
        child(model, method, int(batch), int(mini), int(seq), data)
        return
    if args.compare:
        result = json.loads(RESULTS.read_text())
    else:
        if not args.model:
            raise SystemExit("--model DIR (e.g. $EMBRECIPE_HOME/testbed/smollm2-L2) is required")
        done = json.loads(RESULTS.read_text()) if RESULTS.is_file() else None
        if done and (done.get("model"), done.get("seq")) != (args.model, args.seq):
            done = None
        result = measure(args.model, args.seq, done)
        RESULTS.write_text(json.dumps(result, indent=1))
    result = compare(result)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
