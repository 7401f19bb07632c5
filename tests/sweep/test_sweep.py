"""Sweeps with the SYNTHETIC fake trainer (checks the machinery only): expansion, skipping, resume after a
real SIGKILL, process pool, and the Ray executor on a local instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embrecipe.cli import main
from embrecipe.errors import InputError
from embrecipe.runs.store import RunStore
from embrecipe.sweep.cells import expand
from embrecipe.sweep.grid import expand_methods, grid_from_dict, load_grid
from embrecipe.sweep.orchestration import run_sweep
from embrecipe.sweep.synthetic import synthetic_train

BASE = {
    "name": "toy",
    "trainer": "synthetic",
    "models": ["toy-h64-l2", "toy-h128-l4"],
    "methods": {"full": {}, "lora": {"rank": [8, 32]}},
    "budgets": [1e12, 1e13, 1e14],
    "tokens_per_pair": 60,
    "min_steps": 10,
    "train": {"batch_size": 32, "seed": 0},
}


def write_grid(tmp_path: Path, **overrides) -> Path:
    import yaml

    grid = {**BASE, **overrides}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_expand_methods():
    ms = expand_methods({"full": {}, "lora": {"rank": [8, 32]}, "freeze": {"trainable_blocks": [0.25, 0.5]},
                         "bias": {}})
    keys = [m["name"] + str(m.get("rank", m.get("trainable_blocks", ""))) for m in ms]
    assert keys == ["full", "lora8", "lora32", "freeze0.25", "freeze0.5", "bias"]
    with pytest.raises(InputError, match="unknown method"):
        expand_methods({"prefix": {}})
    with pytest.raises(InputError, match="rank"):
        expand_methods({"lora": {"rank": [0]}})


def test_expansion_and_skips(tmp_path):
    grid = load_grid(write_grid(tmp_path, budgets=[5e9, 1e13, 1e16], dataset_pairs=2_000_000))
    cells, skipped = expand(grid)
    reasons = [str(s) for s in skipped]
    # 5e9 affords < 10 steps everywhere; 1e16 needs more tokens than 2M pairs × 60 tokens hold.
    assert all(c.budget == 1e13 for c in cells) and len(cells) == 6
    assert any("min_steps" in r and "5e+09" in r for r in reasons)
    assert any("allow_repeat" in r and "1e+16" in r for r in reasons)
    assert len({c.key for c in cells}) == len(cells)
    c = cells[0]
    assert c.planned_tokens * c.flops_per_token == pytest.approx(c.budget)
    assert "data" not in c.key_config and c.key_config["code_version"]
    repeat = load_grid(write_grid(tmp_path, budgets=[1e16], dataset_pairs=2_000_000, allow_repeat=True))
    assert len(expand(repeat)[0]) == 6


def test_grid_errors(tmp_path):
    with pytest.raises(InputError, match="unknown key"):
        grid_from_dict({**BASE, "modelz": []})
    with pytest.raises(InputError, match="budgets"):
        grid_from_dict({**BASE, "budgets": []})
    with pytest.raises(InputError, match="set per cell"):
        grid_from_dict({**BASE, "train": {"budget": 1}})
    with pytest.raises(InputError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match=r"models\[0\]\.shape is malformed \(KeyError: 'name'\)"):
        grid_from_dict({**BASE, "models": [{"path": "toy-h64-l2", "shape": {"blocks": 2}}]})


def test_run_only_missing_cells_and_retry_failures(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    calls = []
    broken = {"on": True}

    def flaky(config):
        calls.append(config["budget"])
        if broken["on"] and config["method"]["name"] == "full" and config["budget"] == 1e14:
            raise RuntimeError("out of memory (simulated)")
        return synthetic_train(config)

    store = tmp_path / "runs.sqlite"
    r1 = run_sweep(grid, store=store, train_fn=flaky, progress=False, log=lambda s: None)
    assert r1.total == 18 and len(r1.ran) == 16 and len(r1.failed) == 2
    assert all("out of memory" in e for e in r1.failed.values())
    assert calls == sorted(calls)  # cheapest budgets first
    broken["on"] = False
    r2 = run_sweep(grid, store=store, train_fn=flaky, progress=False, log=lambda s: None)
    assert r2.already_done == 16 and len(r2.ran) == 2 and not r2.failed  # only the failed cells reran
    assert len(calls) == 20
    r3 = run_sweep(grid, store=store, train_fn=flaky, progress=False, log=lambda s: None)
    assert not r3.ran and len(calls) == 20
    st = RunStore(store)
    assert len(st) == 18 and st.counts()["completed"] == 18


def test_process_pool(tmp_path):
    grid = load_grid(write_grid(tmp_path, models=["toy-h64-l2"]))
    res = run_sweep(grid, store=tmp_path / "runs.sqlite", workers=2, progress=False, log=lambda s: None)
    assert len(res.ran) == 9 and not res.failed
    assert RunStore(tmp_path / "runs.sqlite").counts()["completed"] == 9


def test_sweep_resumes_after_sigkill(tmp_path):
    grid_path = write_grid(tmp_path, budgets=[1e12, 1e13, 1e14, 1e15],
                           train={"batch_size": 32, "seed": 0, "sleep": 0.15})
    store = tmp_path / "runs.sqlite"
    cmd = [sys.executable, "-m", "embrecipe.cli", "sweep", str(grid_path), "--store", str(store), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        completed = 0
        while time.time() < deadline:
            if store.exists():
                try:
                    completed = RunStore(store).counts()["completed"]
                except Exception:
                    completed = 0
                if completed >= 4:
                    break
            time.sleep(0.05)
        assert completed >= 4, "sweep did not make progress"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = RunStore(store)
    assert st.integrity_ok()
    before = st.counts()
    assert before["completed"] < 24  # it really was killed mid-way
    done_before = {r["key"] for r in st.rows("completed")}

    result = run_sweep(load_grid(grid_path), store=store, progress=False, log=lambda s: None)
    assert result.already_done == len(done_before)
    assert len(result.ran) == 24 - len(done_before)  # only the missing cells ran
    assert not set(result.ran) & done_before
    st = RunStore(store)
    assert len(st) == 24 and st.counts()["completed"] == 24  # no duplicate rows
    attempts = {r["key"]: r["attempts"] for r in st.rows()}
    assert all(attempts[k] == 1 for k in done_before)
    assert sum(a == 2 for a in attempts.values()) <= 1  # at most the cell that was running when killed
    assert st.integrity_ok()


def test_cli_sweep_dry_run(tmp_path, capsys):
    grid_path = write_grid(tmp_path, budgets=[5e9, 1e13])
    assert main(["sweep", str(grid_path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("would run") == 6 and "min_steps" in out
    assert not (tmp_path / "toy.sqlite").exists()  # a dry run writes nothing


def test_ray_executor_on_local_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: embrecipe[ray])")
    grid = load_grid(write_grid(tmp_path, models=["toy-h64-l2"], methods={"full": {}, "lora": {"rank": 8}}))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(grid, store=tmp_path / "runs.sqlite", executor="ray", progress=False, log=lambda s: None)
    finally:
        ray.shutdown()
    assert len(res.ran) == 6 and not res.failed
    st = RunStore(tmp_path / "runs.sqlite")
    assert st.counts()["completed"] == 6
    assert all(r.synthetic for r in st.records())


def test_tokens_per_pair_estimate_is_not_biased_by_a_sorted_file(tiny_models, tmp_path):
    """A file sorted short-to-long (the testbed's is sorted by package) must not be measured by its head."""
    import json

    from embrecipe.data.pairs import estimate_tokens_per_pair, load_pairs

    rows = [{"query": "sum " * (1 + i // 50), "pos": "the sum of two arrays " * (1 + i // 50)} for i in range(300)]
    path = tmp_path / "sorted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_pairs(path)
    exact = estimate_tokens_per_pair(data, tiny_models["llama"], sample=None)
    sampled = estimate_tokens_per_pair(path, tiny_models["llama"], sample=60)
    head = estimate_tokens_per_pair(data.subset(range(60)), tiny_models["llama"], sample=None)
    assert abs(sampled - exact) / exact < 0.05 and abs(head - exact) / exact > 0.3  # the head would be far off


# ---------------------------------------------------------------------------------------- hardening (issue 13)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a\\b", "~user"])
def test_grid_names_cannot_be_paths(name):
    with pytest.raises(InputError, match="plain name"):
        grid_from_dict({**BASE, "name": name})
    with pytest.raises(InputError, match=r"models\[0\].name .* must be a plain name"):
        grid_from_dict({**BASE, "models": [{"name": name, "path": "toy-h64-l2"}]})


def _real_grid(tmp_path, tiny_models, train_yaml: str) -> Path:
    path = tmp_path / "real.yaml"
    path.write_text(f"name: real\nmodels: [{tiny_models['llama']}]\nmethods: {{full: {{}}}}\nbudgets: [1.0e+9]\n"
                    f"tokens_per_pair: 20\nmin_steps: 1\nallow_repeat: true\n{train_yaml}")
    return path


def test_dry_run_applies_the_real_runs_checks(tmp_path, tiny_models, tiny_pairs_file, capsys):
    no_data = _real_grid(tmp_path, tiny_models, "train: {batch_size: 8}\n")
    assert main(["sweep", str(no_data), "--dry-run", "--no-progress"]) == 2
    assert "missing training setting(s): data" in capsys.readouterr().err
    text_lr = _real_grid(tmp_path, tiny_models, f"train: {{data: {tiny_pairs_file}, batch_size: 8, lr: 1.0e6}}\n")
    assert main(["sweep", str(text_lr), "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "real.yaml" in err and "lr must be a number, got str '1.0e6'" in err and len(err.splitlines()) == 1
    bad_wd = _real_grid(tmp_path, tiny_models, f"train: {{data: {tiny_pairs_file}, batch_size: 8, weight_decay: -5}}\n")
    assert main(["sweep", str(bad_wd), "--dry-run", "--no-progress"]) == 2
    assert "weight_decay must be >= 0" in capsys.readouterr().err
    ok = _real_grid(tmp_path, tiny_models, f"train: {{data: {tiny_pairs_file}, batch_size: 8, lr: 1.0e-3}}\n")
    assert main(["sweep", str(ok), "--dry-run", "--no-progress"]) == 0
    assert "would run" in capsys.readouterr().out
    assert not (tmp_path / "real.sqlite").exists()


def test_diverged_cell_is_stored_failed_and_the_sweep_goes_on(tmp_path):
    from embrecipe.errors import TrainingDiverged

    grid = load_grid(write_grid(tmp_path, models=["toy-h64-l2"]))

    def diverging(config):
        if config["method"]["name"] == "full" and config["budget"] == 1e13:
            raise TrainingDiverged("training diverged at step 3: loss is nan", {"status": "failed"})
        return synthetic_train(config)

    res = run_sweep(grid, store=tmp_path / "runs.sqlite", train_fn=diverging, progress=False, log=lambda s: None)
    assert len(res.failed) == 1 and len(res.ran) == 8
    st = RunStore(tmp_path / "runs.sqlite")
    (failed,) = st.rows("failed")
    assert "diverged at step 3" in failed["error"]


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_full_disk_stops_the_sweep(tmp_path, error):
    import errno

    from embrecipe.errors import OutOfDiskSpace

    grid = load_grid(write_grid(tmp_path, models=["toy-h64-l2"]))
    calls = []

    def no_space(config):
        calls.append(config["budget"])
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        # what safetensors raises on a full disk: no OSError, only the text says so
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OutOfDiskSpace, match="sweep stops"):
        run_sweep(grid, store=tmp_path / "runs.sqlite", train_fn=no_space, progress=False, log=lambda s: None)
    assert len(calls) == 1  # not once per remaining cell
    assert RunStore(tmp_path / "runs.sqlite").counts() == {"pending": 8, "running": 0, "completed": 0, "failed": 1}


def test_cells_writing_to_out_may_reuse_their_folder_and_keep_their_key(tmp_path):
    grid = load_grid(write_grid(tmp_path, models=["toy-h64-l2"], out="runs"))
    (tmp_path / "plain").mkdir()
    plain = load_grid(write_grid(tmp_path / "plain", models=["toy-h64-l2"]))
    cells, _ = expand(grid)
    assert all(c.config["overwrite"] is True and c.config["out"].endswith(c.key) for c in cells)
    assert [c.key for c in cells] == [c.key for c in expand(plain)[0]]


def test_local_ray_listens_on_loopback_only(monkeypatch):
    import types

    from embrecipe.sweep import executors as sweep_mod

    assert sweep_mod.ray_init_kwargs(2, None)["_node_ip_address"] == "127.0.0.1"
    assert sweep_mod.ray_init_kwargs(2, "ray://head:10001") == {"address": "ray://head:10001", "log_to_driver": False}
    seen = {}
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: seen.update(kw, env=os.environ.get(sweep_mod._RAY_LOCAL_ONLY_ENV)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv(sweep_mod._RAY_LOCAL_ONLY_ENV, raising=False)
    assert sweep_mod.start_ray(1, None)
    # without the variable Ray resolves 127.0.0.1 to the network address and its servers bind to 0.0.0.0
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["env"] == "0" and seen["num_cpus"] == 1


def test_executor_reports_busy_cells_and_hands_claims_back_on_interrupt(tmp_path):
    """The one bookkeeping loop every executor shares: a cell another live worker holds is reported, not trained;
    records reach the driver in order; an interrupt mid-cell releases that cell's claim."""
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.executors import ExecutorSettings, SequentialExecutor, make_executor

    grid = load_grid(write_grid(tmp_path, budgets=[1e13]))
    cells, _ = expand(grid)
    st = RunStore(tmp_path / "runs.sqlite")
    assert st.claim(cells[1].key, cells[1].key_config, worker="other-host:1:x")
    executor = make_executor(ExecutorSettings(), st, synthetic_train, grid, lambda s: None)
    assert isinstance(executor, SequentialExecutor)
    seen, busy = [], []
    executor.run(cells[:3], on_result=lambda cell, record: seen.append((cell.key, record["status"])),
                 on_busy=lambda cell: busy.append(cell.key))
    assert busy == [cells[1].key]
    assert seen == [(cells[0].key, "completed"), (cells[2].key, "completed")]
    assert st.status(cells[1].key) == "running"  # still the other worker's

    def interrupted(config):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_executor(ExecutorSettings(), st, interrupted, grid, lambda s: None).run(
            cells[3:4], on_result=lambda cell, record: None, on_busy=lambda cell: None)
    assert st.status(cells[3].key) == "pending"
    st.close()


def test_a_grid_too_small_to_fit_says_so_before_training_and_report_writes_nothing(tmp_path, capsys):
    """Issue 21 item 9: one model and two budgets can never give a law (fit needs 6 runs from 2 sizes per
    variant). The dry run and the sweep's start say so before any run; `report` on the store then exits with one
    line and leaves no half-written folder."""
    small = write_grid(tmp_path, models=["toy-h64-l2"], methods={"full": {}}, budgets=[1e12, 1e13])
    assert main(["sweep", str(small), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cannot produce a fittable law" in out and "full: 2 run(s), need 6, 1 model size(s), need 2" in out
    assert out.index("cannot produce a fittable law") < out.index("would run")
    lines: list[str] = []
    run_sweep(load_grid(small), store=tmp_path / "small.sqlite", progress=False, log=lines.append)
    warned = next(i for i, x in enumerate(lines) if "cannot produce a fittable law" in x)
    assert warned < next(i for i, x in enumerate(lines) if "cells (" in x)  # before the sweep starts its cells
    assert RunStore(tmp_path / "small.sqlite").records()  # it trained (a warning, not a refusal)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "small.sqlite"), "--out", str(tmp_path / "rep"), "--bootstrap", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few runs" in err[0]
    assert not (tmp_path / "rep").exists()
    # the full BASE grid (2 sizes x 3 budgets per variant) is fittable: no warning
    assert main(["sweep", str(write_grid(tmp_path)), "--dry-run", "--no-progress"]) == 0
    assert "fittable" not in capsys.readouterr().out
    # ... and so is it with an LR search: the upper rungs wait for the search but will run (they used to be
    # left out of the count, and every LR-search grid was warned about)
    assert main(["sweep", str(write_grid(tmp_path, lr_search={"factors": [0.3162, 1, 3.162]})), "--dry-run",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "waits for the LR search" in out and "fittable" not in out
    assert main(["sweep", str(write_grid(tmp_path, lr_search={"factors": [0.3162, 1, 3.162]}, budgets=[1e12])),
                 "--dry-run", "--no-progress"]) == 0
    assert "cannot produce a fittable law" in capsys.readouterr().out


def _slow_train(config):
    """A cell that trains for up to 20 s in short slices (a dead heartbeat must stop it long before)."""
    import time

    from embrecipe.sweep.synthetic import synthetic_train

    end = time.time() + 20
    while time.time() < end:
        time.sleep(0.01)
    return synthetic_train(config)


@pytest.mark.parametrize("sigint", ["python", "ignored"])
def test_dead_heartbeat_is_logged_and_stops_the_cell(tmp_path, monkeypatch, sigint):
    """A heartbeat that keeps failing used to be swallowed silently, so another host could take a live claim:
    now each failure is logged, and before the claim could go stale the cell is stopped and handed back. Also in
    a process that inherited SIGINT ignored (started with ``cmd &`` by a script: interrupt_main did nothing)."""
    import signal
    import sqlite3

    from embrecipe.errors import ClaimLost
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.executors import ExecutorSettings, make_executor
    from embrecipe.sweep.grid import grid_from_dict

    def broken(self, key):
        raise sqlite3.OperationalError("database is locked")

    grid = grid_from_dict({**BASE, "budgets": [1e12], "methods": {"full": {}}, "models": ["toy-h64-l2"],
                           "heartbeat_s": 0.05})
    cells = expand(grid)[0]
    store = RunStore(tmp_path / "runs.sqlite")
    monkeypatch.setattr(RunStore, "heartbeat", broken)
    logs: list[str] = []
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)
    t0 = time.time()
    try:
        with pytest.raises(ClaimLost, match=r"heartbeat .* failed 2 times"):
            make_executor(ExecutorSettings(), store, _slow_train, grid, logs.append).run(
                cells, on_result=lambda c, r: None, on_busy=lambda c: None)
        assert signal.getsignal(signal.SIGINT) is (signal.SIG_IGN if sigint == "ignored"
                                                   else signal.default_int_handler)  # restored
    finally:
        signal.signal(signal.SIGINT, before)
    assert time.time() - t0 < 10  # stopped, not trained to the end
    assert sum("heartbeat to" in line and "database is locked" in line for line in logs) == 2
    assert store.status(cells[0].key) == "pending"  # handed back: the next run starts it at once


def test_grid_files_naming_the_trainers_by_their_old_module_paths_still_load():
    """Grid files written before the stage folders name ``embrecipe.trainer:train_from_dict`` and
    ``embrecipe.synthetic:synthetic_train``; both resolve to the trainers' current homes."""
    from embrecipe.sweep.executors import resolve_train_fn
    from embrecipe.sweep.grid import grid_from_dict
    from embrecipe.sweep.synthetic import synthetic_train as current_synthetic
    from embrecipe.training.trainer import train_from_dict as current_real

    assert resolve_train_fn("embrecipe.trainer:train_from_dict") is current_real
    assert resolve_train_fn("embrecipe.synthetic:synthetic_train") is current_synthetic
    assert resolve_train_fn("synthetic") is current_synthetic
    assert resolve_train_fn(None) is current_real
    old = grid_from_dict({"models": ["toy-h64-l2"], "methods": {"full": {}}, "budgets": [1e12],
                          "trainer": "embrecipe.synthetic:synthetic_train"})
    assert resolve_train_fn(old.trainer) is current_synthetic


def test_grid_paths_expand_environment_variables_and_refuse_unset_ones(tmp_path, monkeypatch, tiny_pairs_file):
    monkeypatch.setenv("EMBRECIPE_TEST_DATA_DIR", str(Path(tiny_pairs_file).parent))
    monkeypatch.setenv("EMBRECIPE_TEST_OUT", str(tmp_path / "outside"))
    grid = load_grid(write_grid(tmp_path, store="$EMBRECIPE_TEST_OUT/runs.sqlite", out="${EMBRECIPE_TEST_OUT}/runs",
                                train={"batch_size": 32, "data": f"$EMBRECIPE_TEST_DATA_DIR/{Path(tiny_pairs_file).name}"}))
    assert grid.train["data"] == tiny_pairs_file
    assert grid.store == str(tmp_path / "outside" / "runs.sqlite")
    assert grid.out == str(tmp_path / "outside" / "runs")
    monkeypatch.delenv("EMBRECIPE_TEST_OUT")
    with pytest.raises(InputError, match=r"grid\.yaml: path '\$EMBRECIPE_TEST_OUT/runs' uses the unset environment "
                                         r"variable\(s\) EMBRECIPE_TEST_OUT"):
        load_grid(write_grid(tmp_path, out="$EMBRECIPE_TEST_OUT/runs"))
    missing = write_grid(tmp_path, train={"batch_size": 32, "val_data": str(tmp_path / "no-such-val.jsonl")})
    with pytest.raises(InputError, match=r"grid\.yaml: train\.val_data .*no-such-val\.jsonl does not exist"):
        run_sweep(load_grid(missing), store=tmp_path / "s.sqlite", progress=False, log=lambda s: None)
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store is made


def test_a_store_keyed_by_the_validation_files_path_resumes_without_retraining(tmp_path, tiny_pairs_file):
    """Stores written before val_data entered the run keys by content hold the path-keyed runs; the sweep moves
    them to the new keys and trains nothing. A validation file moved to another folder is the same data."""
    import shutil

    from embrecipe.runs.records import run_identity

    val = tmp_path / "val.jsonl"
    shutil.copy(tiny_pairs_file, val)
    path = write_grid(tmp_path, train={"batch_size": 32, "seed": 0, "val_data": str(val)})
    store = tmp_path / "runs.sqlite"
    first = run_sweep(load_grid(path), store=store, progress=False, log=lambda s: None)
    assert len(first.ran) == 18
    with RunStore(store) as st:  # make it the store an older embrecipe wrote: every key from the path
        for rec in st.records():
            ident = {k: v for k, v in st.get(rec.key)["config"].items() if k != "val_data_fingerprint"}
            old_ident, old_key = run_identity({**ident, "val_data": str(val)}, ident["data_fingerprint"])
            assert st.rekey(rec.key, old_key, old_ident)
    lines: list[str] = []
    again = run_sweep(load_grid(path), store=store, progress=False, log=lines.append)
    assert again.ran == [] and again.already_done == 18 and any("18 completed run(s) of this store moved" in x for x in lines)
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    shutil.move(val, elsewhere / "val.jsonl")
    moved = run_sweep(load_grid(write_grid(tmp_path, train={"batch_size": 32, "seed": 0,
                                                           "val_data": str(elsewhere / "val.jsonl")})),
                      store=store, progress=False, log=lambda s: None)
    assert moved.ran == [] and moved.already_done == 18
    assert len(RunStore(store).records()) == 18
