"""What the benchmark scripts share: the device, the matmul peak, the data pool, the models, and one run of each
trainer (embrecipe's and the plain sentence-transformers baseline) for a few timed steps.

The scripts (run.py, gpu.py, gpu_sweep.py, fast_paths.py) import this module; it imports none of them.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()})"


def gemm_peak(dtype_name: str, n: int, reps: int) -> dict:
    """Median GFLOP/s of an n×n×n matmul (the utilisation denominator)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    a @ b
    times = []
    for _ in range(reps):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"dtype": dtype_name, "n": n, "reps": reps, "median_s": med, "gflops": 2 * n**3 / med / 1e9}


def pool(n_pairs: int):
    from embrecipe.data.pairs import load_pairs
    from embrecipe.testbed.pairs import testbed_pairs_path

    data = load_pairs(testbed_pairs_path("train"))
    return data.subset(range(n_pairs))


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


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def free_device_memory() -> None:
    import torch

    gc.collect()
    if cuda_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync_device() -> None:
    import torch

    if cuda_available():
        torch.cuda.synchronize()


def peak_cuda_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if cuda_available() else None


def per_pair_model_flops(model_dir: str, method, data, max_len: int = 75) -> float:
    """Model FLOPs of one average pair of the pool (the same estimate for both trainers)."""
    from embrecipe.models.loading import apply_method, load_sentence_transformer
    from embrecipe.models.methods import flops_per_token
    from embrecipe.training.batching import tokenize

    model = load_sentence_transformer(model_dir)
    info = apply_method(model, method)
    tok = model[0].tokenizer
    n_tokens = sum(len(x) for col in (data.queries, data.positives) for x in tokenize(tok, col, max_len))
    return flops_per_token(method.name, info.n_params, info.n_trainable) * n_tokens / len(data)


def auto_precision() -> str:
    """The precision the trainer's ``auto`` picks on this machine's device (bf16 where it has bf16 units)."""
    import torch

    from embrecipe.training.device import bf16_supported

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if bf16_supported(dev) else "fp32"


def trainer_steps(model: str, data, batch: int, steps: int, precision: str, **overrides) -> dict:
    """embrecipe's trainer for one warm-up step and ``steps`` timed ones (the budget never binds); its final
    state. ``overrides`` are TrainConfig fields (the method, a fast path)."""
    from embrecipe.training.trainer import TrainConfig, train_until_stopped

    cfg = dict(model=model, data=data, budget=1e30, batch_size=batch, stop_after_steps=steps + 1,
               progress=False, lr=1e-4, precision=precision, allow_repeat=True)
    cfg.update(overrides)
    return train_until_stopped(TrainConfig(**cfg))


def st_trainer_steps(model: str, method, data, batch: int, steps: int, bf16: bool) -> dict:
    """The plain sentence-transformers trainer on the same model and method: MNRL in both directions, scale 40,
    one warm-up step and ``steps`` timed ones. Returns ``step_times`` (host time of every step) and ``timed_s``
    (from the start of step 2 to the end of the last, the device synchronised only there)."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from embrecipe.models.loading import apply_method, load_sentence_transformer

    st = load_sentence_transformer(model)
    apply_method(st, method)
    times: list[float] = []
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                sync_device()
                marks["t0"] = time.perf_counter()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            if state.global_step == steps + 1:
                sync_device()
                marks["t1"] = time.perf_counter()

    ds = datasets.Dataset.from_dict({"anchor": data.queries, "positive": data.positives})
    loss = MultipleNegativesRankingLoss(st, scale=40.0, directions=("query_to_doc", "doc_to_query"),
                                        partition_mode="per_direction")
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + 1, learning_rate=1e-4,
            weight_decay=0.1, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=10_000,
            save_strategy="no", report_to=[], dataloader_drop_last=True, bf16=bf16, seed=0, disable_tqdm=True,
            use_cpu=not cuda_available())
        SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=loss, callbacks=[Timer()]).train()
    return {"step_times": times, "timed_s": marks["t1"] - marks["t0"]}
