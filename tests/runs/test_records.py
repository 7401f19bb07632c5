"""The typed run record: one layout out, every known layout in, and stores written before it keep working."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from embrecipe.errors import InputError
from embrecipe.runs.records import RECORD_SCHEMA, RunConfig, RunRecord, as_record, run_key
from embrecipe.runs.store import RunStore
from embrecipe.sweep.synthetic import synthetic_train

SHAPE = {"name": "/x/m2", "embedding_params": 10752, "block_params": [8544, 8544], "final_norm_params": 64,
         "bias_params": 608, "hidden_size": 32, "linear_in_out": {"dense": 128, "query_key_value": 256},
         "other_params": 0, "non_embedding_params": 17152}
CONFIG = {"model": "/x/m2", "data": "/x/pairs.jsonl", "method": {"name": "lora", "rank": 4}, "budget": 2e9,
          "batch_size": 8, "seed": 0, "lr": None, "out": "/x/runs/k"}

# The trainer's nested schema-1 layout (as study/full/study.sqlite held it before the migration).
NESTED = {
    "schema": 1, "status": "completed", "config": CONFIG, "budget": 2e9, "batch_size": 8, "seed": 0, "steps": 53,
    "lr": 1e-3, "method": "lora", "method_key": "lora-r4", "hparams": {"rank": 4},
    "model": {"name": "/x/m2", "non_embedding_params": 17152, "trainable_params": 3072,
              "trainable_params_total": 3100, "shape": SHAPE},
    "data": {"source": "/x/pairs.jsonl", "fingerprint": "05d24de45cadf6d4", "mean_tokens_per_pair": 45.9,
             "pairs": 300},
    "model_flops": 1999580160.0, "hardware_flops": 2.5e9, "tokens": 19430, "final_train_loss": 0.67,
    "final_val_loss": 0.62, "loss_curve": [[35195904, 4.03], [68436480, 4.45]], "train_time_s": 22.4,
    "wall_time_s": 22.8, "tokens_per_s": 867.4, "step_times_s": [0.4, 0.4], "device": "cpu",
}
# The same run in the flat layout synthetic.py wrote before (method a dict, N/N_t and shape at the top).
FLAT = {
    "status": "completed", "config": CONFIG, "model": "/x/m2", "method": {"name": "lora", "rank": 4},
    "budget": 2e9, "batch_size": 8, "seed": 0, "steps": 53, "lr": 1e-3, "shape": SHAPE, "n_params": 17152,
    "n_trainable": 3072, "trainable_params_total": 3100, "data_source": "/x/pairs.jsonl",
    "data_fingerprint": "05d24de45cadf6d4", "tokens_per_pair": 45.9, "dataset_pairs": 300,
    "model_flops": 1999580160.0, "hardware_flops": 2.5e9, "tokens": 19430, "final_train_loss": 0.67,
    "final_val_loss": 0.62, "loss_curve": [[35195904, 4.03], [68436480, 4.45]],
    "train_time_s": 22.4, "wall_time_s": 22.8, "tokens_per_s": 867.4, "step_times_s": [0.4, 0.4],
    "device": "cpu",
}


def test_legacy_nested_and_flat_layouts_parse_to_the_same_record():
    nested, flat = RunRecord.from_dict(NESTED), RunRecord.from_dict(FLAT)
    assert nested == flat
    assert nested.model == "/x/m2" and nested.n_params == 17152 and nested.n_trainable == 3072
    assert nested.method == {"name": "lora", "rank": 4} and nested.variant == "lora-r4"
    assert nested.unique_pairs == 300 and nested.tokens_per_pair == 45.9 and nested.shape.num_blocks == 2
    assert nested.details == {"trainable_params_total": 3100, "data_source": "/x/pairs.jsonl",
                              "hardware_flops": 2.5e9, "train_time_s": 22.4, "wall_time_s": 22.8,
                              "tokens_per_s": 867.4, "step_times_s": [0.4, 0.4], "device": "cpu"}
    assert nested.timings is None and nested.all_timings == {"train_time_s": 22.4, "wall_time_s": 22.8,
                                                             "tokens_per_s": 867.4}


def test_round_trip_in_one_layout():
    rec = RunRecord.from_dict(NESTED)
    d = rec.to_dict()
    assert d["schema"] == RECORD_SCHEMA == 2 and d["model"] == "/x/m2" and d["n_params"] == 17152
    assert d["hardware_flops"] == 2.5e9 and "hparams" not in d and "data" not in d  # details at the top level
    assert RunRecord.from_dict(d) == rec
    assert RunRecord.from_dict(json.loads(json.dumps(d))) == rec  # through JSON (tuples become lists)
    syn = synthetic_train({"model": "toy-h64-l2", "method": {"name": "full"}, "budget": 1e13, "batch_size": 32})
    assert isinstance(syn, RunRecord) and syn.synthetic
    assert RunRecord.from_dict(json.loads(json.dumps(syn.to_dict()))) == syn


def test_run_config_gives_back_the_dict_it_came_from_and_its_run_key():
    cfg = RunConfig.from_dict(CONFIG)
    assert cfg.to_dict() == CONFIG and cfg.model == "/x/m2" and cfg.extra["data"] == "/x/pairs.jsonl"
    assert cfg.key() == run_key(CONFIG)
    without_lr = {k: v for k, v in CONFIG.items() if k != "lr"}  # absent and None are different configs
    assert RunConfig.from_dict(without_lr).to_dict() == without_lr
    assert RunConfig.from_dict(without_lr).key() != cfg.key()


def test_loss_follows_the_fit_default_order_and_any_loss_key():
    rec = RunRecord.from_dict({**FLAT, "final_val_loss": None, "val_loss": 0.7})
    assert rec.loss() == 0.7 and rec.loss("final_train_loss") == 0.67 and rec.loss("val_loss") == 0.7
    assert RunRecord.from_dict(FLAT).loss() == 0.62
    assert RunRecord.from_dict({"config": {"eval_loss": 0.9}}).loss() == 0.9  # looked up in the config too
    assert RunRecord.from_dict({"config": {}}).loss() is None


def test_unknown_record_schema_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="schema 99 is not supported"):
        RunRecord.from_dict({**NESTED, "schema": 99})
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as st:
        key = st.put(NESTED)
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET record = ? WHERE key = ?", (json.dumps({**NESTED, "schema": 99}), key))
    con.commit()
    con.close()
    with RunStore(path) as st, pytest.raises(InputError) as info:
        st.records()
    assert str(path) in str(info.value) and key in str(info.value) and "\n" not in str(info.value)


def _legacy_store(path):
    """A store as embrecipe wrote it before records.py: schema_version 1, the trainer's nested record JSON."""
    RunStore(path).close()  # the same tables (their layout did not change)
    con = sqlite3.connect(path)
    key = run_key(CONFIG)
    con.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    con.execute("INSERT INTO runs (key, status, model, method, variant, budget, seed, n_params, n_trainable,"
                " model_flops, tokens, steps, final_train_loss, final_val_loss, loss_curve, timings, config, record,"
                " attempts, created_at, updated_at) VALUES (?, 'completed', '/x/m2', 'lora', 'lora-r4', 2e9, 0,"
                " 17152, 3072, 1999580160.0, 19430, 53, 0.67, 0.62, ?, ?, ?, ?, 1, 1.0, 1.0)",
                (key, json.dumps(NESTED["loss_curve"]), json.dumps({"train_time_s": 22.4, "wall_time_s": 22.8, "tokens_per_s": 867.4}), json.dumps(CONFIG),
                 json.dumps({**NESTED, "key": key})))
    con.commit()
    con.close()
    return key


