"""Run store: idempotent keys, claims, concurrency, stale-claim recovery, export."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.runs.store import RunStore, is_store_path, run_key

CFG = {"model": "m", "method": {"name": "lora", "rank": 8}, "budget": 1e15, "seed": 0, "lr": 1e-3,
       "batch_size": 32, "data_fingerprint": "abc", "code_version": "0.1.0"}


def test_run_key_is_stable_and_canonical():
    k = run_key(CFG)
    assert len(k) == 20
    reordered = dict(reversed(list(CFG.items())))
    assert run_key(reordered) == k
    assert run_key({**CFG, "budget": 1000000000000000}) == k  # 1e15 == int
    spelled_out = {**CFG, "method": {"name": "lora", "rank": 8, "alpha": 8.0, "dropout": 0.0,
                                     "targets": "all-linear"}}
    assert run_key(spelled_out) == k  # defaulted hparams do not change identity
    assert run_key({**CFG, "out": "/tmp/elsewhere"}) == k  # where it writes is not what it computes
    for change in ({"seed": 1}, {"budget": 2e15}, {"lr": 2e-3}, {"data_fingerprint": "x"},
                   {"method": {"name": "lora", "rank": 16}}, {"code_version": "0.2.0"}):
        assert run_key({**CFG, **change}) != k, change
    with pytest.raises(InputError):
        run_key({"budget": float("nan")})


def test_claim_complete_lifecycle(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    key = run_key(CFG)
    assert store.claim(key, CFG)
    assert store.status(key) == "running"
    assert not store.claim(key, CFG)  # our own live claim
    store.complete(key, {"config": CFG, "final_val_loss": 0.5, "tokens": 1e9, "model_flops": 9e14,
                         "loss_curve": [{"step": 1, "loss": 2.0}], "eval": {"sts": 0.7}})
    row = store.get(key)
    assert row["status"] == "completed" and row["final_val_loss"] == 0.5 and row["variant"] == "lora-r8"
    assert row["loss_curve"] == [{"step": 1, "loss": 2.0}] and row["eval"] == {"sts": 0.7}
    assert not store.claim(key, CFG)  # completed runs are never retrained
    assert len(store) == 1
    assert store.records()[0].key == key


def test_add_pending_is_idempotent_and_keeps_status(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    cfgs = [{**CFG, "seed": s} for s in range(5)]
    keys = store.add_pending(cfgs)
    store.complete(keys[0], {"config": cfgs[0], "final_val_loss": 1.0})
    assert store.add_pending(cfgs) == keys
    assert len(store) == 5
    assert store.counts() == {"pending": 4, "running": 0, "completed": 1, "failed": 0}


def test_failed_runs_are_retried(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    key = run_key(CFG)
    store.claim(key, CFG)
    store.fail(key, "boom")
    assert store.get(key)["error"] == "boom"
    assert store.claim(key)
    assert store.get(key)["attempts"] == 2


def test_claim_rejects_mismatched_config(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(InputError, match="does not match"):
        store.claim("0" * 20, CFG)
    with pytest.raises(InputError, match="no config"):
        store.claim("0" * 20)


def test_stale_claim_of_dead_process_is_recovered(tmp_path):
    path = tmp_path / "runs.sqlite"
    key = run_key(CFG)
    code = ("import sys, json; from embrecipe.runs.store import RunStore; "
            f"s = RunStore({str(path)!r}); print(s.claim({key!r}, json.loads(sys.argv[1])))")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(CFG)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"
    store = RunStore(path)
    assert store.status(key) == "running"
    assert store.claim(key)  # the claiming process is gone: its claim is stale


def test_live_claim_of_other_worker_is_respected_until_heartbeat_expires(tmp_path):
    path = tmp_path / "runs.sqlite"
    key = run_key(CFG)
    other_host = RunStore(path)
    assert other_host.claim(key, CFG, worker="some-other-host:123")
    assert not RunStore(path).claim(key)
    # Same host, a live pid (ours' parent): still respected.
    key2 = run_key({**CFG, "seed": 2})
    assert other_host.claim(key2, {**CFG, "seed": 2}, worker=f"{socket.gethostname()}:{os.getppid()}")
    assert not RunStore(path).claim(key2)
    # Without heartbeats for longer than stale_after, another worker takes over.
    assert RunStore(path, stale_after=0.0).claim(key)


def _worker(path: str, keys: list[str], cfgs: list[dict], q) -> None:
    store = RunStore(path)
    mine = []
    for key, cfg in zip(keys, cfgs, strict=True):
        if store.claim(key, cfg):
            mine.append(key)
            store.complete(key, {"config": cfg, "final_val_loss": 1.0, "worker_pid": os.getpid()})
    q.put(mine)


def test_concurrent_writers_never_train_the_same_cell(tmp_path):
    path = str(tmp_path / "runs.sqlite")
    cfgs = [{**CFG, "seed": s} for s in range(40)]
    keys = [run_key(c) for c in cfgs]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, keys, cfgs, q)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    flat = [k for part in claimed for k in part]
    assert sorted(flat) == sorted(keys)  # every cell exactly once, none twice
    store = RunStore(path)
    assert len(store) == 40 and store.counts()["completed"] == 40
    assert store.integrity_ok()


def test_export_csv_and_parquet(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    for s in range(3):
        cfg = {**CFG, "seed": s}
        store.put({"config": cfg, "final_val_loss": 1.0 + s, "tokens": 1e6, "loss_curve": [1, 2]})
    csv = store.export(tmp_path / "runs.csv")
    pq = store.export(tmp_path / "runs.parquet")
    for df in (pd.read_csv(csv), pd.read_parquet(pq)):
        assert len(df) == 3
        assert sorted(df["final_val_loss"]) == [1.0, 2.0, 3.0]
        assert {"key", "status", "variant", "record"} <= set(df.columns)
    with pytest.raises(InputError, match=r"csv or \.parquet"):
        store.export(tmp_path / "runs.xlsx")


def test_urls(tmp_path):
    path = tmp_path / "u.sqlite"
    store = RunStore(f"sqlite:///{path}")
    store.put({"config": CFG, "final_val_loss": 1.0})
    assert is_store_path(path) and not is_store_path(tmp_path / "nope.sqlite")
    assert len(RunStore(str(path))) == 1
    with pytest.raises(EmbrecipeError, match="not supported yet"):
        RunStore("postgresql://user@host/db")
    with pytest.raises(InputError, match="does not exist"):
        RunStore(tmp_path / "no" / "such" / "dir.sqlite")


# The nested layout embrecipe.training.trainer returns (trimmed from a real run on a tiny GPT-NeoX).
TRAINER_RECORD = {
    "schema": 1, "status": "completed", "budget": 2e9, "batch_size": 8, "seed": 0, "steps": 53,
    "config": {"model": "/x/m2", "data": "/x/pairs.jsonl", "method": {"name": "lora", "rank": 4},
               "budget": 2e9, "batch_size": 8, "seed": 0, "out": "/x/runs/k"},
    "data": {"fingerprint": "05d24de45cadf6d4", "mean_tokens_per_pair": 45.9, "pairs": 300},
    "method": "lora", "method_key": "lora-r4", "hparams": {"rank": 4, "alpha": 4.0},
    "model": {"name": "/x/m2", "non_embedding_params": 17152, "trainable_params": 3072,
              "shape": {"name": "/x/m2", "embedding_params": 10752, "block_params": [8544, 8544],
                        "final_norm_params": 64, "bias_params": 608, "hidden_size": 32,
                        "linear_in_out": {"dense": 128, "query_key_value": 256}}},
    "model_flops": 1999580160.0, "tokens": 19430, "final_train_loss": 0.67, "final_val_loss": 0.62,
    "loss_curve": [[35195904, 4.03], [68436480, 4.45]], "train_time_s": 22.4, "wall_time_s": 22.8,
}


def test_normalize_trainer_record_layout(tmp_path):
    from embrecipe.runs.records import RunRecord

    v = RunRecord.from_dict(TRAINER_RECORD)
    assert v.model == "/x/m2" and v.n_params == 17152 and v.n_trainable == 3072
    assert v.method == {"name": "lora", "rank": 4} and v.variant == "lora-r4"
    assert v.data_fingerprint == "05d24de45cadf6d4" and v.tokens_per_pair == 45.9
    assert v.all_timings == {"train_time_s": 22.4, "wall_time_s": 22.8}
    store = RunStore(tmp_path / "runs.sqlite")
    key = store.put(TRAINER_RECORD)
    row = store.get(key)
    assert row["variant"] == "lora-r4" and row["n_params"] == 17152 and row["final_val_loss"] == 0.62
    assert row["model"] == "/x/m2" and row["method"] == "lora" and row["tokens"] == 19430


# ---------------------------------------------------------------------------------------- hardening (issue 13)


def test_claim_goes_stale_after_three_missed_heartbeats_on_another_host(tmp_path, monkeypatch):
    import time

    from embrecipe.runs import store as store_mod

    path = tmp_path / "runs.sqlite"
    key = run_key(CFG)
    assert RunStore(path).claim(key, CFG, worker="other-host:123:abcd")
    assert RunStore(path).stale_after == store_mod.STALE_AFTER_BEATS * store_mod.DEFAULT_HEARTBEAT_S == 180
    assert not RunStore(path).claim(key)  # fresh heartbeat: respected
    now = time.time()
    monkeypatch.setattr(store_mod.time, "time", lambda: now + 2.5 * 60)
    assert not RunStore(path).claim(key)  # two missed beats: still respected
    monkeypatch.setattr(store_mod.time, "time", lambda: now + 3.5 * 60)
    assert RunStore(path).claim(key)  # three missed beats: stale


def test_claim_of_a_dead_process_with_our_pid_is_not_ours(tmp_path, monkeypatch):
    """A container restart: same hostname, same PID, but another process (another token)."""
    import time

    from embrecipe.runs import store as store_mod

    path = tmp_path / "runs.sqlite"
    key = run_key(CFG)
    before_restart = f"{socket.gethostname()}:{os.getpid()}:deadbeef"
    assert RunStore(path).claim(key, CFG, worker=before_restart)
    assert not RunStore(path).claim(key)  # its heartbeat is fresh: it may be alive
    now = time.time()
    monkeypatch.setattr(store_mod.time, "time", lambda: now + 4 * 60)
    assert RunStore(path).claim(key)  # no heartbeat for 3 beats: taken over, not mistaken for our own claim
    assert RunStore(path).get(key)["worker"] == store_mod._worker_id()
    assert not RunStore(path).claim(key)  # and now it is ours (the same process) and live


def test_release_claims(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    cfgs = [{**CFG, "seed": s} for s in range(3)]
    keys = [run_key(c) for c in cfgs]
    for k, c in zip(keys, cfgs, strict=True):
        assert store.claim(k, c, worker="gone-host:1:aa")
    store.complete(keys[2], {"config": cfgs[2], "final_val_loss": 1.0})
    assert store.release_claims([keys[0]]) == [keys[0]]
    assert store.status(keys[0]) == "pending" and store.status(keys[1]) == "running"
    assert store.release_claims() == [keys[1]]
    assert store.counts() == {"pending": 2, "running": 0, "completed": 1, "failed": 0}


def test_cli_store_release(tmp_path, capsys):
    from embrecipe.cli import main

    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    assert store.claim(run_key(CFG), CFG, worker="gone-host:1:aa")
    assert main(["store", "release", str(path)]) == 0
    assert "released 1 claim(s)" in capsys.readouterr().out
    assert store.status(run_key(CFG)) == "pending"
    assert main(["store", "release", str(path), "--key", "nope"]) == 2
    assert "no run with key nope" in capsys.readouterr().err
    assert main(["store", "release", str(tmp_path / "missing.sqlite")]) == 2


def test_operational_settings_do_not_enter_the_run_key():
    base = {**CFG, "lr": 1e-3}
    for extra in ({"checkpoint_every": 50}, {"progress": False}, {"log_every": 5}, {"workers": 4},
                  {"overwrite": True}, {"heartbeat_s": 30}):
        assert run_key({**base, **extra}) == run_key(base), extra
    assert run_key({**base, "lr": 2e-3}) != run_key(base)


@pytest.mark.parametrize("store_path", ["study/full/study.sqlite", "study/full/check.sqlite",
                                        "study/mini/mini.sqlite", "study/cross_family/smollm2.sqlite",
                                        "study/cross_family/qwen.sqlite"])
def test_committed_stores_keep_their_keys(store_path):
    """Nothing re-trains: every stored config still hashes to its stored key under today's run_key."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / store_path
    if not path.exists():
        pytest.skip(f"{store_path} is not in this checkout")
    rows = _read_rows(path)
    assert rows
    assert all(run_key(cfg) == key for key, cfg in rows)


