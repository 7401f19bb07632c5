"""Multi-process training (the torchrun / accelerate launch code path) on CPU with 2 gloo processes."""

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, model, data_path, queue):
    import os

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    from embrecipe.training.trainer import TrainConfig, train

    rec = train(TrainConfig(model=model, data=data_path, budget=6e8, batch_size=16, progress=False, lr=2e-3,
                            precision="fp32"))
    queue.put((rank, rec.model_flops, rec.tokens, rec.loss_curve, rec.details["world_size"]))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_models, tiny_pairs_file):
    import torch.multiprocessing as mp

    from embrecipe.training.trainer import TrainConfig, train

    # fp32: on a CPU with bf16 units `auto` trains in bf16, whose rounding differs between 1 and 2 processes
    single = train(TrainConfig(model=tiny_models["gpt_neox"], data=tiny_pairs_file, budget=6e8, batch_size=16,
                               progress=False, lr=2e-3, precision="fp32"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, tiny_models["gpt_neox"], tiny_pairs_file, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _rank, flops, tokens, curve, world in results:
        assert world == 2
        # the meter counts global tokens on every rank, so both ranks stop at the same, single-process FLOPs
        assert flops == single.model_flops and tokens == single.tokens
        # in-batch negatives gathered across ranks: the same loss as one process with the whole batch
        assert [c[0] for c in curve] == [c[0] for c in single.loss_curve]
        for (_, got), (_, want) in zip(curve, single.loss_curve, strict=True):
            assert got == pytest.approx(want, rel=2e-3)
