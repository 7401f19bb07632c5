#!/usr/bin/env bash
# GPU lease, call 2 of 2 (see docs/study.md): join the GGUF, build the ladder, run the study against a deadline,
# and pack the results into $OUT (a call returns at most 8 files). Usage: device_call2.sh SECONDS
# To finish the committed sweep instead of starting afresh: STORE_FROM=study/full/study.sqlite device_call2.sh 545
set -uo pipefail
t0=$(date +%s)
limit=${1:-540}
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
mkdir -p /tmp/gguf /tmp/stage/logs
cat /tmp/gguf.a .devcarry/gguf.b > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf" \
  | sha256sum -c - || exit 3
python3 -m embrecipe.cli testbed models --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf 2>&1 \
  | grep --line-buffered -v -i warn | tee /tmp/stage/logs/ladder.log
echo "ladder built after $(( $(date +%s) - t0 )) s"
python3 study/full/device_study.py --grid study/full/grid.yaml --out /tmp/stage --until $(( t0 + limit )) \
  --workers ${WORKERS:-8} ${STORE_FROM:+--store-from "$STORE_FROM"} 2>&1 | grep --line-buffered -v -i -E "warn|is_gradient_checkpointing" | tee /tmp/stage/logs/driver.log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > /tmp/stage/logs/gpu.txt
cp /tmp/stage/study.sqlite /tmp/stage/check.sqlite /tmp/stage/session.json /tmp/stage/plans.json "$OUT"/ 2>/dev/null
tar -C /tmp/stage -czf "$OUT"/logs.tar.gz logs
tar -C /tmp/stage -cf "$OUT"/emb.tar emb 2>/dev/null
ls -la "$OUT"
echo "call2 took $(( $(date +%s) - t0 )) s"
