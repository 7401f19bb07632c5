"""The GPU section of benchmarks/results.md (issue 11): one run on one card, its own measured bf16 peak.

Called through ``benchmarks/run.py --device cuda [--quick] --assets DIR`` (``benchmarks/gpu.sh`` does the
whole lease: install the carried wheels, run, copy the results to $OUT). Every measurement is written to
``results.{json,md}`` as soon as it exists (the section says ``partial`` until the end), so a run cut short by
its deadline or a kill still leaves what it measured. Nothing is downloaded: the models are the testbed's
(built from the GGUF when it is installed) or, on a bare GPU box, *shape twins*: a random-initialised
``LlamaModel`` with the testbed member's exact config and the testbed tokenizer (throughput does not depend on
the weights' values; the table says which was used).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    device_name,
    free_device_memory,
    gemm_peak,
    model_dir,
    peak_cuda_mib,
    per_pair_model_flops,
    pool,
    st_trainer_steps,
    trainer_steps,
)
from render import merge_runs, render_file, render_gpu_markdown  # noqa: E402

WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "sentence-transformers==6.2.0",
          "transformers==5.24.0", "peft==0.21.2"]


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "source tree" if pkg == "embrecipe" else "not installed"


def prepare_gpu(dest: Path) -> None:
    """Here (with the testbed and a network): the tokenizer + config a GPU box needs, and the wheels its image
    lacks (datasets for the sentence-transformers trainer; the versions this repository is tested with)."""
    from embrecipe.testbed.models import ensure_model

    src = ensure_model(30)
    out = dest / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)
    whl = dest / "whl"
    whl.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux2014_x86_64", "--platform", "any", "-d", str(whl), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"wrote {dest} ({size / 2**20:.1f} MiB): carry it with the run")


def embrecipe_gpu(model: str, method, data, batch: int, steps: int, precision: str = "bf16", **overrides) -> dict:
    """embrecipe's trainer at its defaults (bf16 autocast, fp32 master weights). The trainer syncs at step 1 and
    at the end, so the summed host times of steps 2.. are the device's time for them."""
    free_device_memory()
    t = time.perf_counter()
    state = trainer_steps(model, data, batch, steps, precision, method=method, **overrides)
    wall = time.perf_counter() - t
    times, flops = state["step_times"][1:], state["step_flops"][1:]
    return {"pairs_per_s": batch * len(times) / sum(times), "model_flops_per_s": sum(flops) / sum(times),
            "peak_mib": peak_cuda_mib(), "steps_timed": len(times),
            "padded_over_real": state["padded_tokens"] / state["tokens"], "call_s": wall,
            "execution": state.get("execution")}


def st_gpu(model: str, method, data, batch: int, steps: int, bf16: bool = True) -> dict:
    """The plain sentence-transformers trainer (MNRL both directions, scale 40, bf16). Timed from the start of
    step 2 to the end of the last step, synchronising only there."""
    free_device_memory()
    elapsed = st_trainer_steps(model, method, data, batch, steps, bf16=bf16)["timed_s"]
    return {"pairs_per_s": batch * steps / elapsed, "peak_mib": peak_cuda_mib(), "steps_timed": steps}


def _save(results: dict, out: Path) -> None:
    data = merge_runs(out.with_suffix(".json"), results)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_file(data))


