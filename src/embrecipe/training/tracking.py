"""Experiment tracking through the standard integrations (TensorBoard, W&B, MLflow, trackio).

``report_to`` follows the Hugging Face convention: ``"none"``, one backend name, a comma-separated list, or
``"all"`` (every installed backend). embrecipe's default, ``"auto"``, is TensorBoard when the ``tensorboard``
package is installed (it writes event files locally, no network) and nothing otherwise. A backend asked for by
name but not installed is a one-line error before training starts.

The trainer only ever calls ``tracker.log(step, metrics)`` and ``tracker.close()``. Each backend is the
library's own API (``SummaryWriter``, ``wandb.init/log``, ``mlflow.start_run/log_metrics``,
``trackio.init/log``): this module only maps one metrics dict onto them. The HF ``Trainer`` callbacks cannot be
reused here because they need a ``TrainingArguments``/``TrainerState`` that our budget-exact loop does not have.

Metrics logged per step (see :func:`step_metrics`): ``train/loss``, ``train/lr``, ``train/model_flops``,
``train/tokens_per_s``, ``train/model_flops_per_s``. Loss against FLOPs: TensorBoard and MLflow keep one integer
step axis per scalar, so ``train/loss_vs_mflops`` is the loss logged at step = spent model FLOPs / 1e6 (an
int64 step then covers budgets up to 9e24 FLOPs); W&B gets ``train/loss_vs_flops`` with
``train/model_flops`` as its x-axis (``define_metric``).

Example::

    >>> tracker = open_tracker("tensorboard", log_dir="runs/my-model/tb", run_name="lora-r32")  # doctest: +SKIP
    >>> tracker.log(1, {"train/loss": 2.3, "train/model_flops": 1.2e12})                         # doctest: +SKIP
    >>> tracker.close()                                                                          # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from embrecipe.errors import InputError

BACKENDS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO_CHOICES = ("auto", "none", "all", *BACKENDS)
FLOPS_STEP_UNIT = 1e6  # loss-vs-FLOPs scalars use step = model FLOPs / 1e6 (int64 steps)

# module that must be importable for each backend, and the pip package that provides it
_REQUIRES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}


class TrackingError(InputError):
    """A tracking backend was asked for but cannot be used (not installed, unknown name)."""


def is_installed(backend: str) -> bool:
    """Whether ``backend``'s package can be imported (a module already in ``sys.modules`` counts)."""
    module = _REQUIRES[backend][0]
    if module in sys.modules and sys.modules[module] is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """``report_to`` → the backends to open, in :data:`BACKENDS` order; errors name what is missing.

    >>> resolve_report_to("none")
    []
    """
    if report_to is None:
        report_to = "auto"
    names = [n.strip().lower() for n in (report_to.split(",") if isinstance(report_to, str) else report_to)]
    names = [n for n in names if n]
    if not names:
        names = ["none"]
    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown:
        raise TrackingError(f"--report-to {','.join(unknown)}: unknown; choose from {', '.join(REPORT_TO_CHOICES)}")
    if "none" in names:
        if len(names) > 1:
            raise TrackingError("--report-to none cannot be combined with other backends")
        return []
    if "all" in names:
        return [b for b in BACKENDS if is_installed(b)]
    if names == ["auto"]:
        return ["tensorboard"] if is_installed("tensorboard") else []
    chosen = [b for b in BACKENDS if b in names]
    for b in chosen:
        if not is_installed(b):
            raise TrackingError(f"--report-to {b}: the {_REQUIRES[b][1]!r} package is not installed "
                                f"(pip install {_REQUIRES[b][1]}, or pip install 'embrecipe[tracking]')")
    return chosen


def step_metrics(*, loss: float, lr: float, model_flops: float, tokens: int, train_time_s: float) -> dict[str, float]:
    """The scalars logged per step (pure: testable without a backend). Throughput is the run's average so far,
    ``tokens`` and ``model_flops`` over ``train_time_s`` (all through the logged step); without a positive time
    there is no throughput to log (dividing by ~0 gave 1e11 tokens/s), so it is left out."""
    metrics = {"train/loss": float(loss), "train/lr": float(lr), "train/model_flops": float(model_flops)}
    if train_time_s > 0:
        metrics["train/tokens_per_s"] = tokens / train_time_s
        metrics["train/model_flops_per_s"] = model_flops / train_time_s
    return metrics


def flops_step(model_flops: float) -> int:
    """The integer step at which loss-vs-FLOPs scalars are written (model FLOPs / 1e6, rounded)."""
    return int(round(float(model_flops) / FLOPS_STEP_UNIT))


