"""Sweep executors: where and how a sweep's cells train — one :class:`Executor` interface, three implementations.

One responsibility: run a list of cells and hand back their records. The bookkeeping every executor needs is
written once, in :meth:`Executor.run`: claim each cell in the store before it starts (a cell another live worker
holds is reported busy), keep the running claims alive by heartbeat, hand every record to the driver's callback
(which stores it, and stops the sweep on a full disk by raising), and give the claims of cells still running back
when anything stops the loop (Ctrl-C, an error), so that the next run starts them at once. The implementations
only say how a cell is started and waited for:

- :class:`SequentialExecutor`: one cell at a time, in this process;
- :class:`PoolExecutor`: a local process pool (``--workers N``), GPU-packed by memory when GPUs are visible
  (:mod:`embrecipe.sweep.placement`), several GPUs per cell under torchrun;
- :class:`RayExecutor`: Ray tasks, on a local instance (listening on 127.0.0.1 only) or a cluster.

Only the driver process writes to the store; workers just train and return records (plain dicts: they cross
process boundaries as they are), so the SQLite file never needs to be shared between machines.
"""

from __future__ import annotations

import _thread
import importlib
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embrecipe.errors import ClaimLost, EmbrecipeError, InputError, is_disk_full
from embrecipe.models.methods import method_from_dict
from embrecipe.runs.records import RunRecord
from embrecipe.sweep.cells import Cell, model_shape
from embrecipe.sweep.grid import DEFAULT_TRAIN_FN, LEGACY_TRAIN_FNS, Grid

TrainFn = Callable[[dict[str, Any]], "RunRecord | dict[str, Any]"]


def resolve_train_fn(ref: str | TrainFn | None) -> TrainFn:
    """A callable, ``"module:function"``, ``"synthetic"`` (the fake trainer) or None (the real trainer)."""
    if callable(ref):
        return ref
    ref = ref or DEFAULT_TRAIN_FN
    ref = LEGACY_TRAIN_FNS.get(ref, ref)
    module, _, name = str(ref).partition(":")
    if not name:
        raise InputError(f"train function {ref!r} must be written module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import train function {ref!r}: {exc}") from None


def call_train(train_fn: TrainFn, config: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker): returns the record, or {"status": "failed", "error": ...}.

    ``"disk_full": True`` marks a failure from a full disk, which stops the sweep (every later cell would hit it).
    """
    try:
        record = train_fn(dict(config))
    except Exception as exc:  # one bad cell must not end the sweep
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8), "disk_full": is_disk_full(exc)}
    if isinstance(record, RunRecord):
        return record.to_dict()  # a plain dict crosses process boundaries (spawn, Ray, torchrun) as it is
    if not isinstance(record, Mapping):
        return {"status": "failed", "error": f"train function returned {type(record).__name__}, not a record"}
    return dict(record)



@contextmanager
def _interruptible_main() -> Iterator[None]:
    """Let ``_thread.interrupt_main`` reach the main thread while cells run. It does nothing when SIGINT is not
    handled by Python, and a process started in the background by a non-interactive shell (``cmd &``, as GPU
    window scripts and CI runners do) inherits SIGINT ignored: a dead heartbeat then could not stop its cell,
    nor a deadline's SIGINT the sweep. The default handler is installed for the run and the old one restored."""
    import signal

    if threading.current_thread() is not threading.main_thread() or \
            callable(signal.getsignal(signal.SIGINT)):
        yield
        return
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class _Heartbeat:
    """Refresh a claim while a long run trains, so other hosts do not take it over as stale.

    A failed beat is logged and retried at the next one. When beats keep failing until one more miss would make
    the claims stale (another host would take over a live run), the heartbeat gives up: it records why in
    :attr:`error` and calls ``on_dead`` (the executor stops its cells and hands their claims back).
    """

    def __init__(self, location: str, keys: set[str], every: float, log: Callable[[str], None] = print,
                 on_dead: Callable[[], None] = lambda: None) -> None:
        from embrecipe.runs.store import STALE_AFTER_BEATS

        self.location, self.keys, self.every, self.log, self.on_dead = location, keys, every, log, on_dead
        self.max_failures = max(1, STALE_AFTER_BEATS - 1)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.every > 0 and self.location != ":memory:":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from embrecipe.runs.store import RunStore

        # Its own connection (sqlite connections are not shared across threads), opened inside the retried
        # block: opening can meet a busy store too, and a thread that died there left the claims to go stale.
        store = None
        failures = 0
        try:
            while not self._stop.wait(self.every):
                try:
                    if store is None:
                        store = RunStore(self.location)
                    for key in list(self.keys):
                        store.heartbeat(key)
                    failures = 0
                except Exception as exc:  # a busy store: logged, and the next beat retries
                    failures += 1
                    self.log(f"heartbeat to {self.location} failed ({failures} of {self.max_failures}): {exc!r}")
                    if failures >= self.max_failures:
                        self.error = (f"the heartbeat to {self.location} failed {failures} times in a row (last: "
                                      f"{exc!r}): stopped the running cells and handed back their claims, which "
                                      "another host could otherwise take over while they train")
                        self.on_dead()
                        return
        finally:
            if store is not None:
                store.close()


