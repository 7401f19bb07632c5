"""Rendering benchmarks/results.md from results.json: one section per machine, CPU suite (run.py) or GPU
section (gpu.py). Both scripts write through here; it imports neither."""

from __future__ import annotations

import json
from pathlib import Path


def derive(row: dict) -> dict:
    """The comparison that does not depend on which batches were timed.

    embrecipe's bucketed batches differ in length, so pairs/s over a few timed steps depends on which batches
    they were. Model FLOP/s is exact per step for embrecipe; for the baseline, whose batches are random (unbiased
    samples of the pool), pairs/s × the pool's mean FLOPs per pair is its model FLOP/s. The ratio of the two is
    the speed-up over a whole epoch of the same pool, and ``embrecipe_pairs_s_epoch`` its pairs/s equivalent.
    """
    flops_per_pair = row["baseline_model_gflops_est"] * 1e9 / row["baseline_pairs_s"]
    row["embrecipe_pairs_s_epoch"] = row["embrecipe_model_gflops"] * 1e9 / flops_per_pair
    row["ratio"] = row["embrecipe_pairs_s_epoch"] / row["baseline_pairs_s"]
    row["ratio_timed_batches"] = row["embrecipe_pairs_s"] / row["baseline_pairs_s"]
    return row


def merge_runs(path: Path, results: dict) -> dict:
    """One results file for every machine: a new run replaces only the earlier run on the same device."""
    runs = []
    if path.exists():
        old = json.loads(path.read_text())
        runs = old["runs"] if "runs" in old else [old]
    runs = [r for r in runs if (r["device"], r["smoke"]) != (results["device"], results["smoke"])]
    return {"runs": [*runs, results]}


def render_file(data: dict) -> str:
    parts = ["# embrecipe benchmarks", "",
             "Command: `python benchmarks/run.py` (one section per machine; a rerun replaces its machine's section). "
             "Medians of repeated measurements in one run; ratios pair by pair from the same run.", ""]
    return "\n".join(parts) + "\n" + "\n".join(render_markdown(r) for r in data["runs"])


def _mib(m: dict, which: str) -> str:
    value = m[f"peak_rss_mib_{which}"]
    return f"{value:.0f} MiB" if value is not None else m.get("errors", {}).get(which, "n/a")


