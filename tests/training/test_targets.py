"""Issue 21's training items: epoch/step targets metered in FLOPs, repeated data, precision auto, step-1
throughput, the method-aware default LR and the truncation count."""

import json
import math
import subprocess
import sys
import warnings

import pytest

from embrecipe.errors import BudgetError, EmbrecipeWarning, InputError
from embrecipe.models.methods import LoRA
from embrecipe.training.budget import budget_of_steps, epochs_over_unique, steps_for_epochs
from embrecipe.training.config import TrainConfig, card_lr, config_from_dict, default_lr, resolve_lr
from embrecipe.training.device import choose_precision
from embrecipe.training.tracking import step_metrics
from embrecipe.training.trainer import train


def _cfg(model, data, **kw):
    base = dict(model=model, data=data, batch_size=16, progress=False, seed=0)
    base.update(kw)
    if not any(k in base for k in ("budget", "epochs", "max_steps")):
        base["budget"] = 1.5e9
    return TrainConfig(**base)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "embrecipe.cli", *args], capture_output=True, text=True, env=env)


# ------------------------------------------------------------------------------------- epoch and step targets
def test_step_and_epoch_arithmetic_is_exact():
    assert steps_for_epochs(3, 6) == 18 and steps_for_epochs(0.01, 6) == 1
    assert budget_of_steps(iter([5, 7, 11, 13]), 2) == 12
    assert epochs_over_unique(17, 64, 270) == pytest.approx(4.03, abs=0.01)


def test_max_steps_trains_that_many_steps_and_meters_the_flops_exactly(tiny_models, tiny_pair_data):
    record = train(_cfg(tiny_models["llama"], tiny_pair_data, max_steps=4))
    assert record.steps == 4
    assert record.model_flops == record.budget  # the target became the FLOPs of exactly those 4 batches
    assert record.details["target"] == {"max_steps": 4}
    assert record.details["planned_steps"] == 4
    lrs = record.details["step_lrs"]
    assert all(x > 0 for x in lrs) and lrs[-1] < max(lrs)  # the schedule follows the target to its end
    assert record.config.get("max_steps") == 4 and record.config.get("budget") is None