class _GpuPlacer:
    """Which GPU(s) each pool cell runs on, bounded by memory (embrecipe.sweep.placement). Cells of the same
    model, method and batch size that already ran replace the estimate by their measured peak (+10 %)."""

    def __init__(self, grid: Grid, free_mib: list[float], log: Callable[[str], None]) -> None:
        from embrecipe.sweep.placement import GpuSlots

        self.grid, self.log = grid, log
        self.slots = GpuSlots(free_mib, headroom=float(grid.gpu.get("headroom", 0.9)))
        self.per_cell = int(grid.gpu.get("gpus_per_cell", 1))
        self.measured: dict[tuple[str, str, Any], float] = {}
        self.running: dict[str, Any] = {}
        self.need: dict[str, float] = {}

    @classmethod
    def for_grid(cls, grid: Grid, log: Callable[[str], None], free_mib: list[float] | None = None) -> _GpuPlacer | None:
        from embrecipe.sweep.placement import visible_gpus_free_mib

        if not grid.gpu.get("pack", True):
            return None
        free = visible_gpus_free_mib() if free_mib is None else free_mib
        if not free:
            return None
        placer = cls(grid, free, log)
        log(f"GPU packing: {len(free)} GPU(s), {', '.join(f'{f:.0f}' for f in free)} MiB free; "
            + ("whole GPUs per cell under torchrun" if placer.per_cell > 1 else "several cells per GPU by memory"))
        return placer

    def _signature(self, cell: Cell) -> tuple[str, str, Any]:
        return cell.model, cell.variant, cell.config.get("mini_batch_size") or cell.config.get("batch_size", 1024)

    def cell_mib(self, cell: Cell) -> float:
        from embrecipe.sweep.placement import estimate_cell_mib

        if self._signature(cell) in self.measured:
            return self.measured[self._signature(cell)] * 1.1
        model = next(m for m in self.grid.models if m["name"] == cell.model)
        config = cell.config
        return estimate_cell_mib(model_shape(model), method_from_dict(cell.method),
                                 batch_size=int(config.get("batch_size", 1024)),
                                 seq_len=int(config.get("max_seq_length", 75)),
                                 mini_batch=config.get("mini_batch_size"),
                                 hard_negatives=int(config.get("hard_negatives", 0)),
                                 bf16=config.get("precision", "auto") != "fp32")

    def place(self, cell: Cell) -> Any:
        if self.per_cell > 1:
            return self.slots.place_whole(self.per_cell)
        need = self.cell_mib(cell)
        gpu = self.slots.place(need)
        if gpu is not None:
            self.need[cell.key] = need
        return gpu

    def release(self, cell: Cell, where: Any) -> None:
        if isinstance(where, list):
            self.slots.release_whole(where)
        elif where is not None:
            self.slots.release(where, self.need.pop(cell.key))

    def finished(self, cell: Cell, record: Mapping[str, Any]) -> None:
        self.release(cell, self.running.pop(cell.key, None))
        if record.get("peak_gpu_mib"):
            self.measured[self._signature(cell)] = float(record["peak_gpu_mib"])


