#!/usr/bin/env bash
# The whole GPU lease for issue 11's numbers, in one call of the device tool (about 6-8 minutes on one H100/H200):
#
#   here, once:   PYTHONPATH=src python benchmarks/run.py --prepare-gpu .gpu_bench   (needs the testbed + pip)
#                 echo /.gpu_bench/ >> .git/info/exclude
#   device tool:  run(command="bash benchmarks/gpu.sh", carry=[".gpu_bench"], timeout_s=540)
#   back here:    copy results.json/.md and fast_paths.* from the returned files into benchmarks/, commit.
#
# Installs only the carried wheels (into /tmp/site, nothing system-wide), runs the GPU section of
# benchmarks/run.py against the deadline, and copies the results (partial ones too) to $OUT.
set -u
cd "$(dirname "$0")/.."
ASSETS=${1:-.gpu_bench}
OUT=${OUT:-/tmp/gpu_bench_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$ASSETS"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers, sentence_transformers, datasets, peft; print('torch', torch.__version__,
'transformers', transformers.__version__, 'st', sentence_transformers.__version__, 'datasets', datasets.__version__)"
timeout 480 python3 benchmarks/run.py --device cuda --quick --assets "$ASSETS" --deadline-s 400 2>&1 \
    | tee "$OUT/gpu_run.log"
rc=${PIPESTATUS[0]}
cp benchmarks/results.json benchmarks/results.md "$OUT"/ 2>/dev/null
exit "$rc"
