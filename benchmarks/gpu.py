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

import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

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


def model_dir(layers: int, assets: Path | None, tmp: Path) -> tuple[str, str]:
    """(checkpoint path, provenance) of smollm2-L{layers}: the real testbed member when it can be built here,
    else a shape twin from ``assets``."""
    from embrecipe.errors import EmbrecipeError

    try:
        from embrecipe.testbed.models import ensure_model

        return str(ensure_model(layers)), "testbed weights"
    except (EmbrecipeError, ImportError, OSError) as exc:
        if assets is None:
            raise SystemExit(f"no testbed GGUF here ({exc}) and no --assets folder: run --prepare-gpu first") from None
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    out = tmp / f"smollm2-L{layers}"
    if not (out / "config.json").exists():
        cfg = LlamaConfig.from_pretrained(assets / "smollm2")
        cfg.num_hidden_layers = layers
        for key, value in list(cfg.to_dict().items()):  # per-layer lists shrink with the depth
            if isinstance(value, list) and len(value) == 30 and key.endswith(("layer_types", "_layers")):
                setattr(cfg, key, value[:layers])
        torch.manual_seed(0)
        LlamaModel(cfg).save_pretrained(out)
        AutoTokenizer.from_pretrained(assets / "smollm2").save_pretrained(out)
    return str(out), "shape twin (random weights, testbed config and tokenizer)"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _clean() -> None:
    import torch

    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()


def _peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if _cuda() else None


def embrecipe_gpu(model: str, method, data, batch: int, steps: int, precision: str = "bf16", **overrides) -> dict:
    """embrecipe's trainer at its defaults (bf16 autocast, fp32 master weights). The trainer syncs at step 1 and
    at the end, so the summed host times of steps 2.. are the device's time for them."""

    from embrecipe.trainer import TrainConfig, train

    _clean()
    t = time.perf_counter()
    state = train(TrainConfig(model=model, data=data, budget=1e30, method=method, batch_size=batch,
                              stop_after_steps=steps + 1, progress=False, lr=1e-4, precision=precision,
                              allow_repeat=True, **overrides))
    wall = time.perf_counter() - t
    times, flops = state["step_times"][1:], state["step_flops"][1:]
    return {"pairs_per_s": batch * len(times) / sum(times), "model_flops_per_s": sum(flops) / sum(times),
            "peak_mib": _peak_mib(), "steps_timed": len(times),
            "padded_over_real": state["padded_tokens"] / state["tokens"], "call_s": wall,
            "execution": state.get("execution")}


def st_gpu(model: str, method, data, batch: int, steps: int, bf16: bool = True) -> dict:
    """The plain sentence-transformers trainer (MNRL both directions, scale 40, bf16). Timed from the start of
    step 2 to the end of the last step, synchronising only there."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from embrecipe.modeling import apply_method, load_sentence_transformer

    _clean()
    st = load_sentence_transformer(model)
    apply_method(st, method)
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                _sync()
                marks["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == steps + 1:
                _sync()
                marks["t1"] = time.perf_counter()

    ds = datasets.Dataset.from_dict({"anchor": data.queries, "positive": data.positives})
    loss = MultipleNegativesRankingLoss(st, scale=40.0, directions=("query_to_doc", "doc_to_query"),
                                        partition_mode="per_direction")
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + 1, learning_rate=1e-4,
            weight_decay=0.1, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=10_000,
            save_strategy="no", report_to=[], dataloader_drop_last=True, bf16=bf16, seed=0, disable_tqdm=True,
            use_cpu=not _cuda())
        SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=loss, callbacks=[Timer()]).train()
    elapsed = marks["t1"] - marks["t0"]
    return {"pairs_per_s": batch * steps / elapsed, "peak_mib": _peak_mib(), "steps_timed": steps}


def _save(results: dict, out: Path) -> None:
    from run import merge_runs, render_file

    data = merge_runs(out.with_suffix(".json"), results)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_file(data))


def gpu_main(args) -> int:
    import torch
    from run import device_name, gemm_peak, per_pair_model_flops, pool

    from embrecipe.methods import BlockFreezing, FullFineTuning, LoRA

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
