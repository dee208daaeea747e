"""The Ray Train worker loop of ``clipsr train`` (runs once per worker, restarted on failure).

Data split: every rank (and each of its DataLoader workers) reads its own *resampled* stream of
shards seeded by (seed, rank, worker, segment) — see ``clipsr/shard_dataset.py``. We chose this
over Ray Data's streaming split because the stream position is one integer (batches consumed),
which makes resume exact and cheap, and because it can neither hang on uneven shards nor need
shards >= ranks x workers. G and D+C are wrapped in DDP separately (``prepare_model``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("clipsr.train")


def _setup_errors() -> tuple[type[BaseException], ...]:
    from clipsr.checkpoint import CheckpointError
    from clipsr.clip_backbone import ClipWeightsError
    from clipsr.config_loader import ConfigError

    return (CheckpointError, ClipWeightsError, ConfigError, FileNotFoundError)


def _stopped_in_setup(cfg, rank: int, step: int, error: BaseException | None, device) -> bool:
    """Whether any rank's set-up failed (collective: every rank returns the same); a failed rank
    writes the stop marker the driver reports (a retry would fail the same way), and every rank
    then reports once and stops."""
    import ray.train

    if error is not None:
        write_stop_marker(cfg, {"kind": "setup", "step": step, "error": f"rank {rank}: {error}"})
    if _all_finite(torch.tensor(0.0 if error is None else float("nan"), device=device)):
        return False
    ray.train.report({"step": step})
    return True


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` (the step's losses) is finite on every rank: one 1-float all-reduce."""
    flag = torch.isfinite(t.detach()).all().float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def ddp_options(use_gpu: bool, multi_scale: bool = False) -> dict[str, Any]:
    """DDP settings for G and D+C: gradients are views into DDP's buckets (no copy per step);
    no buffer broadcast (neither net has buffers); on CPU workers (gloo) 100 MB buckets, so that
    each net's gradients go in as few all-reduces as possible (the tiny preset's in one or two;
    gloo gains nothing from overlapping many small ones with a one-thread backward).
    ``multi_scale``: a G serving several scales runs one scale's head per step, the same on
    every rank, so the others' parameters are unused (DDP leaves their gradients None)."""
    options: dict[str, Any] = {"gradient_as_bucket_view": True, "broadcast_buffers": False}
    if not use_gpu:
        options["bucket_cap_mb"] = 100
    if multi_scale:
        options["find_unused_parameters"] = True
    return options


