#!/usr/bin/env bash
# GPU lease, call 1 of 2 (see docs/study.md): install the pinned libraries the image lacks, stash the first half
# of the GGUF (a call carries at most 64 MiB), and check the CUDA/bf16 training path on a tiny model.
set -euo pipefail
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
cp .devcarry/gguf.a /tmp/gguf.a
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc; free -g | head -2
python3 - <<'PY'
import json, time, gzip, importlib.metadata as m
import torch
print({p: m.version(p) for p in ("torch", "transformers", "sentence-transformers", "peft", "gguf", "tokenizers",
                                  "huggingface-hub", "regex", "accelerate")})
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
from embrecipe.testing import make_tiny_decoder, tiny_pairs
from embrecipe.training.trainer import train_from_dict
from embrecipe.evaluate import embed_eval_texts  # noqa: F401 - must import without mteb
d = make_tiny_decoder("/tmp/tiny", "llama")
with gzip.open("/tmp/tiny_pairs.jsonl.gz", "wt") as f:
    for r in tiny_pairs(256):
        f.write(json.dumps(r) + "\n")
for method in ({"name": "full"}, {"name": "lora", "rank": 4}, {"name": "freeze", "trainable_blocks": 1}):
    t = time.time()
    rec = train_from_dict({"model": str(d), "data": "/tmp/tiny_pairs.jsonl.gz", "val_data": "/tmp/tiny_pairs.jsonl.gz",
                           "budget": 2e8, "batch_size": 16, "method": method, "progress": False, "out": f"/tmp/tiny_out_{method['name']}"})
    print(method["name"], rec["steps"], "steps", rec["precision"], rec["device"], "val", round(rec["final_val_loss"], 4),
          f"{time.time() - t:.1f}s")
PY
echo "call1 took $(( $(date +%s) - t0 )) s"
