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
    return {arch: str(make_tiny_decoder(root / arch, arch, layers=8)) for arch in ("gpt_neox", "llama")}


@pytest.fixture(scope="session")
def tiny_pairs_file(tmp_path_factory):
    from embrecipe.testing import tiny_pairs

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_pairs(96)))
    return str(path)


@pytest.fixture(scope="session")
def tiny_pair_data(tiny_pairs_file):
    from embrecipe.data import load_pairs

    return load_pairs(tiny_pairs_file)