COMMITTED_STORES = ["study/full/study.sqlite", "study/full/check.sqlite", "study/lrcheck/lrcheck.sqlite",
                    "study/lrcheck/lrcheck-check.sqlite", "study/lrcheck/lrcheck75.sqlite",
                    "study/lrcheck/lrcheck75-check.sqlite", "study/mini/mini.sqlite",
                    "study/cross_family/smollm2.sqlite", "study/cross_family/qwen.sqlite"]


@pytest.mark.parametrize("store_path", COMMITTED_STORES)
def test_the_one_identity_builder_rebuilds_every_committed_run(store_path, monkeypatch):
    """records.run_identity (the only builder: sweep cells and check runs) gives every committed run its stored
    identity and key back from the trainer config it ran with (data and output paths in, fingerprint out)."""
    from pathlib import Path

    import embrecipe
    from embrecipe.runs.records import run_identity

    path = Path(__file__).resolve().parents[2] / store_path
    if not path.exists():
        pytest.skip(f"{store_path} is not in this checkout")
    rows = _read_rows(path)
    assert rows
    for key, stored in rows:
        monkeypatch.setattr(embrecipe, "__version__", stored["code_version"])
        trainer_config = {k: v for k, v in stored.items() if k not in ("data_fingerprint", "code_version")}
        trainer_config.update(data="/anywhere/pairs.jsonl", out=f"/anywhere/{key}")
        ident, rebuilt = run_identity(trainer_config, stored["data_fingerprint"])
        assert (ident, rebuilt) == (stored, key)


