"""Issue 21's whole journey, as a new user takes it: their own pairs (CSV, JSONL with BGE ``pos`` lists, Parquet)
and a clean ``EMBRECIPE_HOME`` that is not the default; the testbed model built there; ``plan`` and ``run`` on their
data; ``embed`` with the prompts the model was trained with; ``eval`` on their held-out pairs; and a sweep too
small to fit that says so before it trains. Every step goes through the real CLI (``python -m embrecipe.cli``) in a
subprocess with that home, like the README's "From your data to your model"."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORDS = ("river stone garden window letter candle harbor forest meadow lantern bridge market orchard violin "
         "thunder pepper silver marble compass ladder ribbon pillow castle island quarry saddle beacon").split()


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Made-up pairs (no evaluation set): a short question about two words and a sentence that answers it."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        a, b, c = rng.sample(WORDS, 3)
        out.add((f"where is the {a} near the {b}?", f"the {a} stands beside the {b}, past the {c}."))
    return sorted(out)


def _cli(home, *args, check=True):
    env = {**os.environ, "EMBRECIPE_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "embrecipe.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_my_data_to_my_model(tmp_path):
    import pandas as pd

    home = tmp_path / "my-embrecipe-home"  # not ~/.cache/embrecipe
    train, held = _pairs(300, 0), _pairs(60, 1)
    held = [p for p in held if p not in set(train)]
    csv, jsonl, parquet = tmp_path / "pairs.csv", tmp_path / "pairs.jsonl", tmp_path / "pairs.parquet"
    pd.DataFrame(train, columns=["anchor", "positive"]).to_csv(csv, index=False)
    jsonl.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in train))
    pd.DataFrame(train, columns=["query", "pos"]).to_parquet(parquet)
    held_file = tmp_path / "held.jsonl"
    held_file.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in held))

    # 1. the model, built under this home (the card names it portably: smollm2-L2)
    _cli(home, "testbed", "models", "--layers", "2")
    family = home / "testbed" / "smollm2-family.json"
    assert json.loads(family.read_text())["members"][0]["path"] == "smollm2-L2"

    # 2. the plan is made for the data it will train on, in each format: its own tokens per pair and pairs
    budget = "3e11"
    plans = {}
    for data in (csv, jsonl, parquet):
        out = _cli(home, "plan", "--budget", budget, "--family", family, "--data", data, "--json").stdout
        plans[data.suffix] = json.loads(out)
    steps = {s: p["best"]["steps"] for s, p in plans.items()}
    assert len(set(steps.values())) == 1, steps  # the same pairs in three formats plan alike
    text = _cli(home, "plan", "--budget", budget, "--family", family, "--data", csv).stdout
    assert "smollm2-L2" in text

    # 3. run: plan, train, record, evaluate, on the user's data, with prompts
    model = tmp_path / "my-model"
    proc = _cli(home, "run", "--budget", budget, "--family", family, "--data", csv, "--out", model,
                "--query-prompt", "query: ", "--doc-prompt", "passage: ", "--eval", "none", "--report-to", "none",
                "--val-fraction", "0.1")
    planned = json.loads((model / "plan.json").read_text())
    record = json.loads((model / "run.json").read_text())
    assert record["steps"] == planned["best"]["steps"]  # the printed plan is the one that ran
    ahead = json.loads(_cli(home, "plan", "--budget", budget, "--family", family, "--data", csv, "--json",
                            "--query-prompt", "query: ", "--doc-prompt", "passage: ").stdout)
    assert ahead["best"]["steps"] == record["steps"]  # `plan` with the run's prompts says the same, beforehand
    assert "fitted on other data" in proc.stdout + proc.stderr

    # 4. embed with the prompts the model was trained with
    queries = tmp_path / "queries.txt"
    queries.write_text("where is the river near the castle?\nwhere is the candle near the window?\n")
    q = tmp_path / "q.npy"
    _cli(home, "embed", "--model", model, "--prompt-name", "query", queries, "--out", q)
    plain = tmp_path / "plain.npy"
    _cli(home, "embed", "--model", model, queries, "--out", plain)
    qe, pe = np.load(q), np.load(plain)
    assert qe.shape == pe.shape and qe.shape[0] == 2 and not np.allclose(qe, pe)  # the prompt was applied
    bad = _cli(home, "embed", "--model", model, "--prompt-name", "nope", queries, "--out", q, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    # 5. eval on the user's own held-out pairs (BGE pos lists, no testbed provenance)
    ev = _cli(home, "eval", "--model", model, "--pairs", held_file, "--tasks", "local", "--json").stdout
    assert "heldout" in ev or "loss" in ev

    # 6. a sweep too small to give a law says so before it trains anything
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"models: [{family.parent / 'smollm2-L2'}]\nmethods: {{full: {{}}}}\nbudgets: [5e10, 1e11]\n"
                    f"allow_repeat: true\nmin_steps: 1\ntrain: {{data: {csv}, batch_size: 16}}\n")
    dry = _cli(home, "sweep", grid, "--dry-run", "--no-progress").stdout
    assert "cannot produce a fittable law" in dry and dry.index("cannot produce a fittable law") < dry.index("would run")
