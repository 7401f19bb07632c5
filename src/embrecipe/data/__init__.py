"""Training pairs.

- :mod:`~embrecipe.data.pairs`: load, validate and split pairs (BGE JSONL, CSV/TSV/Parquet, ``datasets``
  directories), with ``FILE:LINE`` errors;
- :mod:`~embrecipe.data.negatives`: hard-negative mining (sentence-transformers' ``mine_hard_negatives``).

The files that ship with the package (the testbed's pairs, the corpus summary, the default law card) live in
:mod:`embrecipe.resources`, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.data.negatives import (
        MiningStats,
        bge_rows,
        load_embedding_model,
        mine_negatives,
    )
    from embrecipe.data.pairs import (
        NEGATIVE_COLUMNS,
        POSITIVE_COLUMNS,
        QUERY_COLUMNS,
        TOKENS_SAMPLE,
        PairData,
        duplicate_fraction,
        estimate_tokens_per_pair,
        load_pairs,
        spread_indices,
        unique_pairs,
    )

_EXPORTS = {
    **dict.fromkeys(['MiningStats', 'bge_rows', 'load_embedding_model', 'mine_negatives'], 'negatives'),
    **dict.fromkeys(['NEGATIVE_COLUMNS', 'POSITIVE_COLUMNS', 'PairData', 'QUERY_COLUMNS', 'TOKENS_SAMPLE', 'duplicate_fraction', 'estimate_tokens_per_pair', 'load_pairs', 'spread_indices', 'unique_pairs'], 'pairs'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'NEGATIVE_COLUMNS',
    'POSITIVE_COLUMNS',
    'QUERY_COLUMNS',
    'TOKENS_SAMPLE',
    'MiningStats',
    'PairData',
    'bge_rows',
    'duplicate_fraction',
    'estimate_tokens_per_pair',
    'load_embedding_model',
    'load_pairs',
    'mine_negatives',
    'spread_indices',
    'unique_pairs',
]