def _read_rows(path):
    import json
    import sqlite3

    # read-only: the committed store must not be touched (not even WAL files)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(k, json.loads(c)) for k, c in conn.execute("SELECT key, config FROM runs")]
    finally:
        conn.close()


def test_records_are_stored_as_strict_json(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    store.complete(run_key(CFG), {"config": CFG, "final_val_loss": float("nan"), "loss_curve": [[1, float("inf")]]})
    (text,) = sqlite3.connect(path).execute("SELECT record FROM runs").fetchone()
    rec = json.loads(text, parse_constant=lambda t: pytest.fail(f"non-strict token {t}"))
    assert rec["final_val_loss"] is None and rec["loss_curve"] == [[1, None]]


def test_validation_data_enters_the_run_key_by_content_and_old_keys_move_without_retraining(tmp_path):
    """A run's validation file is part of what it measures, by content: the same file in another folder is the
    same run. Stores written when the path was in the key keep their runs: RunStore.rekey moves them once."""
    from embrecipe.runs.records import legacy_run_key, run_identity

    config = {"model": "m", "method": {"name": "full"}, "budget": 1e12, "seed": 0, "val_data": "/a/val.jsonl"}
    moved = {**config, "val_data": "/elsewhere/copy-of-val.jsonl"}
    ident, key = run_identity(config, "fp", "valfp")
    assert "val_data" not in ident and ident["val_data_fingerprint"] == "valfp"
    assert run_identity(moved, "fp", "valfp")[1] == key  # moved file, same content: the same run
    assert run_identity(config, "fp", "other")[1] != key  # other content: another run
    assert legacy_run_key(config, "fp") == run_identity(config, "fp")[1] != key
    assert legacy_run_key(moved, "fp") != legacy_run_key(config, "fp")  # what the path-key got wrong
    assert legacy_run_key({k: v for k, v in config.items() if k != "val_data"}, "fp") is None

    legacy_ident, legacy = run_identity(config, "fp")
    with RunStore(tmp_path / "old.sqlite") as st:
        st.add_pending([legacy_ident])
        assert st.claim(legacy)
        st.complete(legacy, {"config": legacy_ident, "model": "m", "method": "full", "final_val_loss": 1.5})
        st.add_pending([run_identity({**config, "seed": 1}, "fp")[0]])  # a pending legacy row stays put
        assert not st.rekey(run_identity({**config, "seed": 1}, "fp")[1], "x", {})
        assert st.rekey(legacy, key, ident)
        assert st.status(legacy) is None and st.status(key) == "completed"
        rec = st.record(key)
        assert rec.loss() == 1.5 and rec.key == key and rec.details["rekeyed_from"] == legacy
        assert [r.key for r in st.records()] == [key]  # moved, not copied: a fit sees it once
        assert not st.rekey(legacy, key, ident)  # nothing left to move