def _columns(path):
    con = sqlite3.connect(path)
    rows = con.execute("SELECT * FROM runs ORDER BY key").fetchall()
    names = [d[0] for d in con.execute("SELECT * FROM runs").description]
    version = con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
    con.close()
    return [{n: v for n, v in zip(names, r, strict=True) if n not in ("record", "updated_at", "heartbeat_at",
                                                                         "worker", "attempts", "status")}
            for r in rows], version


def test_a_legacy_store_is_read_as_it_is_and_migrated_on_the_first_write(tmp_path):
    path = tmp_path / "old.sqlite"
    key = _legacy_store(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    cols_before, _ = _columns(path)
    with RunStore(path) as st:  # reading: parsed from the old layout, the file untouched
        (rec,) = st.records()
    assert rec == RunRecord.from_dict(NESTED).with_key(key)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before and _columns(path)[1] == "1"
    other = {**CONFIG, "seed": 1}
    with RunStore(path) as st:  # the first write rewrites every record into schema 2, in its transaction
        assert st.claim(run_key(other), other)
        assert st.records() == [rec]
    cols_after, version = _columns(path)
    assert version == "2"
    assert [c for c in cols_after if c["key"] == key] == cols_before  # query columns unchanged
    con = sqlite3.connect(path)
    stored = json.loads(con.execute("SELECT record FROM runs WHERE key = ?", (key,)).fetchone()[0])
    con.close()
    assert stored["schema"] == 2 and stored["model"] == "/x/m2" and stored["n_params"] == 17152
    assert RunRecord.from_dict(stored) == rec


def test_store_saves_a_run_record_and_gives_it_back_with_its_key(tmp_path):
    syn = synthetic_train({"model": "toy-h64-l2", "method": {"name": "full"}, "budget": 1e13, "batch_size": 32})
    with RunStore(tmp_path / "runs.sqlite") as st:
        key = st.put(syn)
        (back,) = st.records()
        row = st.get(key)
    assert key == syn.config.key() and back == syn.with_key(key) and st.migrate() == 0
    assert row["variant"] == "full" and row["n_params"] == syn.n_params and row["record"]["schema"] == 2
    assert as_record(row["record"]) == syn


def test_run_record_is_exported_at_the_package_top():
    from embrecipe import RunConfig as TopConfig
    from embrecipe import RunRecord as TopRecord

    assert TopRecord is RunRecord and TopConfig is RunConfig
