#!/usr/bin/env bash
# One GPU window of study v2 (issue 19; docs/gpu_window.md) = two calls of the device tool on one warm machine
# (the GGUF alone is over one call's 64 MiB, so it comes in two parts):
#
#   here, once:  PYTHONPATH=src python study/v2/build_carry.py          (writes .window/{stage,study}, prints sizes)
#   call 1:      run(command="bash study/v2/window.sh stage 300", carry=[".window/stage"], timeout_s=330)
#   call 2, AT ONCE (the machine goes back 30 s after a call):
#                run(command="bash study/v2/window.sh study 540", carry=[".window/study"], timeout_s=600)
#   back here:   cp <files_at>/study.sqlite study/v2/study.sqlite (+ call 1's results.* into benchmarks/), commit
#
# stage: installs only the carried wheels (offline, into $SITE), stashes the GGUF's first part, runs the
#        benchmark (first window of a card) and the fast-path smoke. study: joins the GGUF, builds the ladder,
#        unpacks the corpus and runs the study from the committed store until the deadline (seconds of wall
#        time for the whole call; further arguments go to study/v2/window.py). Everything lands in $OUT as it
#        is measured. Environment (for the CPU rehearsal, tests/test_window.py): PYTHON, SITE, ASSETS, WORK, IMPORTS.
set -u
cd "$(dirname "$0")/../.."
t0=$(date +%s)
PART=${1:?usage: window.sh stage|study|check|all [SECONDS] [window.py options]}
DEADLINE_S=${2:-540}
shift; shift || true
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
ASSETS=${ASSETS:-.window/${PART/check/study}}
WORK=${WORK:-/tmp/window-work}
OUT=${OUT:-/tmp/window-out}
IMPORTS=${IMPORTS-datasets gguf peft transformers sentence_transformers}
mkdir -p "$OUT" "$WORK"
if [ -d "$ASSETS/whl" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ASSETS"/whl/*.whl > "$OUT/install.log" 2>&1 || { echo "installing the carried wheels failed:"; cat "$OUT/install.log"; exit 3; }
elif [ ! -d "$SITE" ]; then
  echo "no $SITE: the stage call (window.sh stage) must run first on this machine, less than 30 s before"; exit 3
fi
export PYTHONPATH="$SITE:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for m in $IMPORTS embrecipe; do
  "$PY" -c "import $m" >> "$OUT/install.log" 2>&1 || { echo "import $m failed after the install:"; tail -5 "$OUT/install.log"; exit 3; }
done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
left=$(( DEADLINE_S - ($(date +%s) - t0) ))
set -o pipefail
"$PY" study/v2/window.py "$PART" --assets "$ASSETS" --work "$WORK" --out "$OUT" --deadline-s "$left" "$@" 2>&1 \
  | tee "$OUT/window.log"
rc=$?
ls -la "$OUT"
echo "window $PART took $(( $(date +%s) - t0 )) s (rc $rc)"
exit $rc
