r"""SYNTHETIC run records drawn from known laws — for testing the sweep/fit/plan machinery and demos only.

Nothing here is a measurement. :func:`synthetic_train` has the trainer's signature
(``train_fn(config) -> record``) but computes the final loss from a fixed law per method,

.. math::

    L = \big(E_v + A_v N^{-\alpha_v} + B_v D^{-\beta_v}\big)\, e^{\varepsilon},
    \quad \varepsilon \sim \mathcal N(0, \sigma^2),

with :math:`D` the tokens the budget affords under the real FLOP convention, so tests can check that a fit
recovers the parameters and that the planner finds the known optimum. Every record it returns carries
``"synthetic": True``. The default laws are chosen so that full fine-tuning is optimal at small budgets and
LoRA at large ones (a crossover like the study's), not to resemble real numbers.

**LR dependence (also synthetic).** When the config sets ``lr``, the loss is multiplied by
:math:`1 + \kappa \ln^2(\mathrm{lr} / \mathrm{lr}^*)` with :math:`\kappa = 0.05` and an optimum
:math:`\mathrm{lr}^* = \mathrm{lr}_v \,(N / 10^6)^{-0.25}` that falls with model size (:data:`SYNTHETIC_LR`),
so an LR search has a known right answer; without ``lr`` the loss is the law alone (as before). Not a claim
about real training.

Model names ``toy-h{hidden}-l{layers}`` describe GPT-NeoX-like toy shapes (:func:`toy_shape`).

Example::

    >>> rec = synthetic_train({"model": "toy-h128-l4", "method": {"name": "full"}, "budget": 1e14,
    ...                        "batch_size": 32, "seed": 0, "noise": 0.0})
    >>> rec.synthetic, rec.n_params
    (True, 793344)
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from embrecipe.errors import InputError
from embrecipe.flops import ModelShape, steps_for_budget
from embrecipe.models.methods import BlockFreezing, LoRA, method_from_dict, method_to_dict
from embrecipe.runs.records import RunConfig, RunRecord, run_key

# (E, A, alpha, B, beta) per method; LoRA's B shrinks slowly with rank, freezing's grows with frozen depth.
SYNTHETIC_LAWS: dict[str, tuple[float, float, float, float, float]] = {
    "full": (0.5, 40.0, 0.35, 1000.0, 0.5),
    "lora": (0.3, 40.0, 0.35, 2000.0, 0.5),
    "freeze": (0.6, 50.0, 0.35, 1500.0, 0.5),
    "bias": (0.9, 60.0, 0.35, 2500.0, 0.5),
}
TOKENS_PER_PAIR = 60.0
# Optimal LR at N = 1e6 per method (synthetic; see the module docstring), and the curvature of the penalty.
SYNTHETIC_LR: dict[str, float] = {"full": 1e-3, "lora": 3e-3, "freeze": 1.5e-3, "bias": 5e-3}
LR_CURVATURE = 0.05

_TOY = re.compile(r"^toy-h(\d+)-l(\d+)$")


def toy_shape(hidden: int, layers: int, vocab: int = 1000) -> ModelShape:
    """A GPT-NeoX-like shape: fused QKV, 4x MLP, two LayerNorms per block, every linear with a bias."""
    h = hidden
    block = 12 * h * h + 13 * h  # weights 12h², biases 3h+h+4h+h, two LayerNorms 4h
    bias = layers * (9 * h + 2 * h) + h
    return ModelShape(
        name=f"toy-h{h}-l{layers}", embedding_params=vocab * h, block_params=(block,) * layers,
        final_norm_params=2 * h, bias_params=bias, hidden_size=h,
        linear_in_out={"query_key_value": layers * 4 * h, "dense": layers * 2 * h,
                       "dense_h_to_4h": layers * 5 * h, "dense_4h_to_h": layers * 5 * h},
    )


def toy_shape_from_name(name: str) -> ModelShape | None:
    m = _TOY.match(str(name))
    return toy_shape(int(m.group(1)), int(m.group(2))) if m else None


def true_loss(method: Mapping[str, Any], N: float, D: float) -> float:
    """The noiseless synthetic law for a method dict."""
    E, A, alpha, B, beta = variant_params(method)
    return E + A / N**alpha + B / D**beta


def variant_params(method: Mapping[str, Any]) -> tuple[float, float, float, float, float]:
    m = method_from_dict(method)
    E, A, alpha, B, beta = SYNTHETIC_LAWS[m.name]
    if isinstance(m, LoRA):
        B *= (32 / m.rank) ** 0.1
    if isinstance(m, BlockFreezing) and isinstance(m.trainable_blocks, float):
        B *= (0.5 / m.trainable_blocks) ** 0.2
    return E, A, alpha, B, beta


def optimal_lr(method: Mapping[str, Any], N: float) -> float:
    """The synthetic optimum LR of a method at size N."""
    return SYNTHETIC_LR[method_from_dict(method).name] * (N / 1e6) ** -0.25


def lr_penalty(method: Mapping[str, Any], N: float, lr: float | None) -> float:
    """The synthetic loss factor for training at ``lr`` (1 at the optimum, or when no LR is given)."""
    if lr is None:
        return 1.0
    return 1.0 + LR_CURVATURE * math.log(float(lr) / optimal_lr(method, N)) ** 2


def synthetic_train(config: Mapping[str, Any]) -> RunRecord:
    """A fake trainer (SYNTHETIC): the record a real run would return, with a loss from a known law.

    Config keys used: ``model`` (a ``toy-h*-l*`` name, or ``shape``), ``method``, ``budget``,
    ``batch_size``, ``seed``; optional ``lr`` (see the LR dependence above), ``noise`` (σ of the log-normal noise, default 0.01),
    ``tokens_per_pair`` (default 60) and ``sleep`` (seconds, to imitate a slow run in tests).
    """
    shape = toy_shape_from_name(config.get("model", ""))
    if shape is None and isinstance(config.get("shape"), Mapping):
        shape = ModelShape.from_dict(config["shape"])
    if shape is None:
        raise InputError(f"synthetic trainer: unknown model {config.get('model')!r} (use toy-h<H>-l<L>)")
    method = method_from_dict(config["method"])
    budget = float(config["budget"])
    t0 = time.time()
    if config.get("sleep"):
        time.sleep(float(config["sleep"]))
    n, n_t = shape.non_embedding_params, method.trainable_params(shape)
    cost = method.flops_per_token(shape)
    tpp = float(config.get("tokens_per_pair", TOKENS_PER_PAIR))
    batch = int(config.get("batch_size", 1024))
    steps = steps_for_budget(budget, cost, tpp * batch)
    tokens = steps * batch * tpp
    if steps < 1:
        raise InputError(f"synthetic trainer: budget {budget:.3g} affords no step")
    seed = int(hashlib.sha256(run_key(config).encode()).hexdigest()[:8], 16)
    noise = float(config.get("noise", 0.01))
    eps = np.random.default_rng(seed).normal(0.0, noise) if noise > 0 else 0.0
    lr = None if config.get("lr") is None else float(config["lr"])
    loss = true_loss(method_to_dict(method), n, tokens) * lr_penalty(method_to_dict(method), n, lr) * math.exp(eps)
    curve = [{"step": s, "loss": true_loss(method_to_dict(method), n, max(s, 1) * batch * tpp) * 1.05}
             for s in np.unique(np.linspace(1, steps, num=min(steps, 5)).astype(int)).tolist()]
    return RunRecord(
        config=RunConfig.from_dict(config),
        status="completed",
        synthetic=True,
        model=config["model"],
        shape=shape,
        n_params=n,
        n_trainable=n_t,
        method=method_to_dict(method),
        variant=method.key,
        budget=budget,
        seed=config.get("seed", 0),
        model_flops=tokens * cost,
        tokens=tokens,
        pairs=steps * batch,
        steps=steps,
        batch_size=batch,
        lr=lr,
        tokens_per_pair=tpp,
        final_train_loss=loss * 1.02,
        final_val_loss=loss,
        loss_curve=curve,
        eval={},
        timings={"train_s": time.time() - t0},
        data_fingerprint=config.get("data_fingerprint", "synthetic"),
    )
