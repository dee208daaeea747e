"""What ``clipsr train`` checks on the driver before Ray Train starts a worker."""

from __future__ import annotations

from typing import Any

from pipelines.cluster_guard import check_cluster_paths


def worker_paths(cfg) -> tuple[dict[str, str], dict[str, str]]:
    """(reads, writes): the paths the training workers read and write, by config key."""
    clip, loss, metrics = cfg.model.clip, cfg.loss, cfg.metrics
    reads = {
        "data.shards": cfg.data.shards,
        "model.clip.checkpoint": clip.checkpoint,
        "model.clip.cache_dir": clip.cache_dir,
        "loss.vgg16_weights": "" if loss.vgg16_weights == "random" else loss.vgg16_weights,
        "metrics.lpips_backbone_weights": metrics.lpips_backbone_weights,
        "metrics.lpips_linear_weights": metrics.lpips_linear_weights,
    }
    if clip.arch.startswith("local-dir:"):
        reads["model.clip.arch"] = clip.arch.removeprefix("local-dir:")
    return reads, {"run.storage_path": cfg.run.storage_path}


def check_cluster(ray: Any, cfg, tracking_uri: str) -> int:
    """Refuse local paths and a local MLflow store on a multi-node cluster (unless
    ``run.shared_filesystem``); returns the number of alive nodes."""
    reads, writes = worker_paths(cfg)
    switch = "run.shared_filesystem"
    return check_cluster_paths(
        ray, switch, cfg.run.shared_filesystem, reads, writes, tracking_uri=tracking_uri
    )
