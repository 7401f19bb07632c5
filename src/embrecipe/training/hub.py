"""Push a trained run to the Hugging Face Hub with sentence-transformers' ``push_to_hub``.

The exported folder is uploaded as it is (``local_model_path``): the SentenceTransformer, the tokenizer flags
last-token pooling needs, ``run.json`` and the model card sentence-transformers rendered from the run's facts
(:mod:`embrecipe.training.model_card`). Before the upload the card is re-rendered with the repository id, so its usage snippet
names the model as people will load it. Needs a network and a token (``huggingface-cli login`` or ``HF_TOKEN``).

Example::

    >>> push_run("runs/my-model", "me/my-embedder")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from embrecipe.errors import InputError
from embrecipe.runs.records import RunRecord


def check_repo_id(repo_id: str) -> None:
    """Fail before training, not after, when ``--push-to-hub`` is not a repository id."""
    if not repo_id or repo_id.count("/") > 1 or any(c.isspace() for c in repo_id):
        raise InputError(f"--push-to-hub {repo_id!r}: expected a repository id like 'user/name'")


def push_run(out: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Upload the trained model in ``out`` to ``repo_id``; returns the commit URL sentence-transformers gives."""
    from sentence_transformers import SentenceTransformer

    from embrecipe.training.model_card import apply_card_data

    out = Path(out)
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise InputError(f"--push-to-hub {repo_id!r}: expected a repository id like 'user/name'")
    if not (out / "run.json").exists() or not (out / "modules.json").exists():
        raise InputError(f"{out}: no exported SentenceTransformer with run.json to push")
    record = RunRecord.from_dict(json.loads((out / "run.json").read_text()), where=str(out / "run.json"))
    model = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    apply_card_data(model, record)
    model.model_card_data.set_model_id(repo_id)
    model._create_model_card(str(out))  # the same card, now naming the repository in its usage snippet
    return model.push_to_hub(repo_id, token=token, private=private, local_model_path=str(out), exist_ok=True,
                             commit_message=f"embrecipe: {record.variant} at "
                                            f"{float(record.model_flops or 0):.3g} model FLOPs")
