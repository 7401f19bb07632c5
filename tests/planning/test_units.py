"""Plans in the user's units: hours (per-option throughput), device memory (auto GradCache), serving cost.

Pure functions and the planner on synthetic laws (no torch), plus the CLI on a tiny store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from embrecipe.cli import main
from embrecipe.errors import BudgetError, InputError
from embrecipe.flops import ModelShape
from embrecipe.models.methods import method_from_dict
from embrecipe.planning.planner import plan
from embrecipe.planning.units import (
    GIB,
    Measurement,
    ThroughputTable,
    auto_mini_batch,
    fit_activation_coefficient,
    hours_to_flops,
    interpolate_loglog,
    load_throughput,
    serving_flops,
    training_memory,
)
from embrecipe.runs.store import RunStore
from tests.planning.test_planner import METHODS, family, true_laws

REPO = Path(__file__).resolve().parents[2]
FULL, LORA8 = method_from_dict({"name": "full"}), method_from_dict({"name": "lora", "rank": 8})
FREEZE = method_from_dict({"name": "freeze", "trainable_blocks": 0.5})


def toy() -> ModelShape:
    # 4 blocks of 1000 parameters, linear in+out 40 per block, hidden 8
    return ModelShape(name="t", embedding_params=500, block_params=(1000,) * 4, final_norm_params=8,
                      bias_params=0, linear_in_out={"fc": 160}, hidden_size=8)


# ---------------------------------------------------------------------------------------------- hours
def test_hours_to_flops_and_loglog_interpolation():
    assert hours_to_flops(2, 1e12) == 7.2e15
    assert interpolate_loglog([1, 100], [10, 1000], 10) == pytest.approx((100, 1.0))  # geometric midpoint
    assert interpolate_loglog([1, 100], [10, 1000], 100) == pytest.approx((1000, 1.0))
    assert interpolate_loglog([1, 100], [10, 1000], 400) == pytest.approx((1000, 4.0))  # held, 4x above
    assert interpolate_loglog([1, 100], [10, 1000], 0.5) == pytest.approx((10, 2.0))  # held, 2x below
    with pytest.raises(InputError):
        interpolate_loglog([], [], 1.0)


def _records(device="NVIDIA H100 80GB HBM3"):
    recs = []
    for n, fps in ((1e6, [1e12, 3e12, 2e12]), (1e8, [8e12])):  # median 2e12 at 1e6
        for f in fps:
            recs.append({"status": "completed", "model": {"non_embedding_params": n}, "method": "full",
                         "method_key": "full", "model_flops_per_s": f, "train_time_s": 10.0,
                         "device": "cuda", "device_name": device})
    recs.append({"status": "completed", "model": {"non_embedding_params": 1e6}, "method": "lora",
                 "method_key": "lora-r32", "model_flops_per_s": 5e11, "train_time_s": 10.0, "device": "cuda",
                 "device_name": device})
    recs.append({"status": "failed", "model": {"non_embedding_params": 1e6}, "method": "full",
                 "method_key": "full", "model_flops_per_s": 1e15, "train_time_s": 1.0, "device": "cuda"})
    return recs


def test_throughput_from_records_median_interpolation_and_fallbacks():
    t = ThroughputTable.from_records(_records())
    assert t.flops_per_s("full", "full", 1e6) == (2e12, [])  # median of three; the failed run is ignored
    f, notes = t.flops_per_s("full", "full", 1e7)  # halfway in log N between 2e12 and 8e12
    assert f == pytest.approx(4e12) and notes == []
    f, notes = t.flops_per_s("full", "full", 1e9)
    assert f == 8e12 and "10x above" in notes[0]
    f, notes = t.flops_per_s("lora-r8", "lora", 1e6)  # borrows the other LoRA rank
    assert f == 5e11 and "lora runs" in notes[0]
    f, notes = t.flops_per_s("freeze-f0.5", "freeze", 1e6)  # no freeze at all: every variant
    assert "all runs" in notes[0]
    mixed = _records() + _records(device="NVIDIA A100-SXM4-40GB")
    with pytest.raises(InputError, match="several devices"):
        ThroughputTable.from_records(mixed)
    assert ThroughputTable.from_records(mixed, device="a100").flops_per_s("full", "full", 1e6)[0] == 2e12
    with pytest.raises(InputError, match="no completed run"):
        ThroughputTable.from_records(mixed, device="MI300")


def test_benchmark_row():
    t = load_throughput(row="smollm2-L8/full/64", results=REPO / "benchmarks" / "results.json")
    data = json.loads((REPO / "benchmarks" / "results.json").read_text())
    row = next(r for r in data["runs"][0]["training"]
               if (r["model"], r["method"], r["batch"]) == ("smollm2-L8", "full", 64))
    assert t.single and t.flops_per_s("lora-r8", "lora", 123.0)[0] == row["embrecipe_model_gflops"] * 1e9
    with pytest.raises(InputError, match="matches 2 rows"):  # batch 64 and 256
        load_throughput(row="smollm2-L8/full", results=REPO / "benchmarks" / "results.json")
    with pytest.raises(InputError, match="rows: "):
        load_throughput(row="nope/full", results=REPO / "benchmarks" / "results.json")
    with pytest.raises(InputError, match="MODEL/METHOD"):
        load_throughput(row="justone", results=REPO / "benchmarks" / "results.json")
    with pytest.raises(InputError, match="exactly one"):
        load_throughput()


def test_plan_in_hours_gives_each_option_its_own_budget():
    laws = true_laws()
    fam = family()
    ns = [m.shape.non_embedding_params for m in fam]
    meas = [Measurement("full", "full", ns[0], 1e12), Measurement("full", "full", ns[-1], 4e12),
            Measurement("lora-r8", "lora", ns[0], 5e11), Measurement("lora-r8", "lora", ns[-1], 1.5e12)]
    t = ThroughputTable(meas, label="test")
    p = plan(None, laws, hours=3.0, throughput=t)
    budgets = {c.budget for c in p.candidates}
    assert len(budgets) == len(p.candidates)  # every (size, method) its own FLOPs
    for c in p.candidates:
        f, _ = t.flops_per_s(c.variant, METHODS[c.variant]["name"], c.n_params)
        assert c.budget == pytest.approx(3 * 3600 * f) and c.flops_per_s == pytest.approx(f)
        assert c.tokens == pytest.approx(c.budget / c.flops_per_token)
        # the loss each option reaches in 3 hours, independently: the law at its own D
        assert c.loss == pytest.approx(laws[c.variant].predict(c.n_params, c.budget / c.flops_per_token))
    assert p.best.loss == min(c.loss for c in p.candidates)
    text = p.format()
    assert "3 device-hours" in text and "FLOP/s" in text
    with pytest.raises(InputError, match="not both"):
        plan(1e15, laws, hours=1.0, throughput=t)
    with pytest.raises(InputError, match="throughput"):
        plan(None, laws, hours=1.0)
    with pytest.raises(BudgetError):
        plan(None, laws, hours=-1.0, throughput=t)


# --------------------------------------------------------------------------------------------- memory
def test_memory_formula_term_by_term():
    s = toy()  # N = 4008, embeddings 500, a_l = 40 per block
    e = training_memory(s, FULL, batch_size=10, seq_len=5, param_bytes=4, activation_bytes=2,
                        overhead_bytes=100, kappa=1.0)
    assert e["weights"] == 4 * 4508
    assert e["gradients"] == 4 * 4508 and e["optimizer"] == 8 * 4508  # full trains the embeddings too
    assert e["activations"] == 2 * (2 * 10 * 5) * 4 * 40  # bytes x texts x tokens x blocks x a_l
    assert e["gradcache"] == 0 and e["total"] == sum(v for k, v in e.items() if k != "total")
    f = training_memory(s, FREEZE, batch_size=10, seq_len=5, activation_bytes=2, kappa=1.0, overhead_bytes=0)
    assert f["activations"] == e["activations"] / 2  # only the trained half saves activations
    assert f["optimizer"] == 8 * 2008  # the trained blocks and the final norm
    lo = training_memory(s, LORA8, batch_size=10, seq_len=5, activation_bytes=2, kappa=1.0, lora_excess=0.5)
    assert lo["activations"] == 1.5 * e["activations"]  # peft's LoRA layers keep more per token
    assert lo["optimizer"] == 8 * 8 * 160  # rank x in+out of the adapted layers
    g = training_memory(s, FULL, batch_size=10, seq_len=5, mini_batch=2, activation_bytes=2, kappa=1.0,
                        overhead_bytes=100)
    assert g["activations"] == e["activations"] / 5 and g["gradcache"] == 2 * 2 * 10 * 8 * 4


def test_auto_mini_batch():
    s = toy()
    kw = dict(batch_size=64, seq_len=5, activation_bytes=2, kappa=1.0, overhead_bytes=0)
    plain = training_memory(s, FULL, **kw)["total"]
    assert auto_mini_batch(s, FULL, memory_bytes=plain, **kw)[0] is None  # fits as is
    m, est = auto_mini_batch(s, FULL, memory_bytes=plain - 1, **kw)
    assert m == 32 and est["total"] <= plain - 1
    static = training_memory(s, FULL, mini_batch=1, **kw)["total"]
    m, _ = auto_mini_batch(s, FULL, memory_bytes=static, **kw)
    assert m == 1
    assert auto_mini_batch(s, FULL, memory_bytes=static - 1, **kw) is None


def test_plan_drops_what_does_not_fit_and_sizes_gradcache():
    laws = _fitted_at(true_laws(), 1024)
    big = family()[-1]
    kw = dict(batch_size=1024, seq_len=75, precision="bf16", memory_overhead_gib=0.5)
    free = plan(1e17, laws, **kw)
    # enough memory for the largest model's weights and optimizer, not its plain batch
    need_plain = training_memory(big.shape, FULL, batch_size=1024, seq_len=75, overhead_bytes=0.5 * GIB)["total"]
    need_static = training_memory(big.shape, FULL, batch_size=1024, seq_len=75, mini_batch=1,
                                  overhead_bytes=0.5 * GIB)["total"]
    gib = (need_static + need_plain) / 2 / GIB
    p = plan(1e17, laws, device_memory_gib=gib, **kw)
    c = next(c for c in p.candidates if c.model == big.name and c.variant == "full")
    assert c.mini_batch is not None and c.mini_batch < 1024 and c.memory_gib <= gib
    assert "GiB" in p.format() and "mini" in p.format()
    # too little memory for the largest model at all: dropped with a note; the rest still ranked
    tiny = training_memory(family()[1].shape, FULL, batch_size=1024, seq_len=75, mini_batch=1,
                           overhead_bytes=0.5 * GIB)["total"] / GIB * 1.01
    q = plan(1e17, laws, device_memory_gib=tiny, **kw)
    assert all(c.model in (family()[0].name, family()[1].name) for c in q.candidates)
    assert any("does not fit" in s for s in q.skipped)
    assert len(q.candidates) < len(free.candidates)
    assert free.best.model == family()[-1].name  # the largest without a limit, so the limit moved it
    assert any(n.startswith("the memory limit moves the optimum to a smaller model") for n in q.notes)
    with pytest.raises(BudgetError, match="no option fits"):
        plan(1e17, laws, device_memory_gib=1e-6, **kw)


def test_kappa_fit():
    assert fit_activation_coefficient([(3.0, 1.0), (5.0, 2.0), (9.0, 4.0)]) == pytest.approx((2.0, 1.0))
    with pytest.raises(InputError):
        fit_activation_coefficient([(1.0, 1.0), (2.0, 1.0)])


# -------------------------------------------------------------------------------------------- serving
def test_serving_cost_moves_the_optimum_to_a_smaller_model():
    laws = true_laws()
    assert serving_flops(1e6, 1e9) == 2e15
    budget = 1e16
    base = plan(budget, laws)
    # the largest family member is chosen without serving; find a corpus size that moves it
    moved = None
    for t in (1e6, 1e7, 1e8, 1e9):
        p = plan(budget, laws, embed_tokens=t)
        for c in p.candidates:
            assert c.serving_flops == pytest.approx(2 * c.n_params * t)
            assert c.budget == pytest.approx(budget - 2 * c.n_params * t)
            assert c.tokens == pytest.approx(c.budget / c.flops_per_token)
        if p.best.model != base.best.model:
            moved = p
            break
    assert moved is not None, "the serving cost never moved the optimum on this toy family"
    assert moved.best.n_params < base.best.n_params
    assert any("moves the optimum to a smaller model" in n for n in moved.notes)
    # independently: the same ranking from the law at each option's remaining budget
    best = min(moved.candidates, key=lambda c: laws[c.variant].predict(
        c.n_params, (budget - 2 * c.n_params * moved.units["embed_tokens"]) / c.flops_per_token))
    assert (best.model, best.variant) == (moved.best.model, moved.best.variant)
    assert any("does not change" in n for n in plan(budget, laws, embed_tokens=1.0).notes)
    with pytest.raises(BudgetError, match="cannot pay for embedding"):
        plan(1e10, laws, embed_tokens=1e12)


# ------------------------------------------------------------------------------------------------ CLI
def _fitted_at(laws, batch_size: int):
    """The synthetic card as if its runs had used ``batch_size`` (plans at another batch size are refused)."""
    laws.batch_size, laws.batch_sizes = batch_size, [batch_size]
    return laws


def _card(tmp_path, batch_size: int = 32) -> Path:
    laws = _fitted_at(true_laws(with_samples=True), batch_size)
    laws.provenance = "synthetic test card"
    laws.save(tmp_path / "card.json")
    return tmp_path / "card.json"


def _store(tmp_path) -> Path:
    path = tmp_path / "runs.sqlite"
    fam = family()
    with RunStore(path) as store:
        for i, (m, v, fps) in enumerate([(fam[0], "full", 1e12), (fam[-1], "full", 4e12),
                                         (fam[0], "lora-r8", 5e11), (fam[-1], "lora-r8", 2e12)]):
            cfg = {"model": m.name, "method": METHODS[v], "budget": 1e15, "seed": i}
            rec = {"config": cfg, "model": {"name": m.name, "non_embedding_params": m.shape.non_embedding_params},
                   "method": METHODS[v]["name"], "method_key": v, "final_val_loss": 1.0, "tokens": 1e6,
                   "model_flops_per_s": fps, "train_time_s": 100.0, "device": "cuda", "device_name": "FakeGPU"}
            from embrecipe.runs.store import run_key

            key = run_key(cfg)
            store.claim(key, cfg)
            store.complete(key, rec)
    return path


def test_cli_hours_memory_serving(tmp_path, capsys):
    card, store = _card(tmp_path), _store(tmp_path)
    assert main(["plan", "--hours", "2", "--laws", str(card), "--throughput-from", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["units"]["hours"] == 2.0 and "FakeGPU" in out["units"]["throughput"]
    assert len({c["budget"] for c in out["candidates"]}) == len(out["candidates"])
    assert main(["plan", "--hours", "2", "--laws", str(card), "--throughput-from", str(store)]) == 0
    text = capsys.readouterr().out
    assert "2 device-hours" in text and "FLOP/s" in text
    assert "measured at batch size" not in text  # the store's runs record no batch size here
    assert main(["plan", "--hours", "2", "--laws", str(card), "--throughput-row", "smollm2-L8/full/64"]) == 0
    text = capsys.readouterr().out
    assert "measured at batch size 64, the plan is at 32" in text and "same FLOP budget" in text
    assert main(["plan", "--budget", "1e17", "--laws", str(card), "--device-memory", "80"]) == 0
    assert "Memory: 80 GiB" in capsys.readouterr().out
    assert main(["plan", "--budget", "1e17", "--laws", str(card), "--embed-tokens", "1e8"]) == 0
    text = capsys.readouterr().out
    assert "Serving:" in text and "note: the serving cost" in text


@pytest.mark.parametrize("argv, message", [
    (["--hours", "2"], "needs measured throughput|exactly one"),
    (["--budget", "1e17", "--throughput-row", "smollm2-L8/full/64"], "only apply"),
    (["--hours", "1", "--throughput-row", "smollm2-L8/full/64", "--embed-tokens", "1e6"], "not supported"),
    (["--hours", "0", "--throughput-row", "smollm2-L8/full/64"], "positive"),
    (["--hours", "1", "--throughput-from", "missing.sqlite"], "not a run store"),
    (["--hours", "1", "--throughput-row", "smollm2-L8/full"], "add /BATCH"),
    (["--budget", "1e17", "--device-memory", "-3"], "device memory"),
    (["--budget", "1e17", "--embed-tokens", "-1"], "non-negative"),
])
def test_cli_refuses_bad_unit_flags(tmp_path, capsys, argv, message):
    import re

    assert main(["plan", "--laws", str(_card(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_trainer_records_the_device_name(tiny_models, tiny_pair_data):
    # --hours picks throughput per device type; "cpu"/"cuda" alone cannot tell an A100 from an H100
    from embrecipe.training.trainer import TrainConfig, train

    rec = train(TrainConfig(model=tiny_models["llama"], data=tiny_pair_data, budget=4e8, batch_size=16,
                            progress=False, seed=0))
    d = rec.details
    assert d["device"] == "cpu" and d["device_name"] and d["device_name"] != "unknown"
    t = ThroughputTable.from_records([dataclasses.replace(rec, status="completed")], device=d["device_name"][:6])
    assert t.flops_per_s("full", "full", 1.0)[0] == pytest.approx(d["model_flops_per_s"])


def test_cli_run_dry_run_trains_on_what_serving_leaves_at_the_planned_mini_batch(tmp_path, capsys):
    card = _card(tmp_path, batch_size=1024)
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"query": "a", "pos": "b"}\n')
    laws = _fitted_at(true_laws(), 1024)
    big = family()[-1]
    # memory for the largest model's weights and optimizer but not its plain batch of 1024
    lo = training_memory(big.shape, LORA8, batch_size=1024, seq_len=75, mini_batch=1)["total"]
    hi = training_memory(big.shape, LORA8, batch_size=1024, seq_len=75)["total"]
    gib = (lo + hi) / 2 / GIB
    expect = plan(1e17, laws, batch_size=1024, embed_tokens=1e6, device_memory_gib=gib).best
    assert expect.mini_batch is not None
    assert main(["run", "--budget", "1e17", "--laws", str(card), "--data", str(data), "--out",
                 str(tmp_path / "out"), "--batch-size", "1024", "--embed-tokens", "1e6", "--device-memory",
                 str(gib), "--dry-run"]) == 0
    out = capsys.readouterr().out
    config = json.loads(out.split("training config: ", 1)[1].splitlines()[0])
    assert config["budget"] == pytest.approx(1e17 - 2 * expect.n_params * 1e6)
    assert config["mini_batch_size"] == expect.mini_batch and config["model"] == expect.path


def test_memory_constants_are_the_committed_calibration():
    # The planner's kappa and LoRA excess come from measured peaks (benchmarks/memory_model.json); refit them
    # from those measurements and check the validation rows the docs quote.
    import importlib.util

    from embrecipe.planning import units

    spec = importlib.util.spec_from_file_location("memory_model", REPO / "benchmarks" / "memory_model.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    result = mm.compare(json.loads((REPO / "benchmarks" / "memory_model.json").read_text()))
    assert result["kappa"] == pytest.approx(units.DEFAULT_KAPPA, abs=0.01)
    assert result["lora_excess"] == pytest.approx(units.DEFAULT_LORA_EXCESS, abs=0.01)
    validation = [r for r in result["rows"] if r["method"] != "baseline" and not r["used_for_calibration"]]
    assert len(validation) >= 4 and all(abs(r["relative_error"]) < 0.05 for r in validation)
