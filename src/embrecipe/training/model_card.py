"""The model card of a trained run, through sentence-transformers' model-card data.

sentence-transformers renders ``README.md`` from ``model.model_card_data`` (a ``SentenceTransformerModelCardData``)
whenever the model is saved or pushed. We fill that object with the run's facts — budget, FLOPs spent, data,
method, LR, losses — instead of writing our own README, so the card keeps everything sentence-transformers adds
(architecture, usage snippet, versions, citations) and stays right when the model is re-saved or pushed.

Example::

    >>> apply_card_data(model, record)   # doctest: +SKIP
    >>> model.save("runs/my-model")      # README.md now lists the run's facts   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embrecipe.runs.records import RunRecord, as_record

# Facts shown under "Non-Default Hyperparameters" (the card's headline list), in this order.
HEADLINE = ("budget (model FLOPs)", "model FLOPs spent", "method", "learning rate", "batch size", "data",
            "final validation loss")


def portable_name(model_or_path: Any) -> str | None:
    """How the card names a base model or data file: a hub id as it is, a local path by its last component (a
    testbed member by its testbed name, e.g. ``smollm2-L4``). The card is published with ``--push-to-hub``, and
    the absolute path of the machine that trained would tell nobody anything but that machine's layout."""
    if model_or_path is None or str(model_or_path) == "":
        return None
    text = str(model_or_path)
    local = text.startswith(("/", "~", ".")) or "\\" in text or Path(text).exists() or text.count("/") > 1
    return Path(text.rstrip("/")).name or text if local else text


def card_facts(record: RunRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The run record → the ordered ``{name: value}`` facts the card lists (pure; no torch)."""
    from embrecipe.models.methods import method_from_dict

    record = as_record(record)
    c = record.config.to_dict() if record.config is not None else {}
    method = method_from_dict(record.method) if record.method is not None else None
    hp = ", ".join(f"{k}={v}" for k, v in (method.hparams() if method else {}).items()) or "-"
    d = record.details
    val = record.final_val_loss
    # An exported model's record is a finished run's: both are set.
    assert record.model_flops is not None and record.budget is not None
    spent = float(record.model_flops)
    budget = float(record.budget)
    prompts = {k: v for k, v in (("query", c.get("query_prompt")), ("document", c.get("doc_prompt"))) if v}
    return {
        "budget (model FLOPs)": f"{budget:.4g}",
        "model FLOPs spent": f"{spent:.4g} ({spent / budget:.2%} of budget)",
        "hardware FLOPs (incl. padding, recompute)": f"{float(d.get('hardware_flops', 0)):.4g}",
        "method": f"{method.name if method else None} ({hp})",
        "learning rate": f"{record.lr:g}" if record.lr is not None else "-",
        "batch size": record.batch_size,
        "data": f"{portable_name(d.get('data_source'))} ({record.unique_pairs or 0:,} pairs, "
                f"fingerprint {record.data_fingerprint})",
        "final train loss": _fmt(record.final_train_loss),
        "final validation loss": _fmt(val),
        "base model": portable_name(c.get("model")),
        "pooling": c.get("pooling"),
        "prompts": prompts or "-",
        "hard negatives per pair": c.get("hard_negatives", 0),
        "max sequence length": c.get("max_seq_length"),
        "weight decay / warm-up": f"{c.get('weight_decay')} / {c.get('warmup_ratio')} then cosine to 0",
        "loss": f"symmetric InfoNCE, scale {c.get('scale')}",
        "non-embedding params N / trainable N_t": (f"{record.n_params:,} / {record.n_trainable:,}"
                                                   if record.n_params is not None else "-"),
        "tokens": f"{int(record.tokens or 0):,}",
        "steps (planned)": f"{record.steps} ({d.get('planned_steps')})",
        "precision / device": f"{d.get('precision')} / {d.get('device')}",
        "seed": record.seed,
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def apply_card_data(model: Any, record: RunRecord | Mapping[str, Any], loss: Any = None) -> None:
    """Fill ``model.model_card_data`` with the run's facts (offline: no Hub look-ups)."""
    record = as_record(record)
    c = record.config.to_dict() if record.config is not None else {}
    name = None if record.method is None else record.method.get("name")
    card = model.model_card_data
    card.local_files_only = True  # never query the Hub for the base model or data set while exporting
    model._model_card_text = None  # a card loaded with the model would otherwise be reused as-is
    base = str(c.get("model") or "")
    if base and not Path(base).exists() and base.count("/") == 1:
        card.base_model = base  # a hub id: link it without asking the Hub (set_base_model would)
    card.model_name = f"embrecipe {record.variant or name} of {Path(base).name or base}"
    card.add_tags(["embrecipe", "contrastive", f"method-{name}"])
    facts = card_facts(record)
    card.all_hyperparameters = facts
    card.non_default_hyperparameters = {k: facts[k] for k in HEADLINE if k in facts}
    columns = ["query", "pos"] + (["neg"] if c.get("hard_negatives") else [])
    card.train_datasets = [{"name": Path(str(record.details.get("data_source", "pairs"))).name,
                            "size": record.unique_pairs,
                            "columns": columns,
                            "loss": {"fullname": "embrecipe symmetric InfoNCE (sentence_transformers "
                                                 "MultipleNegativesRankingLoss, both directions)"}}]
    if loss is not None:
        try:
            card.set_losses([loss])
        except Exception:  # citations are a nicety; never fail an export over them
            pass
