"""Sweeps that fill GPUs: memory-bounded placement, whole-GPU cells, utilization. On CPU, with fake GPUs."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import pytest

from embrecipe.errors import InputError
from embrecipe.sweep.executors import ray_gpu_fraction
from embrecipe.sweep.grid import grid_from_dict
from embrecipe.sweep.orchestration import run_sweep
from embrecipe.sweep.placement import GpuSlots, estimate_cell_mib, sweep_utilization, torchrun_command
from embrecipe.sweep.synthetic import synthetic_train


def test_slots_fill_the_card_with_the_most_room_and_wait_when_full():
    slots = GpuSlots([10_000, 20_000], headroom=1.0)
    assert slots.place(12_000) == 1  # the emptier card
    assert slots.place(6_000) == 0
    assert slots.place(6_000) == 1
    assert slots.place(5_000) is None  # 4,000 and 2,000 MiB left: wait
    slots.release(1, 12_000)
    assert slots.place(5_000) == 1


def test_a_cell_larger_than_any_card_runs_alone_on_an_empty_one():
    slots = GpuSlots([10_000], headroom=1.0)
    assert slots.place(50_000) == 0  # nothing else can start beside it
    assert slots.place(1) is None
    slots.release(0, 50_000)
    assert slots.left == [10_000]


def test_whole_gpu_cells_take_idle_cards_only():
    slots = GpuSlots([100, 100, 100], headroom=1.0)
    assert slots.place(10) in (0, 1, 2)
    assert slots.place_whole(3) is None
    got = slots.place_whole(2)
    assert got is not None and len(got) == 2
    slots.release_whole(got)
    assert sorted(slots.left) == [90, 100, 100]


def test_sweep_placement_uses_the_planners_memory_model():
    """One memory model: a cell's placement estimate is the planner's training_memory, term for term."""
    from embrecipe.models.methods import method_from_dict
    from embrecipe.planning.units import training_memory
    from tests.planning.test_planner import family

    shape, full = family()[-1].shape, method_from_dict({"name": "full"})
    planner = training_memory(shape, full, batch_size=1024, seq_len=75, mini_batch=64)["total"] / 2**20
    assert estimate_cell_mib(shape, full, batch_size=1024, seq_len=75, mini_batch=64) == pytest.approx(planner)
    fp32_hn = training_memory(shape, full, batch_size=32, seq_len=75, texts_per_pair=3, activation_bytes=4)
    assert estimate_cell_mib(shape, full, batch_size=32, seq_len=75, hard_negatives=1, bf16=False) == \
        pytest.approx(fp32_hn["total"] / 2**20)


def test_utilization_arithmetic():
    assert sweep_utilization(7.9e14, 2.0, 7.9e14) == pytest.approx(0.5)
    assert sweep_utilization(1e15, 1.0, 1e15, devices=4) == pytest.approx(0.25)
    assert math.isnan(sweep_utilization(1.0, 0.0, 1.0))
    assert ray_gpu_fraction(8_000, 80_000) == 0.1 and ray_gpu_fraction(1e9, 80_000) == 1.0
    assert ray_gpu_fraction(1, 80_000) == 0.01


def test_torchrun_command_runs_the_cell_module():
    cmd = torchrun_command(4, "c.json", "r.json", "python")
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc-per-node=4" in cmd
    assert cmd[-3:] == ["embrecipe.sweep.distributed_cell", "c.json", "r.json"]


def gpu_fake_train(config):
    """A fake cell: the synthetic record plus where and when it ran (module level: pool workers import it)."""
    start = time.time()
    time.sleep(0.4)
    rec = synthetic_train(config)
    return dataclasses.replace(rec, details={**rec.details, "gpu": int(os.environ["EMBRECIPE_CUDA_DEVICE"]),
                                             "t0": start, "t1": time.time(), "peak_gpu_mib": 900.0})


GRID = {"name": "fill", "models": ["toy-h64-l2"], "methods": {"full": {}, "lora": {"rank": [8, 32]}},
        "budgets": [1e12, 1e13], "tokens_per_pair": 60, "min_steps": 1, "train": {"batch_size": 32, "seed": 0}}


def test_pool_packs_cells_onto_fake_gpus_bounded_by_memory(tmp_path, monkeypatch):
    """Two fake 2,400 MiB GPUs, cells estimated at ~1,030 MiB: at most two run on a card at once, both cards
    are used, every cell completes, and the sweep reports its utilization."""
    import embrecipe.sweep.placement as gs
    from embrecipe.runs.store import RunStore

    monkeypatch.setattr(gs, "visible_gpus_free_mib", lambda: [2400.0, 2400.0])
    logs: list[str] = []
    grid = grid_from_dict({**GRID, "trainer": f"{__name__}:gpu_fake_train"})
    res = run_sweep(grid, store=tmp_path / "runs.sqlite", workers=6, progress=False, log=logs.append)
    assert len(res.ran) == 6 and not res.failed
    assert any("GPU packing: 2 GPU(s)" in line for line in logs)
    recs = RunStore(tmp_path / "runs.sqlite").records()
    assert {r.details["gpu"] for r in recs} == {0, 1}
    for gpu in (0, 1):
        spans = [(r.details["t0"], r.details["t1"]) for r in recs if r.details["gpu"] == gpu]
        overlap = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
        assert overlap <= 2  # 2 x 1,030 MiB fit in 0.9 x 2,400; a third would not
    assert res.utilization is not None and res.utilization > 0 and res.peak["devices"] == 2
    assert "sweep-level utilization" in res.summary()


def test_more_gpus_per_cell_than_visible_is_an_input_error(tmp_path, monkeypatch):
    import embrecipe.sweep.placement as gs

    monkeypatch.setattr(gs, "visible_gpus_free_mib", lambda: [80_000.0])
    grid = grid_from_dict({**GRID, "trainer": f"{__name__}:gpu_fake_train", "gpu": {"gpus_per_cell": 2}})
    with pytest.raises(InputError, match="gpus_per_cell 2"):
        run_sweep(grid, store=tmp_path / "runs.sqlite", workers=2, progress=False, log=lambda s: None)
    with pytest.raises(InputError, match="gpu"):
        grid_from_dict({**GRID, "gpu": {"gpus": 2}})


def test_packing_off_or_no_gpu_keeps_the_plain_pool(tmp_path, monkeypatch):
    import embrecipe.sweep.placement as gs

    monkeypatch.setattr(gs, "visible_gpus_free_mib", lambda: [])
    logs: list[str] = []
    grid = grid_from_dict({**GRID, "trainer": "synthetic"})
    res = run_sweep(grid, store=tmp_path / "runs.sqlite", workers=2, progress=False, log=logs.append)
    assert len(res.ran) == 6 and not any("GPU packing" in line for line in logs)
    assert res.utilization is None  # synthetic FLOPs are not executed: no utilization claimed


def test_trainer_gradcache_sizing_is_the_planners_memory_model():
    """The trainer's automatic GradCache picks what the planner's auto_mini_batch picks for the same memory."""
    from embrecipe.models.methods import method_from_dict
    from embrecipe.planning.units import auto_mini_batch, training_memory
    from embrecipe.training.memory import gradcache_mini_batch
    from tests.planning.test_planner import family

    shape, full = family()[-1].shape, method_from_dict({"name": "full"})
    kw = dict(batch_size=1024, seq_len=75)
    plain = training_memory(shape, full, **kw)["total"]
    assert gradcache_mini_batch(shape, full, memory_bytes=plain, **kw) is None  # the whole batch fits
    squeezed = auto_mini_batch(shape, full, memory_bytes=plain / 4, **kw)
    assert squeezed is not None and squeezed[0] is not None
    assert gradcache_mini_batch(shape, full, memory_bytes=plain / 4, **kw) == squeezed[0]
    assert gradcache_mini_batch(shape, full, memory_bytes=1.0, **kw) == 1  # nothing fits: the smallest
