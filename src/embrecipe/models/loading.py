"""Load any HF decoder as a SentenceTransformer and apply a fine-tuning method to it.

The model is ``models.Transformer`` + ``models.Pooling`` from sentence-transformers (mean pooling over
non-padding tokens by default, as in the study). What a method changes on the model (freezing, wrapping with
peft's LoRA) is the method's own :meth:`~embrecipe.models.methods.MethodConfig.apply`; this module finds the parts
it acts on and counts what became trainable.

Example::

    >>> from embrecipe.models.loading import load_sentence_transformer, apply_method
    >>> from embrecipe.models.methods import LoRA
    >>> model = load_sentence_transformer("EleutherAI/pythia-70m")   # doctest: +SKIP
    >>> info = apply_method(model, LoRA(rank=32))                      # doctest: +SKIP
    >>> info.n_trainable, info.n_params                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape
from embrecipe.models.family import find_decoder_parts, shape_of
from embrecipe.models.methods import MethodConfig

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer
    from torch import nn

TEXT_ONLY_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
POOLING_MODES = {"mean": "mean", "last-token": "lasttoken", "lasttoken": "lasttoken",
                 "weighted-mean": "weightedmean", "weightedmean": "weightedmean"}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_sentence_transformer(
    model: str | os.PathLike,
    *,
    pooling: str = "mean",
    max_seq_length: int = 75,
    gguf_file: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = "sdpa",
) -> SentenceTransformer:
    """A decoder checkpoint (local dir, hub id, or GGUF file) as Transformer + Pooling.

    ``model`` may be a path to a ``.gguf`` file (then ``gguf_file`` is its name inside its folder).
    The tokenizer gets ``pad = EOS`` when it has no pad token, and pads on the right so mean pooling and
    last-token pooling both see the real tokens first.
    """
    from sentence_transformers import SentenceTransformer, models

    _quiet_transformers()
    if pooling not in POOLING_MODES:
        raise InputError(f"pooling {pooling!r} is not one of: mean, last-token, weighted-mean")
    from embrecipe.models.refs import resolve_model

    model = resolve_model(str(model))  # a testbed name: the member under $EMBRECIPE_HOME/testbed
    if model.endswith(".gguf") and gguf_file is None:
        p = Path(model)
        if not p.is_file():
            raise InputError(f"model {model}: GGUF file not found")
        model, gguf_file = str(p.parent), p.name
    looks_local = os.path.sep in model or model.startswith(".") or Path(model).exists()
    if looks_local and not Path(model).exists():
        raise InputError(f"model {model}: no such directory")
    model_kwargs: dict[str, Any] = {}
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        transformer = models.Transformer(
            model,
            max_seq_length=max_seq_length,
            model_kwargs={**model_kwargs, **extra},
            processor_kwargs={**extra},
            config_kwargs={**extra},
            # Plain text only: with a chat template (SmolLM2, most instruct tokenizers) sentence-transformers 6
            # would otherwise wrap every text in it at encode time, while the trainer tokenizes the raw text.
            modality_config=TEXT_ONLY_MODALITY,
            module_output_name="token_embeddings",
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model {model}: cannot load it as a Hugging Face decoder ({first})") from exc
    problem = not_a_decoder(transformer.auto_model.config)
    if problem:
        raise InputError(f"model {model}: {problem}; embrecipe fine-tunes decoder (causal) language models")
    tokenizer = transformer.tokenizer
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError(f"model {model}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    hf = transformer.auto_model
    if gguf_file:
        _forget_gguf_quantization(hf)
    if getattr(hf.config, "pad_token_id", None) is None:
        hf.config.pad_token_id = tokenizer.pad_token_id
    find_decoder_parts(hf)  # fail now, not mid-training, if this is no decoder we understand
    if POOLING_MODES[pooling] == "lasttoken":
        append_eos(tokenizer, where=f"model {model}")
    pool = models.Pooling(transformer.get_embedding_dimension(), pooling_mode=POOLING_MODES[pooling])
    return SentenceTransformer(modules=[transformer, pool], device="cpu")


def append_eos(tokenizer: Any, *, where: str = "tokenizer") -> bool:
    """Make ``tokenizer`` end every text with EOS (for last-token pooling); True if it had to be changed.

    Last-token pooling reads the hidden state of the final real token. A decoder tokenizer usually ends a text
    with its last word, so the pooled token would be an arbitrary word; appending EOS (as e5-mistral and the
    LLM2Vec/mteb EOS fixes do) makes it the same special token in training and at inference. transformers 5
    rebuilds the post-processor from ``add_bos_token``/``add_eos_token``; we keep the BOS behaviour the
    tokenizer already had and check the result on a probe text. :func:`save_tokenizer_flags` stores the flags
    in the exported model so ``SentenceTransformer(path)`` appends EOS too (some tokenizer classes, e.g.
    GPT-NeoX, rebuild their post-processor on load and would drop it otherwise).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError(f"{where}: last-token pooling needs an EOS token and the tokenizer has none")
    probe = "embrecipe probe text"
    before = list(tokenizer(probe)["input_ids"])
    if before and before[-1] == eos:
        return False
    adds_bos = tokenizer.bos_token_id is not None and bool(before) and before[0] == tokenizer.bos_token_id
    try:
        tokenizer.add_bos_token = adds_bos
        tokenizer.add_eos_token = True
    except (AttributeError, ValueError, TypeError) as exc:
        raise InputError(f"{where}: cannot make the tokenizer append EOS for last-token pooling ({exc})") from None
    after = list(tokenizer(probe)["input_ids"])
    if after != [*before, eos]:
        raise InputError(f"{where}: cannot make the tokenizer append EOS for last-token pooling "
                         f"({type(tokenizer).__name__} gave {after[-3:]} after setting add_eos_token)")
    return True