def gpu_main(args) -> int:
    import torch

    from embrecipe.models.methods import BlockFreezing, FullFineTuning, LoRA

    rehearsal = bool(getattr(args, "rehearsal", False))
    if not torch.cuda.is_available() and not rehearsal:
        raise SystemExit("--device cuda: no CUDA device here")
    t_start = time.time()
    deadline = t_start + args.deadline_s
    out = Path(args.out)
    assets = Path(args.assets) if args.assets else None
    tmp = Path(tempfile.mkdtemp(prefix="embrecipe-gpu-"))
    results: dict = {"kind": "gpu", "device": f"{device_name()} (GPU)", "smoke": rehearsal, "partial": True,
                     "precision": "bf16", "threads": torch.get_num_threads(), "python": sys.version.split()[0],
                     "versions": {p: _version(p) for p in ("embrecipe", "torch", "transformers",
                                                           "sentence-transformers", "peft", "datasets")},
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
                     "training": [], "fast_paths": [], "sweep": None, "skipped": []}
    # the denominator: this card's bf16 matmul (8192^3, random data), median of 10 after warm-up
    n_peak = 256 if rehearsal else 8192
    for _ in range(3):
        gemm_peak("bfloat16", n_peak, 1)
    results["peak"] = [gemm_peak("bfloat16", n_peak, 10)]
    peak = results["peak"][0]["gflops"] * 1e9
    print(f"{results['device']}: bf16 matmul peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    _save(results, out)

    steps_big, steps_small = (5, 20) if args.quick else (10, 50)
    big_batch, small_batch = 1024, 32
    models = {}
    if rehearsal:  # the same code path on CPU with tiny models: a check of the driver, not a measurement
        from embrecipe.testing import make_tiny_decoder

        steps_big, steps_small, big_batch, small_batch = 1, 2, 16, 8
        for layers in (30, 8):
            models[f"smollm2-L{layers}"] = (str(make_tiny_decoder(tmp / f"tiny{layers}", "llama")), "tiny rehearsal")
    else:
        for layers in (30, 8):
            models[f"smollm2-L{layers}"] = model_dir(layers, assets, tmp)
    precision = "auto" if rehearsal else "bf16"
    results["models"] = {k: v[1] for k, v in models.items()}
    combos = []
    for name in ("smollm2-L30", "smollm2-L8"):  # L30 is the whole SmolLM2-135M (all 30 layers)
        for batch in (big_batch, small_batch):
            for method in (FullFineTuning(), BlockFreezing(0.5), LoRA(rank=32)):
                combos.append((name, method, batch))
    per_row_s = 30.0
    for name, method, batch in combos:
        if time.time() + per_row_s > deadline:
            results["skipped"].append(f"{name} {method.key} b{batch}: deadline")
            continue
        t_row = time.time()
        steps = steps_big if batch == big_batch else steps_small
        path = models[name][0]
        data = pool(batch * (steps + 2))
        row = {"model": name, "method": method.key, "batch": batch, "seq": 75}
        try:
            ours = embrecipe_gpu(path, method, data, batch, steps, precision=precision)
            row.update({f"embrecipe_{k}": v for k, v in ours.items()})
            row["embrecipe_mfu"] = ours["model_flops_per_s"] / peak
        except Exception as exc:  # recorded, not fatal: the other rows still run
            row["embrecipe_error"] = f"{type(exc).__name__}: {exc}"[:300]
        try:
            base = st_gpu(path, method, data, batch, steps, bf16=not rehearsal)
            fpp = per_pair_model_flops(path, method, data)
            row.update({f"st_{k}": v for k, v in base.items()})
            row["st_model_flops_per_s"] = base["pairs_per_s"] * fpp
            row["st_mfu"] = row["st_model_flops_per_s"] / peak
            if "embrecipe_model_flops_per_s" in row:
                row["ratio"] = row["embrecipe_model_flops_per_s"] / row["st_model_flops_per_s"]
        except Exception as exc:
            row["st_error"] = f"{type(exc).__name__}: {exc}"[:300]
        row["row_s"] = time.time() - t_row
        per_row_s = max(per_row_s * 0.5, row["row_s"] * 1.2)
        results["training"].append(row)
        print(json.dumps(row), flush=True)
        _save(results, out)

    # one change at a time on the target setting (L30, full, batch 1024)
    from fast_paths import VARIANTS

    variants = dict(VARIANTS)
    variants["packed + flex attention"] = {"packing": "on", "attn_implementation": "flex_attention"}
    variants["all + torch.compile"] = {"packing": "on", "compile": "default"}
    variants["all + CUDA graphs"] = {"packing": "on", "compile": "cudagraphs"}
    if rehearsal:  # compiling takes minutes on a CPU
        variants = {k: v for k, v in variants.items() if "compile" not in v and "attn_implementation" not in v}
    path = models["smollm2-L30"][0]
    data = pool(big_batch * (steps_big + 2))

    def fast_path(vname: str, over: dict) -> None:
        if time.time() + 60 > deadline:
            results["skipped"].append(f"fast path {vname}: deadline")
            return
        try:
            r = embrecipe_gpu(path, FullFineTuning(), data, big_batch, steps_big, precision=precision, **over)
            entry = {"variant": vname, "overrides": over, **r, "mfu": r["model_flops_per_s"] / peak}
        except Exception as exc:
            entry = {"variant": vname, "overrides": over, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results["fast_paths"].append(entry)
        print(json.dumps(entry), flush=True)
        _save(results, out)

    # compiling takes a minute or more: the cheap variants, then the sweep, then compile if time is left
    for vname, over in variants.items():
        if "compile" not in over:
            fast_path(vname, over)
    if time.time() + 90 < deadline:
        try:
            from gpu_sweep import sweep_fill

            results["sweep"] = (sweep_fill(assets, tmp, peak, deadline, workers=2, budgets=(2e9,), batch=8,
                                           ladder={2: models["smollm2-L8"][0]}) if rehearsal
                                else sweep_fill(assets, tmp, peak, deadline))
        except Exception as exc:
            results["sweep"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print("sweep:", json.dumps(results["sweep"]), flush=True)
    else:
        results["skipped"].append("sweep utilization: deadline")
    _save(results, out)
    for vname, over in variants.items():
        if "compile" in over:
            fast_path(vname, over)
    results["partial"] = False
    results["elapsed_s"] = time.time() - t_start
    _save(results, out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(render_gpu_markdown(results))
    return 0
