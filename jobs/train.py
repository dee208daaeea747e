"""``clipsr train CONFIG [a.b=value ...]``: GAN training on Ray Train, tracked in MLflow.

Also ``python -m jobs.train`` (e.g. under ``ray job submit``). Everything that can be wrong is
checked before Ray starts: the shards (manifest, format version, the requested scale), the
tracking server, the loss weights files. A rerun with the same ``run.name`` resumes from the
latest checkpoint, in the same MLflow run. At the end the EMA generator is logged as an MLflow
pyfunc model (safetensors + config, models-from-code) and registered as a new model version.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

log = logging.getLogger("clipsr.train")


@dataclass
class TrainResult:
    run_id: str | None
    checkpoint: str | None
    metrics: dict
    model_uri: str | None
    model_version: str | None


class TrainingFailed(RuntimeError):
    """The run stopped: non-finite losses, or worker failures beyond run.max_failures."""


def _absolute(path: str) -> str:
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def absolute_local_paths(cfg) -> None:
    """Resolve the config's local paths against the driver's working directory, in place.

    Ray Train runs each worker in the run's own working directory, so a relative path
    (``data.shards: runs/shards/bundled``) would name a different place there."""
    cfg.data.shards = _absolute(cfg.data.shards)
    cfg.run.storage_path = _absolute(cfg.run.storage_path)  # rank 0 writes the NaN marker there
    clip = cfg.model.clip
    clip.checkpoint = _absolute(clip.checkpoint)
    clip.cache_dir = _absolute(clip.cache_dir)
    if clip.arch.startswith("local-dir:"):
        clip.arch = "local-dir:" + _absolute(clip.arch.removeprefix("local-dir:"))
    if cfg.loss.vgg16_weights != "random":
        cfg.loss.vgg16_weights = _absolute(cfg.loss.vgg16_weights)
    cfg.metrics.lpips_backbone_weights = _absolute(cfg.metrics.lpips_backbone_weights)
    cfg.metrics.lpips_linear_weights = _absolute(cfg.metrics.lpips_linear_weights)


def check_inputs(cfg) -> tuple[dict, list[str], list[str], str]:
    """Fail fast, before Ray: shards, scales, format version, perceptual weights."""
    from clipsr.config_loader import ConfigError
    from clipsr.losses import check_perceptual_config
    from clipsr.shard_dataset import (
        check_scales,
        manifest_sha256,
        read_dataset_manifest,
        shard_urls,
    )
    from pipelines import storage

    opts = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url)
    manifest = read_dataset_manifest(
        cfg.data.shards, read_bytes=functools.partial(storage.read_bytes, opts=opts)
    )
    check_scales(manifest, cfg.scales)
    if manifest.get("hr_size") != cfg.model.hr_size:
        raise ConfigError(
            f"data.shards: HR size {manifest.get('hr_size')} in {cfg.data.shards}, but "
            f"model.hr_size is {cfg.model.hr_size}"
        )
    train = shard_urls(cfg.data.shards, cfg.data.train_split, manifest)
    val = shard_urls(cfg.data.shards, cfg.data.val_split, manifest)
    check_perceptual_config(cfg.loss)
    return manifest, train, val, manifest_sha256(manifest)


def run_train(cfg) -> TrainResult:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipsr.config_loader import flatten, to_dict
    from jobs.ray_setup import train_runtime_env
    from jobs.run_state import honest_end
    from jobs.tracking import (
        RunTracker,
        check_tracking_uri,
        log_generator_model,
        resolve_tracking_uri,
    )
    from jobs.train_backend import NodeBoundTorchConfig
    from jobs.train_checks import check_before_fit, check_cluster
    from jobs.train_loop import stop_marker_uri, train_loop_per_worker
    from pipelines import storage
    from pipelines.preprocess import code_version
    from pipelines.ray_cluster import init_ray
    from pipelines.storage import StorageOptions

    cfg.validate()
    absolute_local_paths(cfg)
    # the workers get this endpoint, not their own node's environment
    cfg.data.endpoint_url = storage.resolve_endpoint(cfg.data.endpoint_url)
    manifest, train_urls, val_urls, manifest_sha = check_inputs(cfg)
    opts = StorageOptions(endpoint_url=cfg.data.endpoint_url)
    resume = check_before_fit(cfg, train_urls + val_urls, opts)  # nothing a retry cannot fix
    if resume is not None:
        log.info("run %s resumes from step %d (%s)", cfg.run.name, resume[1], resume[0])
    storage_path, filesystem = storage.ray_storage(cfg.run.storage_path, opts)
    run_dir = (
        Path(storage_path) / cfg.run.name if filesystem is None else Path("runs") / cfg.run.name
    )
    tracking = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    check_tracking_uri(tracking)  # a dead server fails before Ray starts
    init_ray(
        cfg.run.ray_address,
        log_to_driver=True,
        runtime_env=train_runtime_env(
            {"OMP_NUM_THREADS": str(max(1, int(cfg.run.cpus_per_worker)))}
        ),
    )
    check_cluster(ray, cfg, tracking or f"sqlite:///{run_dir / 'mlflow.db'}")  # before any work
    tracking_uri, artifact_location = resolve_tracking_uri(cfg.tracking.tracking_uri, run_dir)
    config_hash = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()
    tags = {
        "dataset_manifest_sha256": manifest_sha,
        "code_version": code_version(),
        "config_sha256": config_hash[:16],
        "scales": ",".join(map(str, cfg.scales)),
    }
    tracker = RunTracker(tracking_uri)
    run_id = tracker.start(
        cfg.tracking.experiment,
        cfg.run.name,
        flatten(cfg),
        artifact_location,
        tags=tags,
        system_metrics=cfg.tracking.system_metrics,
    )
    tracker.log_dict(manifest, "dataset/manifest.json")
    tracker.log_dict(to_dict(cfg), "config/resolved_config.json")
    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = cfg.run.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "train_urls": train_urls,
            "val_urls": val_urls,
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "manifest_sha256": manifest_sha,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker=resources,
        ),
        torch_config=NodeBoundTorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        ),
    )
    storage.delete(stop_marker_uri(cfg), opts)
    with honest_end(tracker):  # FINISHED, FAILED with the reason, or KILLED
        try:
            result = trainer.fit()
        except Exception as err:
            raise TrainingFailed(f"training failed: {err}") from err
        metrics = dict(result.metrics or {})
        checkpoint = result.checkpoint
        where = "none"
        if checkpoint is not None:  # pyarrow's paths have no scheme: give users the URI
            where = storage.to_uri(cfg.run.storage_path, checkpoint.path)
        if storage.exists(stop_marker_uri(cfg), opts):
            raise TrainingFailed(
                _stopped(json.loads(storage.read_bytes(stop_marker_uri(cfg), opts)), where)
            )
        model_uri = version = None
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                model_uri, version = log_generator_model(
                    directory, cfg.tracking.registered_model or None, tags
                )
    return TrainResult(run_id, where, metrics, model_uri, version)


def _stopped(info: dict, where: str) -> str:
    """The message of a run its workers stopped (see jobs.train_loop.stop_marker_uri)."""
    if info.get("kind") == "setup":
        return f"the workers could not start (not retried): {info['error']}"
    return (
        f"non-finite loss at step {info['step']} ({info['error']}); "
        f"the last good checkpoint is {where}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipsr train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config (e.g. configs/train/tiny-x4.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=200")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clipsr.config_loader import ConfigError
    from jobs.run_state import Interrupted
    from jobs.tracking import TrackingUnavailable
    from jobs.train_config import load_train_config

    try:
        cfg = load_train_config(args.config, args.overrides)
        result = run_train(cfg)
    except (ConfigError, ValueError, FileNotFoundError, TrackingUnavailable) as err:
        print(f"clipsr train: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"clipsr train: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:  # Ctrl-C or SIGTERM: the MLflow run ends KILLED
        print(f"clipsr train: {err}; the run ends KILLED", file=sys.stderr)
        return 130
    shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
    print(f"\ntrain done: run {result.run_id}; checkpoint {result.checkpoint}")
    print(f"  final metrics: {shown}")
    if result.model_uri:
        print(f"  model: {result.model_uri} (registered version {result.model_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
