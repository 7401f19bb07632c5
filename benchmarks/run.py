"""embrecipe benchmarks: measured numbers, written to benchmarks/results.{md,json}.

    python benchmarks/run.py              # the full suite (about 30 min on 2 CPU cores)
    python benchmarks/run.py --smoke      # seconds: tiny models, correctness of the harness only (CI)
    python benchmarks/run.py --device cuda --quick --assets .gpu_bench   # the GPU section (< 8 min on one card)
    python benchmarks/run.py --prepare-gpu .gpu_bench   # here, once: what a bare GPU box needs (see gpu.sh)

Every timing is the median of repeated measurements in this one process; ratios are computed pair by pair
(same model, method, batch size, sequence length, precision, data pool) from medians of the same run.
Runs unchanged on a CUDA GPU (bf16 where supported); the device is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    auto_precision,
    device_name,
    gemm_peak,
    per_pair_model_flops,
    pool,
    st_trainer_steps,
    trainer_steps,
)
from render import derive, merge_runs, render_file  # noqa: E402


def biased_twin(smollm_dir: str, out: Path) -> str:
    """A GPT-NeoX (Pythia-style, every linear and norm has a bias) of the same width and depth as a testbed model.

    SmolLM2 is a Llama: it has no bias parameters, so bias-only tuning cannot run on the testbed. Throughput does
    not depend on the weights' values, so a random-initialised twin with the same tokenizer, hidden size, heads and
    layer count (MLP width chosen so the block has about as many parameters) measures the bias-only method on the
    same data at the same scale. The twin is labelled as such in the results.
    """
    from transformers import AutoConfig, AutoTokenizer, GPTNeoXConfig, GPTNeoXModel

    if (out / "config.json").exists():
        return str(out)
    import torch

    src = AutoConfig.from_pretrained(smollm_dir)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=src.vocab_size, hidden_size=src.hidden_size,
                           num_attention_heads=src.num_attention_heads, num_hidden_layers=src.num_hidden_layers,
                           intermediate_size=src.intermediate_size * 3 // 2, max_position_embeddings=2048,
                           rotary_pct=1.0, use_parallel_residual=True, tie_word_embeddings=False)
    GPTNeoXModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm_dir).save_pretrained(out)
    return str(out)


def embrecipe_steps(model_dir: str, method, data, batch: int, steps: int, precision: str, **kw) -> dict:
    """Train ``steps`` steps with embrecipe's trainer; medians over steps 2.. (step 1 is warm-up)."""
    state = trainer_steps(model_dir, data, batch, steps, precision, method=method, **kw)
    times = state["step_times"][1:]
    flops = state["step_flops"][1:]
    return {"step_s_median": statistics.median(times), "pairs_per_s": batch / statistics.median(times),
            "model_flops_per_s": sum(flops) / sum(times), "steps_timed": len(times),
            "padded_over_real": state["padded_tokens"] / state["tokens"]}


def st_baseline_steps(model_dir: str, method, data, batch: int, steps: int, precision: str) -> dict:
    """The plain sentence-transformers trainer: same model and method, MNRL in both directions, scale 40."""
    times = st_trainer_steps(model_dir, method, data, batch, steps, bf16=precision == "bf16")["step_times"]
    med = statistics.median(times[1:])
    return {"step_s_median": med, "pairs_per_s": batch / med, "steps_timed": len(times) - 1}


def memory_child(model_dir: str, batch: int, mini: int | None) -> None:
    from embrecipe.training.trainer import TrainConfig, train_until_stopped

    train_until_stopped(TrainConfig(model=model_dir, data=pool(2 * batch), budget=1e30, batch_size=batch,
                                    stop_after_steps=1, progress=False, precision="fp32", mini_batch_size=mini))
    import torch

    # on a GPU the batch lives in device memory, so that peak is the number that matters there
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"max_rss_mib": _peak_rss_mib(), "gpu_mib": gpu}))


