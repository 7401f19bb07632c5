r"""Sweep cells: a :class:`~embrecipe.sweep.grid.Grid` expanded into cells (model × method variant × budget [× LR]).

One responsibility: what each cell is and whether it can run, before anything runs. A cell spends exactly its
budget :math:`C` of model FLOPs, i.e. :math:`D = C / \mathrm{cost}_{method}(N, N_t)` tokens, which at
``tokens_per_pair`` tokens per pair and ``batch_size`` pairs per step is

.. math::

    \text{steps} = \Big\lfloor \frac{C}{\mathrm{cost} \cdot \text{tokens\_per\_pair} \cdot \text{batch\_size}} \Big\rfloor

(:func:`embrecipe.flops.steps_for_budget`, the trainer's own rule). Cells that cannot spend their budget sensibly
are :class:`Skipped` with a reason: fewer than ``min_steps`` steps, more tokens than the training data holds
(unless ``allow_repeat: true``), or a method the model cannot take (bias-only without biases).

Every cell has an identity config (the training settings, the data *content* fingerprint instead of its path,
and the embrecipe version) whose :func:`~embrecipe.runs.records.run_key` is its row in the store. The data statistics
(:class:`DataStats`) and model shapes are measured here only when the grid does not state them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embrecipe.errors import EmbrecipeError, InputError
from embrecipe.flops import ModelShape, steps_for_budget
from embrecipe.sweep.grid import Grid


@dataclass
class DataStats:
    fingerprint: str
    pairs: int | None
    tokens_per_pair: float | None
    val_fingerprint: str | None = None  # of train.val_data, which enters the run keys by content, not path


def data_stats(grid: Grid) -> DataStats:
    """Fingerprint, train pairs and mean tokens per pair of the grid's data (grid values win)."""
    from embrecipe.data.pairs import estimate_tokens_per_pair, load_pairs

    data_path, val_path = grid.train.get("data"), grid.train.get("val_data")
    pairs, tpp = grid.dataset_pairs, grid.tokens_per_pair
    val_fingerprint = None
    if isinstance(val_path, str):
        if not Path(val_path).exists():
            raise InputError(f"{grid.source}: train.val_data {val_path} does not exist")
        val_fingerprint = load_pairs(val_path).fingerprint()
    if not data_path:
        return DataStats(fingerprint="none", pairs=pairs, tokens_per_pair=tpp, val_fingerprint=val_fingerprint)
    if not Path(str(data_path)).exists():
        raise InputError(f"{grid.source}: train.data {data_path} does not exist")

    data = load_pairs(data_path)
    fingerprint = data.fingerprint()
    train_pairs = len(data)
    val_fraction = float(grid.train.get("val_fraction") or 0.0)
    if val_fraction and not grid.train.get("val_data"):
        train_pairs -= max(1, round(val_fraction * len(data)))
    if pairs is None:
        pairs = train_pairs
    if tpp is None:
        # the family shares one tokenizer: the first model's
        tpp = estimate_tokens_per_pair(data, grid.models[0]["path"],
                                       max_seq_length=int(grid.train.get("max_seq_length", 75)),
                                       hard_negatives=int(grid.train.get("hard_negatives", 0)))
    return DataStats(fingerprint=fingerprint, pairs=pairs, tokens_per_pair=tpp, val_fingerprint=val_fingerprint)


def model_shape(model: Mapping[str, Any]) -> ModelShape:
    """A grid model's shape: given, a synthetic toy name, or read from the checkpoint's config."""
    if model.get("shape") is not None:
        return model["shape"]
    from embrecipe.sweep.synthetic import toy_shape_from_name

    toy = toy_shape_from_name(str(model["path"]))
    if toy is not None:
        return toy
    from embrecipe.models.family import shape_of_checkpoint

    return shape_of_checkpoint(str(model["path"]), name=str(model["name"]))


# ------------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    model: str
    path: str
    method: dict[str, Any]
    variant: str
    budget: float
    n_params: int
    n_trainable: int
    flops_per_token: int
    planned_tokens: float
    planned_steps: int | None
    config: dict[str, Any]  # what the trainer receives
    key_config: dict[str, Any]  # what identifies the run
    key: str
    legacy_key: str | None = None  # the same run's key in stores that named val_data by path (RunStore.rekey)


WAITS_FOR_LR = "waits for the LR search at the lowest rung(s) (trains at the LR chosen there)"


@dataclass
class Skipped:
    model: str
    variant: str
    budget: float
    reason: str

    def __str__(self) -> str:
        return f"skip {self.variant} on {self.model} at {self.budget:.3g} FLOPs: {self.reason}"