def render_markdown(r: dict) -> str:
    if r.get("kind") == "gpu":
        return render_gpu_markdown(r)
    lines = [
        f"## {r['device']}" + (" (SMOKE RUN: tiny models, not representative)" if r["smoke"] else ""),
        "",
        f"Measured {r['date']} on **{r['device']}**, {r['threads']} threads, precision {r['precision']}; "
        f"Python {r['python']}, " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        "### Peak (matmul)",
        "",
        "| dtype | n | median GFLOP/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p['dtype']} | {p['n']} | {p['gflops']:.1f} |" for p in r["peak"]]
    lines += ["", "### Training throughput: embrecipe vs plain sentence-transformers trainer", "",
              "Same model, method, data pool, batch size, max length 75, precision; symmetric MNRL scale 40; "
              "medians over the timed steps after one warm-up step. Model FLOP/s use the budget convention "
              "(6N/token for full, etc.): exact per step for embrecipe, pairs/s × the pool's mean FLOPs per pair for "
              "the baseline (its batches are random, so unbiased). **ratio** = embrecipe model FLOP/s ÷ baseline "
              "model FLOP/s, i.e. the speed-up over an epoch of the same pool; the pairs/s of the few timed "
              "bucketed batches (last column) depend on which lengths were drawn and are shown for transparency. "
              "Utilisation = model FLOP/s ÷ measured peak. SmolLM2 (a Llama) has no biases, so bias-only runs on "
              "`neox-twin-Lk`: a random-initialised GPT-NeoX with smollm2-Lk's width, depth, heads and tokenizer "
              "(throughput does not depend on the weights' values). `qwen2.5-coder-0.5b-L2` is bias-only on real "
              "pre-trained weights with q/k/v biases (the opt-in second testbed family: an instruct-tuned coder "
              "model, quantized twice — AWQ, then 4-bit GGUF — and de-quantized; not a pristine base model; "
              "its N is 4.2× smollm2-L2's). A row with a date after its model name was measured separately "
              "(`python benchmarks/run.py --qwen-bias-row`) on the same machine as the rest of the section.",
              "",
              "| model | method | batch | embrecipe pairs/s (epoch-equiv.) | ST pairs/s | ratio | "
              "embrecipe model GFLOP/s | ST model GFLOP/s | util. vs fp32 peak | util. vs bf16 peak | "
              "padded/real tokens (timed batches) | pairs/s ratio on timed batches |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["training"]:
        derive(x)
        label = x["model"] + (f" (measured {x['measured']}, load average {x['load_avg_1min']:.1f})"
                              if x.get("measured") else "")
        lines.append(f"| {label} | {x['method']} | {x['batch']} | {x['embrecipe_pairs_s_epoch']:.2f} | "
                     f"{x['baseline_pairs_s']:.2f} | **{x['ratio']:.2f}×** | {x['embrecipe_model_gflops']:.1f} | "
                     f"{x['baseline_model_gflops_est']:.1f} | {x['util_vs_fp32_peak']:.0%} | "
                     f"{x['util_vs_bf16_peak']:.0%} | {x['padded_over_real']:.2f} | "
                     f"{x['ratio_timed_batches']:.2f} |")
    if r.get("partial"):
        lines += ["", "Partial section: only the rows above were measured on this machine "
                  "(`python benchmarks/run.py --qwen-bias-row`); a full run replaces it.", ""]
        return "\n".join(lines)
    m = r["memory"]
    e = r["embedding"]
    f = r["fit_plan"]
    lines += ["", "### Memory (one full fine-tuning step, fp32)", "",
              f"{m['model']}, batch {m['batch']} pairs: peak RSS **{_mib(m, 'plain')}** without "
              f"GradCache, **{_mib(m, 'gradcache')}** with GradCache (mini-batch {m['mini_batch']})"
              + (f"; peak GPU memory {m['peak_gpu_mib_plain']:.0f} MiB vs {m['peak_gpu_mib_gradcache']:.0f} MiB."
                 if m.get("peak_gpu_mib_plain") else "."),
              "", "### Embedding", "",
              f"{e['texts']} texts with {e['model']}: `SentenceTransformer(...).encode` {e['st_encode_s_median']:.2f} s, "
              f"`embrecipe embed` {e['embrecipe_embed_s_median']:.2f} s ({e['note']}); as a new process "
              f"{e['embrecipe_embed_new_process_s']:.2f} s.",
              "", "### Law fitting and planning", "",
              f"{f['runs']} (synthetic) runs, {f['bootstrap']} bootstrap refits per variant: fit "
              f"{f['fit_s_median']:.2f} s, plan {f['plan_s_median'] * 1000:.1f} ms (medians).", ""]
    return "\n".join(lines)


def _f(x, fmt: str, scale: float = 1.0) -> str:
    return "—" if x is None else format(x / scale, fmt)


def render_gpu_markdown(r: dict) -> str:
    peak = r["peak"][0]["gflops"] / 1e3
    lines = [f"## {r['device']}" + (" (PARTIAL: the run stopped before the end)" if r.get("partial") else "")
             + (" (CPU REHEARSAL of the GPU driver: tiny models, not a measurement)" if r.get("smoke") else ""), "",
             f"Measured {r['date']} on **{r['device']}**, bf16 autocast with fp32 master weights; "
             f"Python {r['python']}, " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ". "
             f"Command: `{r.get('command', '')}`.", "",
             f"**Measured peak: {peak:.0f} TFLOP/s** (bf16 8192³ matmul, median of 10, same run). "
             "MFU = model FLOP/s (budget convention) ÷ that peak.", ""]
    if r.get("models"):
        lines += ["Models: " + "; ".join(f"{k}: {v}" for k, v in r["models"].items())
                  + ". smollm2-L30 is the whole SmolLM2-135M (all 30 layers).", ""]
    lines += ["### Training: embrecipe vs plain sentence-transformers trainer (MNRL both directions, scale 40, "
              "bf16, max length 75)", "",
              "| model | method | batch | embrecipe pairs/s | ST pairs/s | ratio | embrecipe TFLOP/s | MFU | "
              "ST TFLOP/s | ST MFU | embrecipe peak MiB | ST peak MiB | executed/real tokens |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["training"]:
        err = " ".join(f"{k}: {x[k]}" for k in ("embrecipe_error", "st_error") if k in x)
        lines.append(
            f"| {x['model']} | {x['method']} | {x['batch']} | {_f(x.get('embrecipe_pairs_per_s'), '.0f')} | "
            f"{_f(x.get('st_pairs_per_s'), '.0f')} | "
            + (f"**{x['ratio']:.2f}×**" if "ratio" in x else "—") + " | "
            f"{_f(x.get('embrecipe_model_flops_per_s'), '.1f', 1e12)} | {_f(x.get('embrecipe_mfu'), '.1%')} | "
            f"{_f(x.get('st_model_flops_per_s'), '.1f', 1e12)} | {_f(x.get('st_mfu'), '.1%')} | "
            f"{_f(x.get('embrecipe_peak_mib'), '.0f')} | {_f(x.get('st_peak_mib'), '.0f')} | "
            f"{_f(x.get('embrecipe_padded_over_real'), '.2f')} |" + (f" {err}" if err else ""))
    if r.get("fast_paths"):
        lines += ["", "### One change at a time (smollm2-L30, full, batch 1024)", "",
                  "| variant | TFLOP/s | MFU | pairs/s | peak MiB | executed/real tokens |", "|---|---:|---:|---:|---:|---:|"]
        for v in r["fast_paths"]:
            if "error" in v:
                lines.append(f"| {v['variant']} | failed: {v['error']} | | | | |")
                continue
            lines.append(f"| {v['variant']} | {v['model_flops_per_s'] / 1e12:.1f} | {v['mfu']:.1%} | "
                         f"{v['pairs_per_s']:.0f} | {_f(v['peak_mib'], '.0f')} | {v['padded_over_real']:.2f} |")
    s = r.get("sweep")
    if s:
        lines += ["", "### Sweep utilization", ""]
        if "error" in s:
            lines.append(f"failed: {s['error']}")
        else:
            lines.append(f"{s['cells']} cells ({s['description']}): {s['model_flops']:.3g} model FLOPs in "
                         f"{s['wall_s']:.1f} s = **{s['utilization']:.1%}** of the measured peak "
                         f"(workers {s['workers']}; sequential: {_f(s.get('sequential_utilization'), '.1%')}).")
    if r.get("skipped"):
        lines += ["", "Not measured (deadline): " + "; ".join(r["skipped"]) + "."]
    return "\n".join(lines) + "\n"