def _peak_rss_mib() -> float:
    """This process's own peak RSS.

    Not ``getrusage``: on Linux its ``ru_maxrss`` survives ``exec`` and so starts at the RSS of the parent at
    fork time (a benchmark process that has already trained an 8-layer model at batch 256 is ~17 GB), which
    masked the GradCache saving in an earlier run. ``VmHWM`` belongs to the new address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(model_dir: str, batch: int, mini: int | None) -> dict:
    """Peak RSS (and peak CUDA memory on a GPU) of one training step, in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-child", model_dir, str(batch), str(mini or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. SIGKILL from the kernel's OOM killer: a result too, recorded as such
        why = "killed (out of memory)" if proc.returncode == -9 else f"failed (exit {proc.returncode})"
        return {"max_rss_mib": None, "gpu_mib": None, "error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def embed_throughput(model_dir: str, texts: list[str], reps: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from embrecipe.cli import main as cli_main

    st_times, cli_times, proc_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "texts.txt"
        src.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
        for _ in range(reps):
            t = time.perf_counter()
            m = SentenceTransformer(model_dir)
            m.encode(texts, batch_size=64, normalize_embeddings=True)
            st_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            cli_main(["embed", "--model", model_dir, str(src), "--out", str(Path(tmp) / "e.npy")])
            cli_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "embrecipe.cli", "embed", "--model", model_dir, str(src),
                        "--out", str(Path(tmp) / "e.npy")], check=True, capture_output=True)
        proc_times.append(time.perf_counter() - t)
    return {"texts": len(texts), "st_encode_s_median": statistics.median(st_times),
            "embrecipe_embed_s_median": statistics.median(cli_times),
            "embrecipe_embed_new_process_s": proc_times[0],
            "note": "in one process, both including loading the model (the CLI also reads the text file and "
                    "writes the .npy); the new-process figure adds Python start-up and importing torch"}


