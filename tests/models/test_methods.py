import pytest

from embrecipe.errors import InputError
from embrecipe.models.methods import (
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
    from embrecipe.models.loading import apply_method, load_sentence_transformer

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
    from embrecipe.models.family import shape_of_checkpoint

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


# --- a new method, defined in one place ------------------------------------------------------------------


@pytest.fixture
def norm_only_method():
    """A toy method registered by the test alone: train the final norm (and, optionally, the last k blocks)."""
    from dataclasses import dataclass
    from typing import ClassVar

    from embrecipe.flops import TokenCost
    from embrecipe.models.methods import MethodConfig, MethodOption, register_method, unregister_method

    @register_method
    @dataclass(frozen=True)
    class NormOnly(MethodConfig):
        last_blocks: int = 0
        name: ClassVar[str] = "norm"
        cost: ClassVar[TokenCost] = TokenCost(per_param=4, per_trainable=2)
        colour: ClassVar[str] = "#8c564b"
        cli_options: ClassVar[tuple[MethodOption, ...]] = (
            MethodOption("--norm-last-blocks", "last_blocks", type=int, help="norm: also train the last k blocks"),
        )

        @property
        def key(self) -> str:
            return f"norm-b{self.last_blocks}"

        def hparams(self):
            return {"last_blocks": self.last_blocks}

        def trainable_params(self, shape):
            return shape.final_norm_params + sum(shape.block_params[shape.num_blocks - self.last_blocks:])

        def apply(self, model, parts, shape):
            modules = dict(model.named_modules())
            trained = [modules[n] for n in parts.final_norm_paths]
            trained += list(modules[parts.blocks_path])[parts.num_blocks - self.last_blocks:]
            for p in model.parameters():
                p.requires_grad_(False)
            for module in trained:
                for p in module.parameters():
                    p.requires_grad_(True)
            return model

    try:
        yield NormOnly
    finally:
        unregister_method("norm")


def test_a_registered_method_works_end_to_end(norm_only_method, tiny_models, tmp_path, capsys):
    import argparse

    from embrecipe.cli import main
    from embrecipe.cli.train import add_method_arguments, method_from_args
    from embrecipe.models.methods import flops_per_token, method_names
    from embrecipe.planning.units import training_memory
    from embrecipe.report.writer import _variant_styles
    from embrecipe.sweep.cells import expand
    from embrecipe.sweep.grid import grid_from_dict
    from embrecipe.sweep.synthetic import toy_shape

    # registry, parsing and the stored form
    assert method_names() == ["full", "freeze", "bias", "lora", "norm"]
    method = parse_method("norm", last_blocks=1)
    assert isinstance(method, norm_only_method) and method.key == "norm-b1"
    assert method_from_dict(method_to_dict(method)) == method
    with pytest.raises(InputError, match="no hyper-parameter"):
        parse_method("norm", rank=2)

    # FLOPs and trainable parameters on a shape: 4N + 2N_t
    shape = toy_shape(64, 2)
    n_t = shape.final_norm_params + shape.block_params[-1]
    assert method.trainable_params(shape) == n_t
    assert method.flops_per_token(shape) == 4 * shape.non_embedding_params + 2 * n_t
    assert flops_per_token("norm", 100, 10) == 420
    assert training_memory(shape, method, batch_size=8, seq_len=5)["optimizer"] == 8 * n_t

    # applied to a real (tiny) model
    _, info = _apply(tiny_models["llama"], parse_method("norm"))
    assert info.trainable_names and all("norm" in n for n in info.trainable_names), info.trainable_names
    assert info.n_trainable == parse_method("norm").trainable_params(info.shape) > 0

    # the CLI: --method choices and the method's own flag
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "{full,freeze,bias,lora,norm}" in help_text and "--norm-last-blocks" in help_text
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    assert method_from_args(parser.parse_args(["--method", "norm", "--norm-last-blocks", "1"])) == method
    with pytest.raises(InputError, match="--norm-last-blocks applies to --method norm"):
        method_from_args(parser.parse_args(["--method", "full", "--norm-last-blocks", "1"]))

    # a synthetic sweep grid
    grid = grid_from_dict({"name": "toy", "trainer": "synthetic", "models": ["toy-h64-l2"], "budgets": [1e13],
                           "methods": {"norm": {"last_blocks": [0, 1]}, "full": {}}, "tokens_per_pair": 60,
                           "train": {"batch_size": 32}}, base_dir=tmp_path)
    cells, skipped = expand(grid)
    assert not skipped and [c.variant for c in cells] == ["norm-b0", "norm-b1", "full"]
    assert cells[1].n_trainable == n_t and cells[1].flops_per_token == method.flops_per_token(shape)

    # the report's colour
    assert _variant_styles(["norm-b1"], {"norm-b1": "norm"})["norm-b1"]["color"] == "#8c564b"


def test_register_rejects_duplicates_and_unregister_removes(norm_only_method):
    from embrecipe.models.methods import method_names, register_method, unregister_method

    with pytest.raises(ValueError, match="already registered"):
        register_method(norm_only_method)
    unregister_method("norm")
    assert "norm" not in method_names()
    with pytest.raises(InputError, match="unknown method"):
        parse_method("norm")
    register_method(norm_only_method)  # back, for the fixture's own unregister
