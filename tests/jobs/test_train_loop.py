"""The worker loop's DDP settings and its one-collective non-finite check, on two gloo ranks."""

import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipsr.training import NonFiniteLossError, build_models, build_optimizers, train_step
from jobs.train_loop import _all_finite, ddp_options
from tests.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config(4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = build_models(cfg)
        models.generator = torch.nn.parallel.DistributedDataParallel(
            models.generator, **ddp_options(use_gpu=False)
        )
        models.discriminator = torch.nn.parallel.DistributedDataParallel(
            models.discriminator, **ddp_options(use_gpu=False)
        )
        opts = build_optimizers(models, cfg.optim)
        calls = []

        def check(t):
            calls.append(list(t.shape))
            return _all_finite(t)

        gen = torch.Generator().manual_seed(rank)
        stopped_at = None
        for step in range(3):
            hr = torch.rand(2, 3, 128, 128, generator=gen) * 2 - 1
            lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
            if step == 1 and rank == 1:  # only this rank's batch is bad
                lr = lr * float("nan")
            text = models.clip.encode_text([f"a {step}", f"b {step}"])
            try:
                train_step(models, opts, lr, hr, text, cfg.loss.weights, all_finite=check)
            except NonFiniteLossError:
                stopped_at = step
                break
        state = {
            "stopped_at": stopped_at,
            "checks": calls,
            "g": {k: v.detach().clone() for k, v in models.generator.module.state_dict().items()},
        }
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_every_rank_stops_at_the_same_step_after_one_check_per_step(tmp_path):
    """Rank 1's batch turns non-finite at step 1: both ranks raise at step 1 (none waits in an
    all-reduce), after exactly one 2-loss check per step; G's replicas stayed identical (DDP
    with bucket views and no buffer broadcast keeps them in sync)."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for state in ranks:
        assert state["stopped_at"] == 1
        assert state["checks"] == [[2], [2]]
    for key, value in ranks[0]["g"].items():
        torch.testing.assert_close(value, ranks[1]["g"][key], rtol=0, atol=0)