def fit_plan_latency(n_runs: int, reps: int, n_boot: int = 200) -> dict:
    from embrecipe.laws import fit_laws
    from embrecipe.planning.planner import plan
    from embrecipe.sweep.synthetic import synthetic_train

    records = []
    sizes = [(64, 2), (96, 4), (128, 6), (192, 8), (256, 12)]
    methods = [{"name": "full"}, {"name": "lora", "rank": 8}, {"name": "lora", "rank": 32},
               {"name": "freeze", "trainable_blocks": 0.5}]
    budgets = [1e12 * 2**i for i in range(10)]
    i = 0
    while len(records) < n_runs:
        h, layer = sizes[i % len(sizes)]
        m = methods[(i // len(sizes)) % len(methods)]
        b = budgets[(i // (len(sizes) * len(methods))) % len(budgets)]
        records.append(synthetic_train({"model": f"toy-h{h}-l{layer}", "method": m, "budget": b,
                                        "batch_size": 64, "seed": i}))
        i += 1
    fit_t, plan_t = [], []
    for _ in range(reps):
        t = time.perf_counter()
        laws = fit_laws(records, bootstrap=n_boot, provenance="benchmark (synthetic)")
        fit_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        plan(1e16, laws)
        plan_t.append(time.perf_counter() - t)
    return {"runs": len(records), "bootstrap": n_boot, "fit_s_median": statistics.median(fit_t),
            "plan_s_median": statistics.median(plan_t)}


def training_row(name: str, model_dir: str, method, bs: int, data, steps: int, precision: str,
                 peak: dict) -> dict | None:
    """One row of the training table: embrecipe and the plain sentence-transformers trainer side by side."""
    d = data if len(data) >= bs * (steps + 2) else pool(bs * (steps + 2))
    try:
        ours = embrecipe_steps(model_dir, method, d, bs, steps, precision)
    except Exception as exc:  # e.g. bias-only on a model without biases
        print(f"skip {name} {method.key}: {exc}", flush=True)
        return None
    base = st_baseline_steps(model_dir, method, d, bs, steps, precision)
    fpp = per_pair_model_flops(model_dir, method, d)
    denom = peak["bfloat16"] if precision == "bf16" else peak["float32"]
    row = {"model": name, "method": method.key, "batch": bs, "seq": 75,
           "embrecipe_pairs_s": ours["pairs_per_s"], "baseline_pairs_s": base["pairs_per_s"],
           "embrecipe_model_gflops": ours["model_flops_per_s"] / 1e9,
           "baseline_model_gflops_est": base["pairs_per_s"] * fpp / 1e9,
           "util_vs_fp32_peak": ours["model_flops_per_s"] / 1e9 / peak["float32"],
           "util_vs_bf16_peak": ours["model_flops_per_s"] / 1e9 / peak["bfloat16"],
           "util_vs_precision_peak": ours["model_flops_per_s"] / 1e9 / denom,
           "padded_over_real": ours["padded_over_real"], "steps_timed": ours["steps_timed"]}
    derive(row)
    print(f"{name:12s} {method.key:12s} b={bs:4d}  embrecipe {row['embrecipe_pairs_s_epoch']:7.2f} pairs/s  "
          f"ST {row['baseline_pairs_s']:7.2f} pairs/s  ratio {row['ratio']:.2f}  "
          f"{row['embrecipe_model_gflops']:.1f} GFLOP/s", flush=True)
    return row


QWEN_BIAS = "qwen2.5-coder-0.5b-L2"


def qwen_model() -> str | None:
    """The real Qwen2.5-Coder L2 (has q/k/v biases) where its opt-in parts are installed or cached, else None."""
    from embrecipe.testbed import qwen

    if not (qwen.downloads_dir(None) / qwen.GGUF_NAME).is_file() and qwen.plan_fetch(qwen.PARTS, None):
        print("skip qwen2.5-coder-0.5b-L2 (bias-only on real weights): run `embrecipe testbed models --family "
              "qwen2.5-coder-0.5b --layers 2` first", flush=True)
        return None
    return str(qwen.ensure_member(2, log=lambda m: print(m, flush=True)))


def add_qwen_bias_row(out: Path, steps: int) -> int:
    """Measure bias-only on the real Qwen2.5-Coder L2 and put the row into this machine's section of the results
    (replacing an earlier such row). Where this machine has no section yet, a partial one is written: the
    matmul peak, the Qwen row and, for scale, the same method on the random twin of smollm2-L2."""
    import torch

    from embrecipe.models.methods import BiasOnly

    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"runs": []}
    device = device_name()
    model = qwen_model()
    if model is None:
        return 2
    precision = auto_precision()
    runs = [r for r in data["runs"] if r["device"] == device and not r["smoke"]]
    if runs:
        run = runs[0]
        extra: dict[str, str] = {}
    else:
        from embrecipe.testbed.models import ensure_model

        run = {"device": device, "precision": precision, "smoke": False, "partial": True,
               "versions": {p: __import__("importlib.metadata").metadata.version(p) for p in
                            ("embrecipe", "torch", "transformers", "sentence-transformers", "peft")},
               "python": platform.python_version(), "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "peak": [gemm_peak("float32", 2048, 7), gemm_peak("bfloat16", 256, 7)], "training": []}
        data["runs"].append(run)
        extra = {"neox-twin-L2": biased_twin(str(ensure_model(2)), Path(tempfile.mkdtemp()) / "L2")}
    peak = {p["dtype"]: p["gflops"] for p in run["peak"]}
    new_rows = []
    for name, model_dir in [(QWEN_BIAS, model), *extra.items()]:
        row = training_row(name, model_dir, BiasOnly(), 64, pool(64 * (steps + 2)), steps, precision, peak)
        if row is None:
            return 2
        row["measured"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        row["load_avg_1min"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
        new_rows.append(row)
    names = {r["model"] for r in new_rows}
    run["training"] = [x for x in run["training"] if not (x["model"] in names and x["method"] == "bias")] + new_rows
    path.write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_file(data))
    print(f"wrote {out.with_suffix('.md')} and {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long correctness run on tiny models (CI)")
    ap.add_argument("--device", choices=("auto", "cuda"), default="auto",
                    help="cuda: the GPU section (embrecipe vs sentence-transformers, bf16) instead of the CPU suite")
    ap.add_argument("--quick", action="store_true", help="with --device cuda: fewer timed steps (fits 8 minutes)")
    ap.add_argument("--assets", help="with --device cuda: folder written by --prepare-gpu (testbed tokenizer and "
                    "config; used when the testbed GGUF is not installed)")
    ap.add_argument("--deadline-s", type=float, default=450.0,
                    help="with --device cuda: start no new measurement after this many seconds")
    ap.add_argument("--rehearsal", action="store_true", help="with --device cuda: run the GPU driver's code "
                    "path on this CPU with tiny models (checks the driver; measures nothing)")
    ap.add_argument("--prepare-gpu", metavar="DIR", help="write DIR/smollm2 (tokenizer + config of the testbed) "
                    "and DIR/whl (wheels a bare GPU image lacks), then exit")
    ap.add_argument("--out", default=str(HERE / "results"), help="output stem (.md and .json are written)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per trainer (after one warm-up step)")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown from a results JSON")
    ap.add_argument("--qwen-bias-row", action="store_true",
                    help="measure only bias-only on the real qwen2.5-coder-0.5b-L2 (opt-in testbed family) and add "
                         "it to this machine's section of --out")
    args = ap.parse_args()
    if args.qwen_bias_row:
        return add_qwen_bias_row(Path(args.out), args.steps)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        data = data if "runs" in data else {"runs": [data]}
        for run in data["runs"]:
            for row in run["training"]:
                derive(row)
        Path(args.render).write_text(json.dumps(data, indent=2) + "\n")
        Path(args.render).with_suffix(".md").write_text(render_file(data))
        return 0
    if args.memory_child:
        d, b, m = args.memory_child
        memory_child(d, int(b), int(m) or None)
        return 0
    if args.prepare_gpu:
        from gpu import prepare_gpu

        prepare_gpu(Path(args.prepare_gpu))
        return 0
    if args.device == "cuda":
        from gpu import gpu_main

        return gpu_main(args)

    import torch

    from embrecipe.models.methods import BiasOnly, BlockFreezing, FullFineTuning, LoRA

    if args.smoke:
        from embrecipe.testing import make_tiny_decoder

        tmp = Path(tempfile.mkdtemp())
        models = {"tiny-neox": str(make_tiny_decoder(tmp / "neox", "gpt_neox"))}
        batch, steps, big, mem_batch, gemm_n, reps, texts, runs = 8, 2, None, 16, 256, 3, 50, 40
    else:
        from embrecipe.testbed.models import ensure_model

        models = {f"smollm2-L{k}": str(ensure_model(k)) for k in (2, 8)}
        twins = Path(tempfile.mkdtemp())
        models.update({f"neox-twin-L{k}": biased_twin(models[f"smollm2-L{k}"], twins / f"L{k}") for k in (2, 8)})
        qwen_l2 = qwen_model()  # bias-only on real pre-trained weights, where the opt-in family is present
        if qwen_l2 is not None:
            models[QWEN_BIAS] = qwen_l2
        batch, steps, big, mem_batch, gemm_n, reps, texts, runs = 64, args.steps, 256, 1024, 2048, 7, 2000, 200
    precision = auto_precision()
    results: dict = {"device": device_name(), "precision": precision, "smoke": args.smoke,
                     "versions": {p: __import__("importlib.metadata").metadata.version(p) for p in
                                  ("embrecipe", "torch", "transformers", "sentence-transformers", "peft")},
                     "python": platform.python_version(), "threads": torch.get_num_threads(),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(f"device: {results['device']}, precision {precision}", flush=True)

    # 1. peak
    results["peak"] = [gemm_peak("float32", gemm_n, reps)]
    bf16_n = gemm_n if (torch.cuda.is_available() or precision == "bf16") else 256  # emulated bf16 is slow
    results["peak"].append(gemm_peak("bfloat16", bf16_n, reps))
    peak = {p["dtype"]: p["gflops"] for p in results["peak"]}
    print("peak GFLOP/s:", {k: round(v, 1) for k, v in peak.items()}, flush=True)

    # 2. memory first, while this process is small: a child forked from a large parent can be OOM-killed
    first = next(iter(models.values()))
    mini = 32 if not args.smoke else 4
    plain, cached = peak_memory(first, mem_batch, None), peak_memory(first, mem_batch, mini)
    results["memory"] = {"model": next(iter(models)), "batch": mem_batch, "mini_batch": mini,
                         "peak_rss_mib_plain": plain["max_rss_mib"], "peak_rss_mib_gradcache": cached["max_rss_mib"],
                         "peak_gpu_mib_plain": plain["gpu_mib"], "peak_gpu_mib_gradcache": cached["gpu_mib"],
                         "errors": {k: v["error"] for k, v in (("plain", plain), ("gradcache", cached))
                                    if "error" in v}}
    print("memory:", results["memory"], flush=True)

    # 3. training throughput, side by side
    data = pool(max(batch * (steps + 2), 256) if not args.smoke else 64)
    rows = []
    methods = [FullFineTuning(), BlockFreezing(0.5), BiasOnly(), LoRA(rank=8)]
    if args.smoke:
        methods = [FullFineTuning(), LoRA(rank=8)]
    # the twins exist only for bias-only, which the (bias-free) SmolLM2 models cannot take; the Qwen L2 row is
    # there for bias-only on real weights
    combos = [(name, m, batch) for name in models for m in methods
              if name.startswith(("neox-twin", "qwen")) == isinstance(m, BiasOnly)]
    if big:
        combos.append(("smollm2-L8", FullFineTuning(), big))
    for name, method, bs in combos:
        row = training_row(name, models[name], method, bs, data, steps, precision, peak)
        if row is not None:
            rows.append(row)
    results["training"] = rows
    # the slow part is done: keep it even if a later section fails
    Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results, indent=2) + "\n")

    # 4. embedding
    from embrecipe.models.loading import load_sentence_transformer

    with tempfile.TemporaryDirectory() as tmp:
        st_dir = Path(tmp) / "st"
        load_sentence_transformer(first).save(str(st_dir))
        results["embedding"] = {"model": next(iter(models)),
                                **embed_throughput(str(st_dir), pool(texts).queries, 3)}
    print("embedding:", results["embedding"], flush=True)

    # 5. fit and planner latency
    results["fit_plan"] = fit_plan_latency(runs, 3 if not args.smoke else 1, 200 if not args.smoke else 10)
    print("fit/plan:", results["fit_plan"], flush=True)

    out = Path(args.out)
    data = merge_runs(out.with_suffix(".json"), results)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_file(data))
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
