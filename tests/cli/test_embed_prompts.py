"""Issue 21, item 6: `embed --prompt-name` uses the prompts saved with the model."""

import numpy as np
import pytest

from embrecipe.cli import main
from embrecipe.training.config import TrainConfig
from embrecipe.training.trainer import train


@pytest.fixture(scope="module")
def prompted_model(tiny_models, tiny_pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("prompted") / "model"
    train(TrainConfig(model=tiny_models["llama"], data=tiny_pairs_file, max_steps=1, batch_size=16, progress=False,
                      query_prompt="query: ", doc_prompt="passage: ", out=str(out), report_to="none"))
    return out


def test_prompt_name_encodes_like_encode_query(prompted_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = tmp_path / "texts.txt"
    texts.write_text("a small cat\nthe river bank\n")
    for name in ("query", "document"):
        assert main(["embed", "--model", str(prompted_model), str(texts), "--out", str(tmp_path / f"{name}.npy"),
                     "--prompt-name", name]) == 0
    assert main(["embed", "--model", str(prompted_model), str(texts), "--out", str(tmp_path / "plain.npy")]) == 0
    st = SentenceTransformer(str(prompted_model), device="cpu")
    expected = st.encode(["a small cat", "the river bank"], prompt_name="query", normalize_embeddings=True)
    got = {n: np.load(tmp_path / f"{n}.npy") for n in ("query", "document", "plain")}
    np.testing.assert_allclose(got["query"], expected, atol=1e-5)
    assert not np.allclose(got["query"], got["document"]) and not np.allclose(got["query"], got["plain"])


def test_unknown_prompt_name_is_one_line(prompted_model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("a small cat\n")
    assert main(["embed", "--model", str(prompted_model), str(texts), "--out", str(tmp_path / "x.npy"),
                 "--prompt-name", "classification"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"embrecipe: error: --model {prompted_model}: no prompt named 'classification' (saved prompts: "
                   "document, query)")
    assert not (tmp_path / "x.npy").exists()


def test_a_model_saved_without_prompts_has_none(tiny_models, tiny_pairs_file, tmp_path, capsys):
    out = tmp_path / "plain"
    train(TrainConfig(model=tiny_models["llama"], data=tiny_pairs_file, max_steps=1, batch_size=16, progress=False,
                      out=str(out), report_to="none"))
    texts = tmp_path / "texts.txt"
    texts.write_text("a small cat\n")
    assert main(["embed", "--model", str(out), str(texts), "--out", str(tmp_path / "x.npy"),
                 "--prompt-name", "query"]) == 2
    assert "the model was saved without prompts" in capsys.readouterr().err
