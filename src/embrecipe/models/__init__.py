"""The model family and the fine-tuning methods.

- :mod:`~embrecipe.models.family`: members of a decoder family, their shapes (introspection), family files;
- :mod:`~embrecipe.models.methods`: the method registry (full, freeze, bias, LoRA): cost per token, trainable
  parameters, ``apply``, CLI flags;
- :mod:`~embrecipe.models.loading`: loading a decoder (folder, hub id, GGUF) as a SentenceTransformer;
- :mod:`~embrecipe.models.refs`: how a card or family names a model portably (testbed name, hub id, shape and
  content hash) and where it is at use (under ``$EMBRECIPE_HOME``).

Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.models.family import (
        DecoderParts,
        Family,
        FamilyMember,
        family_fingerprint,
        find_decoder_parts,
        shape_of,
        shape_of_checkpoint,
    )
    from embrecipe.models.loading import (
        POOLING_MODES,
        TEXT_ONLY_MODALITY,
        MethodInfo,
        append_eos,
        apply_method,
        load_sentence_transformer,
        merge_adapters,
        not_a_decoder,
        prompt_length,
        save_tokenizer_flags,
        set_prompts,
    )
    from embrecipe.models.methods import (
        METHODS,
        BiasOnly,
        BlockFreezing,
        FullFineTuning,
        LoRA,
        M,
        MethodConfig,
        MethodOption,
        canonical_method_name,
        flops_per_token,
        hardware_flops_per_token,
        method_class,
        method_from_dict,
        method_names,
        method_to_dict,
        parse_method,
        register_method,
        unregister_method,
    )
    from embrecipe.models.refs import (
        MANIFEST,
        TESTBED_FAMILIES,
        build_command,
        portable,
        portable_tree,
        resolve_model,
        shape_key,
        testbed_content_hash,
        testbed_home,
        testbed_layers,
    )

_EXPORTS = {
    **dict.fromkeys(['DecoderParts', 'Family', 'FamilyMember', 'family_fingerprint', 'find_decoder_parts', 'shape_of', 'shape_of_checkpoint'], 'family'),
    **dict.fromkeys(['MethodInfo', 'POOLING_MODES', 'TEXT_ONLY_MODALITY', 'append_eos', 'apply_method', 'load_sentence_transformer', 'merge_adapters', 'not_a_decoder', 'prompt_length', 'save_tokenizer_flags', 'set_prompts'], 'loading'),
    **dict.fromkeys(['BiasOnly', 'BlockFreezing', 'FullFineTuning', 'LoRA', 'M', 'METHODS', 'MethodConfig', 'MethodOption', 'canonical_method_name', 'flops_per_token', 'hardware_flops_per_token', 'method_class', 'method_from_dict', 'method_names', 'method_to_dict', 'parse_method', 'register_method', 'unregister_method'], 'methods'),
    **dict.fromkeys(['MANIFEST', 'TESTBED_FAMILIES', 'build_command', 'portable', 'portable_tree', 'resolve_model', 'shape_key', 'testbed_content_hash', 'testbed_home', 'testbed_layers'], 'refs'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'MANIFEST',
    'METHODS',
    'POOLING_MODES',
    'TESTBED_FAMILIES',
    'TEXT_ONLY_MODALITY',
    'BiasOnly',
    'BlockFreezing',
    'DecoderParts',
    'Family',
    'FamilyMember',
    'FullFineTuning',
    'LoRA',
    'M',
    'MethodConfig',
    'MethodInfo',
    'MethodOption',
    'append_eos',
    'apply_method',
    'build_command',
    'canonical_method_name',
    'family_fingerprint',
    'find_decoder_parts',
    'flops_per_token',
    'hardware_flops_per_token',
    'load_sentence_transformer',
    'merge_adapters',
    'method_class',
    'method_from_dict',
    'method_names',
    'method_to_dict',
    'not_a_decoder',
    'parse_method',
    'portable',
    'portable_tree',
    'prompt_length',
    'register_method',
    'resolve_model',
    'save_tokenizer_flags',
    'set_prompts',
    'shape_key',
    'shape_of',
    'shape_of_checkpoint',
    'testbed_content_hash',
    'testbed_home',
    'testbed_layers',
    'unregister_method',
]