def _call_train_on_gpus(train_fn: TrainFn, config: dict[str, Any], where: Any, train_ref: str) -> dict[str, Any]:
    """Run one cell on the GPU (an int) or GPUs (a list: torchrun, one rank per GPU) the placer chose."""
    if isinstance(where, list):
        return _call_torchrun(train_ref, config, where)
    os.environ["EMBRECIPE_CUDA_DEVICE"] = str(where)
    try:
        return call_train(train_fn, config)
    finally:
        try:  # hand the cached blocks back: the next cell on this worker may run on another GPU, or a smaller one
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _call_torchrun(train_ref: str, config: dict[str, Any], gpus: list[int]) -> dict[str, Any]:
    import json
    import subprocess
    import tempfile

    from embrecipe.sweep.placement import torchrun_command

    with tempfile.TemporaryDirectory() as tmp:
        cfg, rec = Path(tmp) / "config.json", Path(tmp) / "record.json"
        cfg.write_text(json.dumps({"train_fn": train_ref, "config": config}, default=str))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
        proc = subprocess.run(torchrun_command(len(gpus), str(cfg), str(rec), sys.executable), env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not rec.exists():
            return {"status": "failed", "error": f"torchrun exited {proc.returncode}: {proc.stderr[-500:]}"}
        return json.loads(rec.read_text())


def start_ray(workers: int, ray_address: str | None) -> bool:
    """Connect to (or start) Ray unless it is up; True when this call started it (and must shut it down)."""
    if not ray_address:
        # Ray turns 127.0.0.1 into the machine's network address (and its servers listen on every interface)
        # unless it believes clusters are off, which this variable says; its child processes read it too.
        os.environ.setdefault(_RAY_LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise EmbrecipeError("the ray executor needs Ray: pip install 'embrecipe[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(**ray_init_kwargs(workers, ray_address))
    return True


_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init_kwargs(workers: int, ray_address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments: connect to ``ray_address``, else start a local instance that listens on 127.0.0.1
    only (a grid's trainer runs code, so the local cluster must not accept work from the network)."""
    if ray_address:
        return {"address": ray_address, "log_to_driver": False}
    return {"num_cpus": workers, "include_dashboard": False, "log_to_driver": False,
            "_node_ip_address": "127.0.0.1"}


def ray_gpu_fraction(cell_mib: float, gpu_mib: float) -> float:
    """The GPU share a Ray task declares for a cell (``ray: {num_gpus: auto}``): its memory share, in 1/100ths,
    at most one whole GPU."""
    return min(1.0, max(0.01, math.ceil(100 * cell_mib / gpu_mib) / 100))


# ------------------------------------------------------------------------------------------------------
# The executor interface: one loop with the bookkeeping, three ways to start and wait for a cell
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorSettings:
    """Where a sweep's cells run: ``kind`` ``"local"`` (in this process, or a process pool when ``workers`` > 1)
    or ``"ray"`` (``workers`` CPUs of a local instance, or the cluster at ``ray_address``)."""

    kind: str = "local"
    workers: int = 1
    ray_address: str | None = None


OnResult = Callable[[Cell, dict[str, Any]], None]
OnBusy = Callable[[Cell], None]
_NO_ROOM = object()  # reserve(): no room for the next cell until a running one finishes


class Executor:
    """Runs cells through :meth:`run`; a subclass defines :meth:`submit`, :meth:`wait` and :meth:`outcome`
    (and, where it needs them, :meth:`_session`, :meth:`reserve`, :meth:`unreserve`, :meth:`done`).

    Example (the driver's side, as :func:`embrecipe.sweep.orchestration.run_sweep` does it)::

        executor = make_executor(ExecutorSettings(workers=2), store, train_fn, grid, print)
        executor.run(todo, on_result=lambda cell, record: ..., on_busy=lambda cell: ...)
    """

    capacity = 1  # cells in flight at once

    def __init__(self, store: Any, train_fn: TrainFn, grid: Grid, log: Callable[[str], None]) -> None:
        self.store, self.train_fn, self.grid, self.log = store, train_fn, grid, log

    def run(self, todo: list[Cell], on_result: OnResult, on_busy: OnBusy) -> None:
        """Train ``todo`` in order: claimed cells go to ``on_result(cell, record)`` as they finish, cells held by
        another live worker to ``on_busy(cell)``. If anything raises (``on_result`` included), the claims of the
        cells still running are released before the exception propagates."""
        queue = list(todo)
        running: dict[Any, Cell] = {}
        # A dead heartbeat interrupts the driver (its cells: in this process, or waited for here), which hands the
        # claims back below and says why.
        with self._session(), _interruptible_main(), _Heartbeat(self.store.location, set(), self.grid.heartbeat_s,
                                                                self.log, _thread.interrupt_main) as beat:
            try:
                while queue or running:
                    while queue and len(running) < self.capacity:
                        slot = self.reserve(queue[0])
                        if slot is _NO_ROOM:
                            break  # wait for a running cell to finish
                        cell = queue.pop(0)
                        if not self.store.claim(cell.key, cell.key_config):
                            on_busy(cell)
                            self.unreserve(cell, slot)
                            continue
                        beat.keys.add(cell.key)
                        running[self.submit(cell, slot)] = cell
                    if not running:
                        self.idle_with(queue)
                        break
                    for handle in self.wait(list(running)):
                        cell = running.pop(handle)
                        beat.keys.discard(cell.key)
                        record = self.outcome(handle)
                        self.done(cell, record)
                        on_result(cell, record)
            except BaseException:  # Ctrl-C too: hand the cells back so the next run starts them at once
                for cell in running.values():
                    self.store.release(cell.key)
                if beat.error is not None:
                    raise ClaimLost(beat.error) from None
                raise

    @contextmanager
    def _session(self) -> Iterator[None]:
        """Resources held for one :meth:`run` (a process pool, a Ray connection)."""
        yield

    def reserve(self, cell: Cell) -> Any:
        """Where the next cell would run, or ``_NO_ROOM``."""
        return None

    def unreserve(self, cell: Cell, slot: Any) -> None:
        """Give back what :meth:`reserve` took for a cell that was not claimed."""

    def idle_with(self, queue: list[Cell]) -> None:
        """Nothing runs and nothing more could be started: a chance to say why, when cells are left."""

    def done(self, cell: Cell, record: Mapping[str, Any]) -> None:
        """A cell's record came back (before the driver sees it)."""

    def submit(self, cell: Cell, slot: Any) -> Any:
        """Start a claimed cell; returns a hashable handle for :meth:`wait` and :meth:`outcome`."""
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> Any:
        """Block until at least one of the handles is finished; returns the finished ones."""
        raise NotImplementedError

    def outcome(self, handle: Any) -> dict[str, Any]:
        """A finished handle's record (a failed record when the worker itself died)."""
        raise NotImplementedError


class _Deferred:
    """A sequential cell, trained when it is waited for (so a Ctrl-C during training finds it running)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.record: dict[str, Any] | None = None


class SequentialExecutor(Executor):
    """One cell at a time, in this process."""

    def submit(self, cell: Cell, slot: Any) -> _Deferred:
        return _Deferred(cell.config)

    def wait(self, handles: list[Any]) -> list[_Deferred]:
        job = handles[0]
        job.record = call_train(self.train_fn, job.config)
        return [job]

    def outcome(self, handle: _Deferred) -> dict[str, Any]:
        assert handle.record is not None
        return handle.record


class PoolExecutor(Executor):
    """A local process pool of ``workers`` processes; with visible GPUs, cells are placed on them by memory."""

    def __init__(self, store: Any, train_fn: TrainFn, grid: Grid, log: Callable[[str], None], workers: int) -> None:
        super().__init__(store, train_fn, grid, log)
        self.capacity = workers
        self.placer: _GpuPlacer | None = None

    @contextmanager
    def _session(self) -> Iterator[None]:
        import multiprocessing as mp
        import pickle
        from concurrent.futures import ProcessPoolExecutor

        try:  # pool workers receive the function by pickle: say so up front instead of failing mid-sweep
            pickle.dumps(self.train_fn)
        except Exception:
            raise InputError("--workers > 1 needs a module-level train function (module:function), "
                             f"not {self.train_fn!r}") from None
        # spawn: a forked copy of a process that holds SQLite connections and threads is not safe.
        ctx = mp.get_context("spawn")
        self.placer = _GpuPlacer.for_grid(self.grid, self.log)
        with ProcessPoolExecutor(max_workers=self.capacity, mp_context=ctx) as self.pool:
            try:
                yield
            except BaseException:
                # the driver stopped (Ctrl-C, a dead heartbeat) and handed the claims back: stop the cells too, or
                # they would train on while another host takes them (the pool has no public way to end a
                # running task, so its worker processes are terminated)
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
                self.pool.shutdown(wait=False, cancel_futures=True)
                raise

    def reserve(self, cell: Cell) -> Any:
        if self.placer is None:
            return None
        where = self.placer.place(cell)
        return _NO_ROOM if where is None else where

    def unreserve(self, cell: Cell, slot: Any) -> None:
        if self.placer:
            self.placer.release(cell, slot)

    def submit(self, cell: Cell, slot: Any) -> Any:
        if self.placer:
            fut = self.pool.submit(_call_train_on_gpus, self.train_fn, cell.config, slot, self.grid.trainer)
            self.placer.running[cell.key] = slot
            return fut
        return self.pool.submit(call_train, self.train_fn, cell.config)

    def idle_with(self, queue: list[Cell]) -> None:
        if queue and self.placer:  # all GPUs idle and still no room: only a multi-GPU cell can do that
            raise InputError(f"gpu.gpus_per_cell {self.placer.per_cell} is more than the "
                             f"{len(self.placer.slots.capacity)} GPU(s) visible here")

    def wait(self, handles: list[Any]) -> Any:
        from concurrent.futures import FIRST_COMPLETED, wait

        finished, _ = wait(handles, return_when=FIRST_COMPLETED)
        return finished

    def outcome(self, handle: Any) -> dict[str, Any]:
        try:
            return handle.result()
        except Exception as exc:  # the worker process died
            return {"status": "failed", "error": f"worker crashed: {exc}"}

    def done(self, cell: Cell, record: Mapping[str, Any]) -> None:
        if self.placer:
            self.placer.finished(cell, record)


class RayExecutor(Executor):
    """Ray tasks (grid key ``ray``: resources per task, ``max_in_flight``; ``num_gpus: auto`` declares each cell's
    memory share of a GPU, so Ray packs cells onto GPUs)."""

    def __init__(self, store: Any, train_fn: TrainFn, grid: Grid, log: Callable[[str], None], workers: int,
                 ray_address: str | None) -> None:
        super().__init__(store, train_fn, grid, log)
        self.workers, self.ray_address = workers, ray_address
        self.sizer: _GpuPlacer | None = None

    @contextmanager
    def _session(self) -> Iterator[None]:
        started = start_ray(self.workers, self.ray_address)
        import ray

        self.ray = ray
        try:
            ray_opts = self.grid.ray
            opts = {"num_cpus": float(ray_opts.get("num_cpus", 1)),
                    "num_gpus": 0.0 if str(ray_opts.get("num_gpus", 0)) == "auto" else float(ray_opts.get("num_gpus", 0)),
                    "max_retries": int(ray_opts.get("max_retries", 0))}
            if str(ray_opts.get("num_gpus", 0)) == "auto":  # a fraction of a GPU per cell from its memory estimate
                opts["num_gpus"] = 1.0
                self.sizer = _GpuPlacer(self.grid, [float(ray_opts.get("gpu_mib", 80 * 1024))], self.log)
            self.remote = ray.remote(**opts)(call_train)
            self.capacity = int(ray_opts.get("max_in_flight", max(self.workers, 1) * 2))
            yield
        finally:
            if started:
                ray.shutdown()

    def submit(self, cell: Cell, slot: Any) -> Any:
        task = self.remote
        if self.sizer is not None:
            task = task.options(num_gpus=ray_gpu_fraction(self.sizer.cell_mib(cell), self.sizer.slots.capacity[0]))
        return task.remote(self.train_fn, cell.config)

    def wait(self, handles: list[Any]) -> Any:
        ready, _ = self.ray.wait(handles, num_returns=1)
        return ready

    def outcome(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except Exception as exc:  # task or node failure
            return {"status": "failed", "error": f"ray task failed: {exc}"}


def make_executor(settings: ExecutorSettings, store: Any, train_fn: TrainFn, grid: Grid,
                  log: Callable[[str], None]) -> Executor:
    """The executor the settings ask for: Ray, a process pool (``workers`` > 1), else sequential."""
    if settings.kind == "ray":
        return RayExecutor(store, train_fn, grid, log, settings.workers, settings.ray_address)
    if settings.workers > 1:
        return PoolExecutor(store, train_fn, grid, log, settings.workers)
    return SequentialExecutor(store, train_fn, grid, log)
