import pytest

from embrecipe.errors import InputError
from embrecipe.methods import (
    BiasOnly,
    BlockFreezing,
    FullFineTuning,
    LoRA,
    method_from_dict,
    method_to_dict,
    parse_method,
)


def test_parse_and_roundtrip():
    for m in (FullFineTuning(), BlockFreezing(2), BlockFreezing(0.5), BiasOnly(), LoRA(8, alpha=16, targets=("q",))):
        assert method_from_dict(method_to_dict(m)) == m


@pytest.mark.parametrize("bad", [dict(trainable_blocks=0), dict(trainable_blocks=1.5), dict(trainable_blocks="x")])
def test_freeze_validation(bad):
    with pytest.raises(InputError):
        parse_method("freeze", **bad)


@pytest.mark.parametrize("bad", [dict(rank=0), dict(rank=2.5), dict(rank=4, dropout=1.0), dict(rank=4, alpha=-1)])
def test_lora_validation(bad):
    with pytest.raises(InputError):
        parse_method("lora", **bad)


def test_unknown_method_and_hparam():
    with pytest.raises(InputError, match="unknown method"):
        parse_method("prefix")
    with pytest.raises(InputError, match="no hyper-parameter"):
        parse_method("full", rank=3)


def test_fraction_rounds_to_at_least_one_block():
    assert BlockFreezing(0.01).blocks_to_train(30) == 1
    assert BlockFreezing(0.25).blocks_to_train(30) == 8
    assert BlockFreezing(1.0).blocks_to_train(4) == 4
    with pytest.raises(InputError):
        BlockFreezing(5).blocks_to_train(4)


# --- applied to real (tiny) models ---------------------------------------------------------------------


def _apply(model_dir, method):
    from embrecipe.modeling import apply_method, load_sentence_transformer

    model = load_sentence_transformer(model_dir)
    return model, apply_method(model, method)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_trainable_sets(tiny_models, arch):
    model, info = _apply(tiny_models[arch], FullFineTuning())
    assert len(info.trainable_names) == len(list(model.parameters()))

    _, info = _apply(tiny_models[arch], BlockFreezing(1))
    names = info.trainable_names
    assert names and all(".1." in n or "norm" in n for n in names), names  # last block + final norm
    assert not any(".0." in n for n in names)
    assert not any("embed" in n for n in names)

    _, info = _apply(tiny_models[arch], LoRA(rank=2))
    assert info.trainable_names and all("lora_" in n for n in info.trainable_names)
    assert info.n_trainable == LoRA(rank=2).trainable_params(info.shape)


def test_bias_only_on_neox(tiny_models):
    _, info = _apply(tiny_models["gpt_neox"], BiasOnly())
    assert info.trainable_names and all(n.endswith("bias") for n in info.trainable_names)
    assert info.n_trainable == info.shape.bias_params


def test_bias_only_without_biases_is_a_configuration_error(tiny_models):
    with pytest.raises(InputError, match="no trainable parameters"):
        _apply(tiny_models["llama"], BiasOnly())
    from embrecipe.family import shape_of_checkpoint

    with pytest.raises(InputError, match="no bias parameters"):
        BiasOnly().trainable_params(shape_of_checkpoint(tiny_models["llama"]))


def test_lora_unknown_target_is_an_error(tiny_models):
    with pytest.raises(InputError, match="not found"):
        _apply(tiny_models["llama"], LoRA(rank=2, targets=("query_key_value",)))


def test_lora_explicit_targets(tiny_models):
    _, info = _apply(tiny_models["gpt_neox"], LoRA(rank=2, targets=("query_key_value",)))
    assert all("query_key_value" in n for n in info.trainable_names)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_other_architectures_introspect(tiny_models, arch):
    for method in (FullFineTuning(), BlockFreezing(1), BiasOnly(), LoRA(2)):
        _, info = _apply(tiny_models[arch], method)
        assert info.n_trainable == method.trainable_params(info.shape) > 0
