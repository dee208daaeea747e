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


def _sha256(uri: str, opts) -> str:
    import hashlib

    from pipelines import storage

    digest = hashlib.sha256()
    with storage.open_read(uri, opts) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shard_files(cfg, urls: list[str], opts) -> None:
    """Every shard the run will read is there (one listing of ``data.shards``)."""
    from clipsr.config_loader import ConfigError
    from pipelines import storage

    try:
        present = set(storage.list_files(cfg.data.shards, opts, suffixes=(".tar",)))
    except FileNotFoundError as err:
        raise ConfigError(f"data.shards: {err}") from None
    missing = [u for u in urls if u not in present]
    if missing:
        raise ConfigError(
            f"data.shards: {len(missing)} shard(s) of its manifest are missing, e.g. "
            f"{missing[0]}; run clipsr preprocess again into {cfg.data.shards}"
        )


def resume_checkpoint(cfg, opts) -> tuple[str, int] | None:
    """(URI, step) of the checkpoint Ray Train will resume ``run.name`` from, after checking
    it: Ray's record of it, its manifest, every part's sha256, and that its model config is the
    one configured now. None for a new run; ConfigError naming what is wrong otherwise."""
    import json

    import ray

    from clipsr.checkpoint import FORMAT_VERSION, MANIFEST
    from clipsr.config_loader import ConfigError, to_dict
    from pipelines import storage

    run_dir = storage.join(cfg.run.storage_path, cfg.run.name)
    snapshot_uri = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        snapshot = json.loads(storage.read_bytes(snapshot_uri, opts))
    except FileNotFoundError:
        return None
    advice = f"delete {run_dir} to start over, or choose another run.name"
    if snapshot.get("ray_version") != ray.__version__:
        raise ConfigError(
            f"run.name={cfg.run.name}: its checkpoints were recorded by Ray "
            f"{snapshot.get('ray_version')}, this is Ray {ray.__version__}; {advice}"
        )
    latest = snapshot.get("latest_checkpoint_result")
    if not latest:
        return None
    uri = storage.join(run_dir, latest["checkpoint_dir_name"])
    try:
        manifest = json.loads(storage.read_bytes(storage.join(uri, MANIFEST), opts))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"checkpoint format {manifest.get('format_version')!r}")
        for part, entry in sorted(manifest["parts"].items()):
            if _sha256(storage.join(uri, entry["file"]), opts) != entry["sha256"]:
                raise ValueError(f"{entry['file']} ({part}) does not match its sha256")
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise ConfigError(
            f"run.name={cfg.run.name}: the checkpoint to resume from, {uri}, is damaged "
            f"({err}); {advice}"
        ) from None
    saved = _flat(_model_section(storage.read_text(storage.join(uri, "config.yaml"), opts)))
    now = _flat(to_dict(cfg)["model"])
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"model.{changed[0]}: differs from the checkpoint that run.name={cfg.run.name} "
            f"resumes ({uri}); keep the model settings of a run, or {advice}"
        )
    return uri, int(manifest["training_state"]["step"])


LOCATIONS = ("clip.checkpoint", "clip.cache_dir")  # where weights are, not what they are


def _model_section(config_yaml: str) -> dict:
    import yaml

    return (yaml.safe_load(config_yaml) or {}).get("model", {})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        elif f"{prefix}{key}" not in LOCATIONS:
            out[f"{prefix}{key}"] = value
    return out


def check_before_fit(cfg, urls: list[str], opts) -> tuple[str, int] | None:
    """Everything the driver can check that a worker would otherwise fail on, after Ray Train
    retried it ``run.max_failures`` times: the CLIP weights, the shard files, the checkpoint to
    resume from. (The shard manifest and the VGG file: ``jobs.train.check_inputs``.)"""
    from clipsr.clip_backbone import ClipWeightsError, check_clip_weights
    from clipsr.config_loader import ConfigError

    try:
        check_clip_weights(cfg.model.clip)
    except ClipWeightsError as err:
        raise ConfigError(str(err)) from None
    check_shard_files(cfg, urls, opts)
    return resume_checkpoint(cfg, opts)
