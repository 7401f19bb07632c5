#!/usr/bin/env bash
# The max_seq_length-75 variant of run.sh (see README.md). Resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
E="embrecipe"; command -v embrecipe >/dev/null || E="python -m embrecipe.cli"
python study/lrcheck/make_pairs.py
/usr/bin/time -f "sweep wall %e s" $E sweep study/lrcheck/grid-75.yaml --workers 2
$E fit study/lrcheck/lrcheck75.sqlite --out study/lrcheck/laws-75.json --bootstrap 200 --min-runs 4 > study/lrcheck/fit-75.txt
/usr/bin/time -f "check wall %e s" $E check study/lrcheck/lrcheck75.sqlite --budget 1.2e12 --bootstrap 200 \
    --min-runs 4 --workers 2 --out study/lrcheck/check-75 > study/lrcheck/check-75.txt
$E plan --laws study/lrcheck/laws-75.json --budget 1.2e12 > study/lrcheck/plan-75.txt