class Tracker:
    """No-op base: what the trainer sees. Subclasses wrap one backend each."""

    backend = "none"

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class _TensorBoard(Tracker):
    backend = "tensorboard"

    def __init__(self, log_dir: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.log_dir = log_dir
        if config:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        if "train/loss" in metrics and "train/model_flops" in metrics:
            self.writer.add_scalar("train/loss_vs_mflops", metrics["train/loss"],
                                   global_step=flops_step(metrics["train/model_flops"]))

    def close(self) -> None:
        self.writer.close()


class _Wandb(Tracker):
    backend = "wandb"

    def __init__(self, log_dir: Path, config: Mapping[str, Any], run_name: str | None, group: str | None) -> None:
        import wandb

        self.wandb = wandb
        log_dir.mkdir(parents=True, exist_ok=True)
        # project from WANDB_PROJECT like the HF integration; the sweep name groups one run per cell
        self.run = wandb.init(project=_env("WANDB_PROJECT", "embrecipe"), name=run_name, group=group,
                              config=dict(config), dir=str(log_dir), reinit=True)
        self.run.define_metric("train/model_flops")
        self.run.define_metric("train/loss_vs_flops", step_metric="train/model_flops")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        extra = {"train/loss_vs_flops": metrics["train/loss"]} if "train/loss" in metrics else {}
        self.run.log({**metrics, **extra}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow(Tracker):
    backend = "mlflow"

    def __init__(self, config: Mapping[str, Any], run_name: str | None, group: str | None) -> None:
        import mlflow

        self.mlflow = mlflow
        # the experiment groups a sweep's cells (MLFLOW_EXPERIMENT_NAME wins, as in the HF integration)
        mlflow.set_experiment(_env("MLFLOW_EXPERIMENT_NAME", group or "embrecipe"))
        self.run = mlflow.start_run(run_name=run_name, tags={"embrecipe.group": group or ""}, nested=True)
        if config:
            mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(metrics), step=step)
        if "train/loss" in metrics and "train/model_flops" in metrics:
            self.mlflow.log_metric("train/loss_vs_mflops", metrics["train/loss"],
                                   step=flops_step(metrics["train/model_flops"]))

    def close(self) -> None:
        self.mlflow.end_run()


class _Trackio(Tracker):
    backend = "trackio"

    def __init__(self, config: Mapping[str, Any], run_name: str | None, group: str | None) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=_env("TRACKIO_PROJECT", "embrecipe"), name=run_name, group=group,
                                config=dict(config))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.trackio.log(dict(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


class MultiTracker(Tracker):
    """Fans one ``log`` out to every opened backend."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)
        self.log_dir: str | None = None  # where the file-based backends write (set by the trainer)

    @property
    def backends(self) -> list[str]:
        return [t.backend for t in self.trackers]

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log(step, metrics)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def _env(name: str, default: str) -> str:
    import os

    return os.environ.get(name) or default


def open_tracker(report_to: str | Sequence[str] | None, *, log_dir: str | Path | None,
                 run_name: str | None = None, group: str | None = None,
                 config: Mapping[str, Any] | None = None) -> MultiTracker:
    """Open every backend ``report_to`` names; TensorBoard/W&B write under ``log_dir``.

    With no ``log_dir`` (a Python-API run without ``out``), file-based backends are skipped under the default
    ``"auto"`` and are an error when asked for by name.
    """
    backends = resolve_report_to(report_to)
    flat = {k: v for k, v in (config or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
    trackers: list[Tracker] = []
    for b in backends:
        if b in ("tensorboard", "wandb") and log_dir is None:
            if report_to in (None, "auto"):
                continue
            raise TrackingError(f"--report-to {b}: needs a log directory (give --out or tracking_dir)")
        try:
            if b == "tensorboard":
                assert log_dir is not None  # refused above
                trackers.append(_TensorBoard(Path(log_dir), flat))
            elif b == "wandb":
                assert log_dir is not None  # refused above
                trackers.append(_Wandb(Path(log_dir), flat, run_name, group))
            elif b == "mlflow":
                trackers.append(_MLflow(flat, run_name, group))
            elif b == "trackio":
                trackers.append(_Trackio(flat, run_name, group))
        except ImportError as exc:
            for t in trackers:
                t.close()
            raise TrackingError(f"--report-to {b}: cannot import it ({exc})") from None
    return MultiTracker(trackers)


__all__ = ["BACKENDS", "REPORT_TO_CHOICES", "MultiTracker", "Tracker", "TrackingError", "flops_step",
           "is_installed", "open_tracker", "resolve_report_to", "step_metrics"]
