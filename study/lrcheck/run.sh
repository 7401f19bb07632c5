#!/usr/bin/env bash
# Reproduce study/lrcheck (see README.md). Resumable: every step reuses what its store already holds.
set -euo pipefail
cd "$(dirname "$0")/../.."
E="embrecipe"; command -v embrecipe >/dev/null || E="python -m embrecipe.cli"
python study/lrcheck/make_pairs.py
/usr/bin/time -f "sweep wall %e s" $E sweep study/lrcheck/grid.yaml --workers 3
$E fit study/lrcheck/lrcheck.sqlite --out study/lrcheck/laws.json --bootstrap 200 --min-runs 4 > study/lrcheck/fit.txt
/usr/bin/time -f "check wall %e s" $E check study/lrcheck/lrcheck.sqlite --budget 7.5e10 --bootstrap 200 \
    --min-runs 4 --workers 3 --out study/lrcheck/check > study/lrcheck/check.txt
$E plan --laws study/lrcheck/laws.json --budget 7.5e10 > study/lrcheck/plan.txt