def save_tokenizer_flags(st_model: SentenceTransformer, path: str | os.PathLike) -> None:
    """Record ``add_bos_token``/``add_eos_token`` in the saved model's ``sentence_bert_config.json``.

    sentence-transformers passes that file's ``processor_kwargs`` to ``AutoTokenizer.from_pretrained``, where
    explicit flags win over the class's defaults; without this a reloaded GPT-NeoX tokenizer stops appending
    EOS and last-token pooling would read a different token than in training.
    """
    import json

    tokenizer = st_model[0].tokenizer
    if not getattr(tokenizer, "add_eos_token", False):
        return
    config_path = Path(path) / "sentence_bert_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config.setdefault("processor_kwargs", {}).update(
        {"add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)), "add_eos_token": True})
    config_path.write_text(json.dumps(config, indent=4) + "\n")


def set_prompts(st_model: SentenceTransformer, query_prompt: str | None, doc_prompt: str | None) -> None:
    """Give the model sentence-transformers' ``query``/``document`` prompts and keep them out of pooling.

    The prompts are saved with the model (``config_sentence_transformers.json``), so ``encode_query`` and
    ``encode_document`` (or ``encode(..., prompt_name="query")``) prepend them at inference as training did;
    ``Pooling(include_prompt=False)`` drops the prompt's tokens from mean pooling, given the prompt length
    that the Transformer module (or the trainer) passes in the features.
    """
    if not (query_prompt or doc_prompt):
        return
    st_model.prompts = {**st_model.prompts, "query": query_prompt or "", "document": doc_prompt or ""}
    st_model.set_pooling_include_prompt(include_prompt=False)


def prompt_length(st_model: SentenceTransformer, prompt: str | None) -> int | None:
    """Tokens of ``prompt`` as sentence-transformers counts them for ``include_prompt=False`` (None: no prompt)."""
    if not prompt:
        return None
    return st_model[0]._get_prompt_length(prompt)


def not_a_decoder(config: Any) -> str | None:
    """Why a model config is not a causal (decoder) LM, or None when it is one.

    Refused: encoder-decoder models, model types transformers has no causal-LM class for (DistilBERT, T5
    encoders, ...), and encoders such as BERT/RoBERTa (types with a masked-LM head) unless their config says
    ``is_decoder``: loaded as they are, they attend in both directions and would train as if they were
    decoders. GGUF checkpoints load with their decoder's model type and pass.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = str(getattr(config, "model_type", "") or "")
    if getattr(config, "is_encoder_decoder", False):
        return f"{model_type or 'this model'} is an encoder-decoder model"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"model type {model_type!r} has no causal language model form in transformers"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return f"{model_type!r} is a bidirectional encoder (is_decoder is false in its config)"
    return None


def _forget_gguf_quantization(hf: nn.Module) -> None:
    # transformers de-quantizes GGUF tensors to ordinary float weights on load but keeps the GGUF "quantizer",
    # which makes save_pretrained refuse ("quantized with gguf"). The weights are plain; drop the marker so the
    # trained model exports as a normal checkpoint.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.is_quantized = False


@dataclass(frozen=True)
class MethodInfo:
    """What :func:`apply_method` did: N and N_t counted on the actual model (embeddings excluded)."""

    method: MethodConfig
    shape: ModelShape
    n_params: int
    n_trainable: int
    n_trainable_total: int  # including any trained embedding parameters (full fine-tuning)
    trainable_names: tuple[str, ...]


def apply_method(st_model: SentenceTransformer, method: MethodConfig) -> MethodInfo:
    """Set ``requires_grad`` (or wrap with peft) according to ``method``; error if nothing is trainable."""
    hf = st_model[0].auto_model
    parts = find_decoder_parts(hf)
    shape = shape_of(hf, name=str(getattr(hf.config, "_name_or_path", "")))
    modules = dict(hf.named_modules())
    embedding_ids = {id(p) for e in parts.embedding_paths for p in modules[e].parameters()}

    trained = method.apply(hf, parts, shape)
    if trained is not hf:  # a wrapper (peft): the SentenceTransformer trains and saves the wrapper
        st_model[0].model = trained
        hf = trained

    trainable = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    n_trainable = int(sum(p.numel() for _, p in trainable if id(p) not in embedding_ids))
    n_total = int(sum(p.numel() for _, p in trainable))
    if n_trainable == 0 and not method.trains_everything:
        raise InputError(f"method {method.key!r} leaves no trainable parameters in {type(hf).__name__}")
    if method.trains_everything:  # the cost convention counts N_t = N
        n_trainable = shape.non_embedding_params
    return MethodInfo(method, shape, shape.non_embedding_params, n_trainable, n_total,
                      tuple(n for n, _ in trainable))


def merge_adapters(st_model: SentenceTransformer) -> None:
    """Merge LoRA weights into the base model (no-op without peft), so the export is a plain checkpoint."""
    hf = st_model[0].auto_model
    if hasattr(hf, "merge_and_unload") and type(hf).__name__.startswith("Peft"):
        st_model[0].model = hf.merge_and_unload()