def test_epochs_target_trains_whole_passes_without_a_repetition_warning(tiny_models, tiny_pair_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbrecipeWarning)  # asked for 2 epochs: no warning about repeating
        record = train(_cfg(tiny_models["llama"], tiny_pair_data, epochs=2))
    assert record.steps == 2 * (len(tiny_pair_data) // 16)
    assert record.model_flops == record.budget
    assert record.details["epochs"] == pytest.approx(2.0)


def test_a_budget_past_one_epoch_warns_with_the_number(tiny_models, tiny_pair_data):
    with pytest.warns(EmbrecipeWarning, match=r"trains \d+\.\d epochs of its 96 unique pairs"):
        train(_cfg(tiny_models["llama"], tiny_pair_data, max_steps=12))


def test_targets_are_exclusive_and_one_is_required():
    base = {"model": "m", "data": "d.jsonl"}
    with pytest.raises(BudgetError, match="exactly one training target"):
        config_from_dict({**base, "budget": 1e12, "epochs": 2})
    with pytest.raises(BudgetError, match="epochs must be a positive"):
        config_from_dict({**base, "epochs": 0})
    with pytest.raises(BudgetError, match="max_steps must be"):
        config_from_dict({**base, "max_steps": 0})
    with pytest.raises(InputError, match="missing training setting"):
        config_from_dict(base)
    assert config_from_dict({**base, "max_steps": 3}).max_steps == 3
    # a FLOP-budget run keeps the config (and store key) it had before epochs/max_steps existed
    assert "epochs" not in TrainConfig(model="m", data="d", budget=1.0).to_dict()


def test_cli_refuses_budget_with_epochs(tmp_path):
    r = _cli("train", "--model", "m", "--data", "d.jsonl", "--budget", "1e12", "--epochs", "2", "--out",
             str(tmp_path / "o"))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


# ------------------------------------------------------------------------------------------- repeated data
def test_one_repeated_pair_is_refused_not_trained(tiny_models, tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text((json.dumps({"query": "what is a cat", "pos": "a small animal"}) + "\n") * 64)
    with pytest.raises(InputError, match=r"1 unique \(query, positive\) pairs in 64 rows"):
        train(_cfg(tiny_models["llama"], str(path), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_two_row_csv_is_refused_by_the_cli(tiny_models, tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("query,pos\nwhat is a cat,a small animal\nwhat is a dog,a loyal animal\n")
    r = _cli("train", "--model", tiny_models["llama"], "--data", str(path), "--batch-size", "2", "--max-steps",
             "3", "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"embrecipe: error: {path}: 2 unique")
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ precision auto
@pytest.mark.parametrize(("flags", "bf16"), [
    ({"avx512f", "avx512bw", "avx512_vnni"}, False),  # AVX-512 without bf16 units: oneDNN emulates, 4x slower
    ({"avx2", "fma"}, False),
    (set(), False),
    ({"avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
])
def test_auto_precision_on_a_cpu_follows_the_instruction_set(flags, bf16):
    use, why = choose_precision("auto", "cpu", cpu_flags=flags)
    assert use is bf16 and why.startswith("auto: " + ("bf16" if bf16 else "fp32"))


def test_precision_requests_and_cuda():
    assert choose_precision("fp32", "cuda", cuda_bf16=True)[0] is False
    assert choose_precision("bf16", "cpu", cpu_flags=set())[0] is True  # asked for: emulated, but allowed
    assert choose_precision("auto", "cuda", cuda_bf16=True)[0] is True
    assert choose_precision("auto", "cuda", cuda_bf16=False)[0] is False


# ----------------------------------------------------------------------------------- throughput at step 1
def test_step_metrics_without_elapsed_time_log_no_throughput():
    m = step_metrics(loss=2.0, lr=1e-3, model_flops=3e9, tokens=1000, train_time_s=0.0)
    assert "train/tokens_per_s" not in m and "train/model_flops_per_s" not in m


def test_logged_throughput_is_finite_and_plausible_from_step_1(tiny_models, tiny_pair_data, monkeypatch):
    import embrecipe.training.trainer as trainer

    logged = []

    def spy(**kw):
        logged.append(kw)
        return step_metrics(**kw)

    monkeypatch.setattr(trainer, "step_metrics", spy)
    record = train(_cfg(tiny_models["llama"], tiny_pair_data, max_steps=4))
    first = logged[0]
    assert first["tokens"] > 0 and first["train_time_s"] > 0
    step1_rate = first["tokens"] / first["train_time_s"]
    # at most the step's own tokens over its own (shortest possible) time: never the 1e11 tokens/s of a ~0 s base
    assert math.isfinite(step1_rate) and step1_rate <= 10 * record.details["tokens_per_s"]
    assert first["train_time_s"] >= 0.5 * record.details["step_times_s"][0]


# ------------------------------------------------------------------------------------------------- the LR
def test_default_lr_is_method_aware():
    assert default_lr("/x/smollm2-L8", "lora") == pytest.approx(10 * default_lr("/x/smollm2-L8", "full"))
    assert default_lr("some/unknown", "bias") == pytest.approx(1e-3)
    assert default_lr("some/unknown", "freeze") == pytest.approx(1e-4)


def test_card_lr_is_used_where_the_card_knows_the_model(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"recipe": {"lora-r32": {"/elsewhere/testbed/smollm2-L4": {"lr": 2e-3}}}}))
    assert card_lr("/my/home/testbed/smollm2-L4", "lora-r32", card) == 2e-3
    assert card_lr("/my/home/testbed/smollm2-L8", "lora-r32", card) is None
    assert card_lr("m", "full", tmp_path / "missing.json") is None
    # the packaged card knows the SmolLM2 ladder
    lr, source = resolve_lr(TrainConfig(model="/any/where/smollm2-L2", data="d", budget=1.0, method=LoRA(32)))
    assert lr > default_lr("smollm2-L2", "full") and "law card" in source


def test_lora_run_without_lr_uses_the_method_default(tiny_models, tiny_pair_data):
    record = train(_cfg(tiny_models["llama"], tiny_pair_data, method=LoRA(rank=2), max_steps=2))
    assert record.lr == pytest.approx(1e-3)  # 10 x the 1e-4 of an unknown model
    assert "x10 for lora" in record.details["lr_source"]


# ------------------------------------------------------------------------------------------- truncation
def test_truncated_texts_are_counted_and_reported(tiny_models, tiny_pair_data, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    max_len = 8
    longer = sum(len(tok(t)["input_ids"]) > max_len for t in tiny_pair_data.queries + tiny_pair_data.positives)
    assert longer > 0
    record = train(_cfg(tiny_models["llama"], tiny_pair_data, max_steps=1, max_seq_length=max_len, progress=True))
    assert record.details["truncated_texts"] == longer
    assert f"{longer} text(s) of" in capsys.readouterr().err
