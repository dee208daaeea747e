"""The Ray Train worker loop of ``clipsr pretrain-clip`` (see :mod:`jobs.pretrain_clip`).

Each worker builds the open_clip model from the config (same seed on every rank, then DDP), reads
its own resumable stream of HR images and captions from the shards, and runs open_clip's loss with
features gathered across ranks. Rank 0 logs to the driver's MLflow run, evaluates (zero-shot
attribute accuracy and retrieval recall on held-out HR images) and writes checkpoints:
``clip.safetensors`` (the model), ``optimizer.safetensors`` and ``state.json`` (step, optimizer
hyper-parameters). A restarted worker resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import torch

log = logging.getLogger("clipsr.pretrain_clip")
WEIGHTS = "clip.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine to zero (open_clip's default schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no decay on gains, biases, embeddings and logit_scale."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        exclude = exclude or "logit_scale" in name or "embedding" in name or "token" in name
        (plain if exclude else decay).append(p)
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def evaluate_clip(model, tokenizer, clip_input, batch: dict, attributes: dict | None) -> dict:
    """Zero-shot attribute accuracy (when the set declares attributes) and retrieval recall."""
    from clipsr.adherence import KIND, ShapeAttributes
    from clipsr.clip_pretrain import retrieval_recall, zero_shot_accuracy

    was_training = model.training
    model.eval()
    try:
        images, captions = batch["hr"], batch["captions"]
        out = {
            f"clip/{k}": v
            for k, v in retrieval_recall(model, tokenizer, clip_input, images, captions).items()
        }
        if attributes and attributes.get("kind") == KIND:
            attrs = ShapeAttributes.from_dict(attributes)
            parsed = [attrs.parse(c) for c in captions]
            keep = [i for i, p in enumerate(parsed) if p is not None]
            if keep:
                acc = zero_shot_accuracy(
                    model, tokenizer, clip_input, attrs, images[keep], [parsed[i] for i in keep]
                )
                out.update({f"clip/zero_shot_{k}": v for k, v in acc.items()})
    finally:
        model.train(was_training)
    return out


def _save(directory: str, model, optimizer, step: int) -> None:
    from safetensors.torch import save_file

    from clipsr.train_state import optimizer_tensors

    os.makedirs(directory, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{directory}/{WEIGHTS}")
    tensors, meta = optimizer_tensors(optimizer)
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{directory}/{OPTIMIZER}")
    with open(f"{directory}/{STATE}", "w") as f:
        json.dump({"step": step, "optimizer": meta}, f)


def _load(directory: str, model, optimizer) -> int:
    from safetensors.torch import load_file

    from clipsr.train_state import load_optimizer

    model.load_state_dict(load_file(f"{directory}/{WEIGHTS}"))
    with open(f"{directory}/{STATE}") as f:
        state = json.load(f)
    load_optimizer(optimizer, load_file(f"{directory}/{OPTIMIZER}"), state["optimizer"])
    return int(state["step"])


def clip_train_loop(config: dict[str, Any]) -> None:
    import open_clip
    import ray.train
    import ray.train.torch

    from clipsr.clip_backbone import create_open_clip
    from clipsr.clip_pretrain import (
        ClipInput,
        clamp_logit_scale,
        clip_loss_step,
        contrastive_loss,
        degrade,
    )
    from clipsr.config_loader import from_dict
    from clipsr.shard_dataset import iter_eval_batches, training_loader
    from jobs.console import quiet_worker_logging
    from jobs.pretrain_clip_config import PretrainClipConfig
    from jobs.train_loop import _open, _rank0_tracker

    quiet_worker_logging()  # Ray Train has just set the worker's root logger to INFO
    cfg = from_dict(PretrainClipConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model, _ = create_open_clip(cfg.clip)
    model.to(device).train()
    plain = model
    tokenizer = open_clip.get_tokenizer(cfg.clip.arch, cache_dir=cfg.clip.cache_dir or None)
    clip_input = ClipInput.of(plain, cfg.clip.image_resize)
    optimizer = torch.optim.AdamW(
        _param_groups(plain, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas
    )
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            step = _load(directory, plain, optimizer)
        if rank == 0:
            log.info("resumed from the checkpoint at step %d", step)
    model = ray.train.torch.prepare_model(model)
    loss_fn = contrastive_loss(rank, world)
    opener = lambda url: _open(url, cfg.data.endpoint_url)  # noqa: E731
    loader = training_loader(
        config["train_urls"],
        [config["scale"]],
        cfg.data,
        cfg.seed,
        rank=rank,
        world_size=world,
        start_batch=step,
        opener=opener,
    )
    tracker = _rank0_tracker(config) if rank == 0 else None
    eval_batch = None
    if rank == 0:
        batches = iter_eval_batches(
            config["val_urls"],
            config["scale"],
            cfg.run.eval_samples,
            limit=cfg.run.eval_samples,
            opener=opener,
        )
        eval_batch = next(batches)
    if step >= cfg.run.steps:
        ray.train.report({"step": step})
        return
    batches = iter(loader)
    window = time.perf_counter()
    while step < cfg.run.steps:
        batch = next(batches)
        images = batch["hr"].to(device)
        if cfg.augment.degrade_prob > 0:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            a = cfg.augment
            images = degrade(images, g, a.degrade_prob, tuple(a.blur_sigma), a.noise)
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * _lr_factor(step, cfg.optim.warmup_steps, cfg.run.steps)
        loss = clip_loss_step(model, tokenizer, clip_input, loss_fn, images, batch["captions"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_logit_scale(plain)
        step += 1
        metrics: dict[str, float] = {}
        if step % cfg.run.log_every == 0 or step == cfg.run.steps:
            per_step = (time.perf_counter() - window) / cfg.run.log_every
            window = time.perf_counter()
            metrics |= {
                "loss/contrastive": float(loss.detach()),
                "clip/logit_scale": float(plain.logit_scale.detach().exp()),
                "perf/steps_per_s": 1 / max(per_step, 1e-9),
            }
            if rank == 0:
                log.debug("step %d/%d  loss %.4f", step, cfg.run.steps, float(loss.detach()))
        if rank == 0 and (step % cfg.run.eval_every == 0 or step == cfg.run.steps):
            metrics |= evaluate_clip(
                plain, tokenizer, clip_input, _to(eval_batch, device), config.get("attributes")
            )
            shown = ", ".join(
                f"{k.removeprefix('clip/')} {v:.0%}"
                for k, v in metrics.items()
                if k.startswith(("clip/zero_shot", "clip/image_to_text"))
            )
            log.info("step %d/%d held-out: %s", step, cfg.run.steps, shown)
        if tracker is not None and metrics:
            tracker.log_metrics(metrics, step)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
            report = {"step": step, **metrics}
            if rank != 0:
                ray.train.report(report)
                continue
            with tempfile.TemporaryDirectory(prefix="clipsr-clip-ckpt-") as tmp:
                _save(tmp, plain, optimizer, step)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _to(batch: dict, device) -> dict:
    return {**batch, "hr": batch["hr"].to(device)}
