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

from pathlib import Path
from typing import Any

# Facts shown under "Non-Default Hyperparameters" (the card's headline list), in this order.
HEADLINE = ("budget (model FLOPs)", "model FLOPs spent", "method", "learning rate", "batch size", "data",
            "final validation loss")


def card_facts(record: dict[str, Any]) -> dict[str, Any]:
    """The run record → the ordered ``{name: value}`` facts the card lists (pure; no torch)."""
    c = record.get("config", {})
    hp = ", ".join(f"{k}={v}" for k, v in (record.get("hparams") or {}).items()) or "-"
    data = record.get("data", {})
    val = record.get("final_val_loss")
    spent = float(record["model_flops"])
    budget = float(record["budget"])
    prompts = {k: v for k, v in (("query", c.get("query_prompt")), ("document", c.get("doc_prompt"))) if v}
    return {
        "budget (model FLOPs)": f"{budget:.4g}",
        "model FLOPs spent": f"{spent:.4g} ({spent / budget:.2%} of budget)",
        "hardware FLOPs (incl. padding, recompute)": f"{float(record.get('hardware_flops', 0)):.4g}",
        "method": f"{record.get('method')} ({hp})",
        "learning rate": f"{record.get('lr'):g}" if record.get("lr") is not None else "-",
        "batch size": record.get("batch_size", c.get("batch_size")),
        "data": f"{data.get('source')} ({data.get('pairs', 0):,} pairs, fingerprint {data.get('fingerprint')})",
        "final train loss": _fmt(record.get("final_train_loss")),
        "final validation loss": _fmt(val),
        "base model": c.get("model"),
        "pooling": c.get("pooling"),
        "prompts": prompts or "-",
        "hard negatives per pair": c.get("hard_negatives", 0),
        "max sequence length": c.get("max_seq_length"),
        "weight decay / warm-up": f"{c.get('weight_decay')} / {c.get('warmup_ratio')} then cosine to 0",
        "loss": f"symmetric InfoNCE, scale {c.get('scale')}",
        "non-embedding params N / trainable N_t": (f"{record['model']['non_embedding_params']:,} / "
                                                   f"{record['model']['trainable_params']:,}"
                                                   if "model" in record else "-"),
        "tokens": f"{int(record.get('tokens', 0)):,}",
        "steps (planned)": f"{record.get('steps')} ({record.get('planned_steps')})",
        "precision / device": f"{record.get('precision')} / {record.get('device')}",
        "seed": record.get("seed"),
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def apply_card_data(model: Any, record: dict[str, Any], loss: Any = None) -> None:
    """Fill ``model.model_card_data`` with the run's facts (offline: no Hub look-ups)."""
    card = model.model_card_data
    card.local_files_only = True  # never query the Hub for the base model or data set while exporting
    model._model_card_text = None  # a card loaded with the model would otherwise be reused as-is
    base = str(record.get("config", {}).get("model") or "")
    if base and not Path(base).exists() and base.count("/") == 1:
        card.base_model = base  # a hub id: link it without asking the Hub (set_base_model would)
    card.model_name = f"embrecipe {record.get('method_key', record.get('method'))} of {Path(base).name or base}"
    card.add_tags(["embrecipe", "contrastive", f"method-{record.get('method')}"])
    facts = card_facts(record)
    card.all_hyperparameters = facts
    card.non_default_hyperparameters = {k: facts[k] for k in HEADLINE if k in facts}
    data = record.get("data", {})
    columns = ["query", "pos"] + (["neg"] if record.get("config", {}).get("hard_negatives") else [])
    card.train_datasets = [{"name": Path(str(data.get("source", "pairs"))).name, "size": data.get("pairs"),
                            "columns": columns,
                            "loss": {"fullname": "embrecipe symmetric InfoNCE (sentence_transformers "
                                                 "MultipleNegativesRankingLoss, both directions)"}}]
    if loss is not None:
        try:
            card.set_losses([loss])
        except Exception:  # citations are a nicety; never fail an export over them
            pass