def _schedule(cfg, step: int) -> float:
    run = cfg.run
    if run.warmup_steps and step < run.warmup_steps:
        return (step + 1) / run.warmup_steps
    if run.lr_schedule == "cosine":
        progress = (step - run.warmup_steps) / max(1, run.steps - run.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from clipsr.config_loader import from_dict
    from clipsr.initial_weights import initial_clip, load_initial_weights
    from clipsr.shard_dataset import iter_eval_batches, training_loader
    from clipsr.train_state import load_training_checkpoint
    from clipsr.training import (
        EMA,
        Precision,
        build_models,
        build_optimizers,
        drop_captions,
        train_step,
    )
    from jobs.console import quiet_worker_logging
    from jobs.train_config import TrainConfig
    from jobs.train_validation import validate

    quiet_worker_logging()  # again: Ray Train has just set the worker's root logger to INFO
    cfg = from_dict(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not cfg.run.use_gpu:  # one intra-op thread per reserved CPU, whoever started Ray
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.seed + rank)
    step, error, checkpoint = 0, None, None
    try:  # what fails here fails the same way on every retry: stopped, not retried
        init = cfg.run.init_from
        models = build_models(cfg, clip=initial_clip(cfg, init) if init else None).to(device)
        ema = EMA(models.generator, cfg.run.ema_decay, warmup=cfg.run.ema_warmup)
        if init:  # a resume below overwrites every part again
            loaded = load_initial_weights(init, models, ema)
            if rank == 0:
                log.info("weights from %s: %s", init, ", ".join(loaded))
        checkpoint = ray.train.get_checkpoint()
    except _setup_errors() as err:
        error = err
    if _stopped_in_setup(cfg, rank, step, error, device):
        return
    ddp = ddp_options(cfg.run.use_gpu)
    multi = ddp_options(cfg.run.use_gpu, multi_scale=len(cfg.model.all_scales) > 1)
    models.generator = ray.train.torch.prepare_model(
        models.generator, parallel_strategy_kwargs=multi
    )
    models.discriminator = ray.train.torch.prepare_model(
        models.discriminator, parallel_strategy_kwargs=ddp
    )
    optimizers = build_optimizers(models, cfg.optim)
    precision = Precision.create(cfg.run.precision, device)
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                step = load_training_checkpoint(
                    directory, models, optimizers, ema, precision, device=device
                )
    except _setup_errors() as err:
        error = err
    if _stopped_in_setup(cfg, rank, step, error, device):
        return
    base_lrs = [cfg.optim.generator_lr, cfg.optim.discriminator_lr]
    if checkpoint is not None and rank == 0:
        log.info("resumed from the checkpoint at step %d", step)

    opener = functools.partial(_open, endpoint=cfg.data.endpoint_url)
    loader = training_loader(
        config["train_urls"],
        cfg.scales,
        cfg.data,
        cfg.seed,
        rank=rank,
        world_size=world,
        start_batch=step,
        opener=opener,
    )
    tracker = _rank0_tracker(config) if rank == 0 else None
    if step >= cfg.run.steps:  # a rerun of a finished run: nothing to train, report once
        ray.train.report({"step": step})
        return
    batches = iter(loader)
    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
    while step < cfg.run.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        window_wait += time.perf_counter() - t0
        for opt, base in zip((optimizers.generator, optimizers.discriminator), base_lrs):
            for group in opt.param_groups:
                group["lr"] = base * _schedule(cfg, step)
        captions = batch["captions"]
        if cfg.run.caption_dropout > 0:  # seeded by (seed, step, rank): resumes identically
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            captions = drop_captions(captions, cfg.run.caption_dropout, g)
        text = models.clip.encode_text(captions)
        try:
            losses = train_step(
                models,
                optimizers,
                batch["lr"].to(device),
                batch["hr"].to(device),
                text,
                cfg.loss.weights,
                precision,
                all_finite=_all_finite,
                scale=int(batch["scale"]),
            )
        except FloatingPointError as err:
            # every rank got here together (the check is collective): stop without retrying;
            # the driver reads the marker (reports without a checkpoint do not reach it)
            if rank == 0:
                write_stop_marker(cfg, {"kind": "nonfinite", "step": step + 1, "error": str(err)})
            ray.train.report({"step": step})
            return
        ema.update(models.generator, step)
        step += 1
        window_steps += 1
        metrics: dict[str, float] = {}
        if step % cfg.run.log_every == 0 or step == cfg.run.steps:
            elapsed = time.perf_counter() - window_start
            per_step = elapsed / window_steps
            metrics.update({f"loss/{k}": v for k, v in losses.items()})
            metrics.update(
                {
                    "perf/steps_per_s": 1 / per_step,
                    "perf/images_per_s": cfg.data.batch_size * world / per_step,
                    "perf/data_wait_share": window_wait / elapsed,
                    "lr/generator": optimizers.generator.param_groups[0]["lr"],
                }
            )
            if rank == 0:
                eta = per_step * (cfg.run.steps - step)
                log.info(
                    "step %d/%d  %.2f steps/s  %.1f img/s  data wait %.0f%%  G %.4f  D %.4f  "
                    "ETA %.0f s",
                    step,
                    cfg.run.steps,
                    1 / per_step,
                    metrics["perf/images_per_s"],
                    100 * window_wait / elapsed,
                    losses["g_loss"],
                    losses["d_loss"],
                    eta,
                )
            window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
        if rank == 0 and (step % cfg.run.validate_every == 0 or step == cfg.run.steps):
            for scale in cfg.scales:  # val/* at the default scale, val/*_x{s} at every scale
                val = iter_eval_batches(
                    config["val_urls"],
                    scale,
                    cfg.data.batch_size,
                    limit=cfg.run.val_samples,
                    opener=opener,
                )
                scores, grid = validate(
                    ema.model,
                    models.clip,
                    val,
                    device,
                    cfg.metrics.crop_border * scale // cfg.model.scale,
                    cfg.metrics.test_y_channel,
                )
                if len(cfg.scales) > 1:
                    metrics.update({f"{k}_x{scale}": v for k, v in scores.items()})
                if scale == cfg.model.scale or len(cfg.scales) == 1:
                    metrics.update(scores)
                suffix = f"_x{scale}" if len(cfg.scales) > 1 else ""
                if tracker is not None and grid is not None:
                    tracker.log_image(grid, f"samples/step_{step:07d}{suffix}.png")
                if rank == 0 and config.get("grid_dir") and grid is not None:
                    os.makedirs(config["grid_dir"], exist_ok=True)
                    grid.save(os.path.join(config["grid_dir"], f"step_{step:07d}{suffix}.png"))
        if tracker is not None and metrics:
            tracker.log_metrics(metrics, step)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
            meta = {"data_manifest_sha256": config.get("manifest_sha256", "")}
            _report_checkpoint(cfg, models, optimizers, ema, precision, step, rank, metrics, meta)


def _open(url: str, endpoint: str):
    from pipelines.storage import StorageOptions, open_read

    return open_read(url, StorageOptions(endpoint_url=endpoint))


class _MetricLogger:
    """Rank 0's MLflow logging into the driver's run, through the client API (no active run in
    the worker process, so nothing ends the run when a worker exits or is restarted)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]  # "/" groups charts
        self.client.log_batch(self.run_id, metrics=batch)

    def log_image(self, image, name: str) -> None:
        self.client.log_image(self.run_id, image, name)


def _rank0_tracker(config: dict[str, Any]) -> _MetricLogger | None:
    if not config.get("run_id"):
        return None
    return _MetricLogger(config["tracking_uri"], config["run_id"])


def _report_checkpoint(cfg, models, optimizers, ema, precision, step, rank, metrics, meta):
    import ray.train

    from clipsr.train_state import save_training_checkpoint

    report = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, float)}}
    if rank != 0:
        ray.train.report(report)
        return
    with tempfile.TemporaryDirectory(prefix="clipsr-ckpt-") as tmp:
        directory = os.path.join(tmp, "checkpoint")
        save_training_checkpoint(
            directory, cfg, models, optimizers, ema, precision, step, meta=meta
        )
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory))


def stop_marker_uri(cfg) -> str:
    """Where rank 0 says why every rank stopped without an error Ray Train would retry
    (``kind``: ``nonfinite`` loss, or a ``setup`` error such as a damaged checkpoint)."""
    from pipelines import storage

    return storage.join(cfg.run.storage_path, cfg.run.name, "stopped.json")


def write_stop_marker(cfg, info: dict) -> None:
    import json

    from pipelines import storage

    opts = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url)
    storage.write_bytes(stop_marker_uri(cfg), json.dumps(info).encode(), opts)