def expand(grid: Grid, stats: DataStats | None = None,
           lr_choice: Mapping[tuple[str, str], float] | None = None) -> tuple[list[Cell], list[Skipped]]:
    """All cells of the grid, and the ones skipped with their reasons.

    With ``grid.lr_search`` the lowest ``rungs`` budgets get one cell per LR of the search grid; the upper
    budgets get one cell at ``lr_choice[(model path, variant)]`` — or, before the search has finished, are
    listed in ``skipped`` with the reason "waits for the LR search" (:data:`WAITS_FOR_LR`)."""
    stats = stats or data_stats(grid)
    batch = int(grid.train.get("batch_size", 1024))
    tpp = stats.tokens_per_pair
    data_tokens = stats.pairs * tpp if (stats.pairs is not None and tpp) else None
    search_rungs = set(grid.budgets[: grid.lr_search.rungs]) if grid.lr_search is not None else set()
    cells, skipped = [], []
    for model in grid.models:
        shape = model_shape(model)
        n = shape.non_embedding_params
        for mdict in grid.methods:
            from embrecipe.models.methods import method_from_dict

            method = method_from_dict(mdict)
            for budget in grid.budgets:
                try:
                    n_t = method.trainable_params(shape)
                    cost = method.flops_per_token(shape)
                except EmbrecipeError as exc:
                    skipped.append(Skipped(model["name"], method.key, budget, str(exc)))
                    continue
                tokens = budget / cost
                steps = steps_for_budget(budget, cost, tpp * batch) if tpp else None
                if steps is not None and steps < grid.min_steps:
                    skipped.append(Skipped(model["name"], method.key, budget,
                                           f"affords {steps} steps of {batch} pairs (< min_steps {grid.min_steps})"))
                    continue
                if data_tokens is not None and tokens > data_tokens and not grid.allow_repeat:
                    skipped.append(Skipped(
                        model["name"], method.key, budget,
                        f"needs {tokens:.3g} tokens but the training data holds {data_tokens:.3g} "
                        f"({tokens / data_tokens:.2g} epochs); set allow_repeat: true to repeat data"))
                    continue
                lrs = _cell_lrs(grid, str(model["path"]), method.key, budget in search_rungs, lr_choice)
                if lrs is None:
                    skipped.append(Skipped(model["name"], method.key, budget, WAITS_FOR_LR))
                    continue
                for lr in lrs:
                    config, key_config, key, legacy = _cell_configs(grid, stats, model, mdict, method.key,
                                                                    budget, lr)
                    cells.append(Cell(model=model["name"], path=str(model["path"]), method=mdict,
                                      variant=method.key, budget=budget, n_params=n, n_trainable=n_t,
                                      flops_per_token=cost, planned_tokens=tokens, planned_steps=steps,
                                      config=config, key_config=key_config, key=key, legacy_key=legacy))
    return cells, skipped


def _cell_lrs(grid: Grid, model_path: str, variant: str, search_rung: bool,
              lr_choice: Mapping[tuple[str, str], float] | None) -> list[float | None] | None:
    """The LRs a (model, variant, budget) trains at: the trainer's own (None) without an LR search, the search
    grid on a search rung, the chosen LR above; None while the choice is not made yet."""
    if grid.lr_search is None:
        return [None]
    if search_rung:
        return list(grid.lr_search.grid_for(model_path, grid.train.get("lr")))
    if lr_choice is not None and (model_path, variant) in lr_choice:
        return [lr_choice[(model_path, variant)]]
    return None


def _cell_configs(grid: Grid, stats: DataStats, model: Mapping[str, Any], mdict: dict[str, Any], variant: str,
                  budget: float, lr: float | None) -> tuple[dict[str, Any], dict[str, Any], str, str | None]:
    """A cell's trainer config, its identity config, the run key of that identity and its legacy key."""
    from embrecipe.runs.records import legacy_run_key, run_identity

    config = {**grid.train, "model": model["path"], "method": mdict, "budget": budget}
    if lr is not None:
        config["lr"] = lr
    key_config, key = run_identity(config, stats.fingerprint, stats.val_fingerprint)
    legacy = legacy_run_key(config, stats.fingerprint)
    if grid.out:
        config["out"] = str(Path(grid.out) / key)
        # A retried cell (failed, or killed before its export) reuses its own folder.
        config["overwrite"] = True
    config.update(_tracking_settings(grid, model["name"], variant, budget, key))
    return config, key_config, key, (legacy if legacy != key else None)


def _tracking_settings(grid: Grid, model_name: str, variant: str, budget: float, key: str) -> dict[str, Any]:
    """One tracked run per cell, grouped by sweep: logs in ``<out or grid dir>/runs/<sweep>/<cell key>``, the
    sweep's name as the W&B group / MLflow experiment. Added after the run key is computed: where a run logs
    is an operational setting, not part of what the run is."""
    root = Path(grid.out) if grid.out else grid.base_dir
    return {"tracking_dir": str(root / "runs" / grid.name / key), "tracking_group": grid.name,
            "run_name": f"{model_name}-{variant}-{budget:.3g}"}

