"""``clipsr train CONFIG [a.b=value ...]``: GAN training on Ray Train, tracked in MLflow.

Also ``python -m jobs.train`` (e.g. under ``ray job submit``). Everything that can be wrong is
checked before Ray starts: the shards (manifest, format version, the requested scale), the
tracking server, the loss weights files. A rerun with the same ``run.name`` resumes from the
latest checkpoint, in the same MLflow run, which ends FINISHED, FAILED (with the reason) or
KILLED (Ctrl-C, SIGTERM, a dead driver). At the end the inference checkpoint (EMA generator,
CLIP, config, checksums) is logged as an MLflow pyfunc model (models-from-code) and registered
as a new model version; the full training checkpoint stays in the run storage, linked from the
run (tag ``clipsr.training_checkpoint``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from jobs import console

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

log = logging.getLogger("clipsr.train")
PROG = "clipsr train"


@dataclass
class TrainResult:
    run_id: str | None
    checkpoint: str | None
    metrics: dict
    model_uri: str | None  # models:/NAME/VERSION when registered, else the logged model's URI
    model_version: str | None
    tracking_uri: str = ""
    experiment_id: str = ""


class TrainingFailed(RuntimeError):
    """The run stopped: non-finite losses, or worker failures beyond run.max_failures."""


def _absolute(path: str) -> str:
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def absolute_local_paths(cfg) -> None:
    """Resolve the config's local paths against the driver's working directory, in place.

    Ray Train runs each worker in the run's own working directory, so a relative path
    (``data.shards: runs/shards/my-data``) would name a different place there."""
    cfg.data.shards = _absolute(cfg.data.shards)
    cfg.run.storage_path = _absolute(cfg.run.storage_path)  # rank 0 writes the NaN marker there
    cfg.run.init_from = _absolute(cfg.run.init_from)
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
    if cfg.run.init_from:
        from clipsr.initial_weights import check_init_checkpoint

        check_init_checkpoint(cfg.run.init_from, cfg)
    return manifest, train, val, manifest_sha256(manifest)


def run_train(cfg) -> TrainResult:
    import ray

    from clipsr.config_loader import flatten, to_dict
    from jobs.mlflow_record import describe_version, set_descriptions, shard_set_input
    from jobs.ray_setup import train_runtime_env
    from jobs.run_state import honest_end
    from jobs.tracking import RunTracker, check_tracking_uri, resolve_tracking_uri
    from jobs.train_backend import make_trainer
    from jobs.train_checks import check_before_fit, check_cluster
    from jobs.train_export import register_inference_model
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
    storage_path, filesystem = storage.ray_storage(cfg.run.storage_path, opts)
    # one embedded store per storage root, shared by every run under it (evaluate, promote and
    # upscale find ./runs/mlflow.db, the default root's, without flags)
    root = Path(storage_path) if filesystem is None else Path("runs")
    tracking = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    check_tracking_uri(tracking)  # a dead server fails before Ray starts
    resume = check_before_fit(cfg, train_urls + val_urls, opts)  # nothing a retry cannot fix
    if resume is not None:
        log.info("run %s resumes from step %d (%s)", cfg.run.name, resume[1], resume[0])
    if not cfg.model.clip.has_weights:  # once, here: the workers' copies are not shown
        import warnings

        from clipsr.clip_backbone import RandomClipWeightsWarning, random_clip_message

        warnings.warn(random_clip_message(cfg.model.clip), RandomClipWeightsWarning, 2)
    init_ray(
        cfg.run.ray_address,
        log_to_driver=True,
        runtime_env=train_runtime_env(
            {"OMP_NUM_THREADS": str(max(1, int(cfg.run.cpus_per_worker)))}
        ),
    )
    check_cluster(ray, cfg, tracking or f"sqlite:///{root / 'mlflow.db'}")  # before any work
    tracking_uri, artifact_location = resolve_tracking_uri(cfg.tracking.tracking_uri, root)
    config_hash = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()
    clip_weights = configured_clip_weights(cfg.model.clip)
    tags = {
        "dataset_manifest_sha256": manifest_sha,
        "code_version": code_version(),
        "config_sha256": config_hash[:16],
        "scales": ",".join(map(str, cfg.model.all_scales)),  # the scales the model serves
        "clipsr.clip_weights": clip_weights,
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
    tracker.client.log_inputs(
        run_id,
        datasets=[
            shard_set_input(
                cfg.data.shards, cfg.data.train_split, manifest, manifest_sha, "training"
            ),
            shard_set_input(
                cfg.data.shards, cfg.data.val_split, manifest, manifest_sha, "validation"
            ),
        ],
    )
    tracker.log_dict(manifest, "dataset/manifest.json")
    tracker.log_dict(to_dict(cfg), "config/resolved_config.json")
    trainer = make_trainer(
        train_loop_per_worker,
        {
            "cfg": to_dict(cfg),
            "train_urls": train_urls,
            "val_urls": val_urls,
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "manifest_sha256": manifest_sha,
        },
        cfg.run,
        storage_path,
        filesystem,
        cfg.run.num_to_keep,
    )
    storage.delete(stop_marker_uri(cfg), opts)
    with honest_end(tracker):  # FINISHED, FAILED with the reason, or KILLED
        try:
            result = trainer.fit()
        except Exception as err:
            raise TrainingFailed(f"training failed: {failure_reason(err)}") from err
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
            chatter = ("Successfully registered model", "Created version")  # the summary says it
            with console.without_lines(*chatter):  # only the inference files are fetched
                model_uri, version = register_inference_model(
                    where, opts, tracker, cfg.tracking.registered_model or None, tags
                )
        if version is not None:
            name = cfg.tracking.registered_model
            model_uri = f"models:/{name}/{version}"
            steps = int(metrics.get("step", cfg.run.steps))
            text = describe_version(
                cfg.model.scale, cfg.run.name, steps, cfg.data.shards, manifest_sha, clip_weights,
                cfg.model.all_scales,
            )  # fmt: skip
            set_descriptions(tracker.client, name, version, text)
        experiment_id = tracker.client.get_run(run_id).info.experiment_id
    return TrainResult(run_id, where, metrics, model_uri, version, tracking_uri, experiment_id)


def _stopped(info: dict, where: str) -> str:
    """The message of a run its workers stopped (see jobs.train_loop.stop_marker_uri)."""
    if info.get("kind") == "setup":
        return f"the workers could not start (not retried): {info['error']}"
    return (
        f"non-finite loss at step {info['step']} ({info['error']}); "
        f"the last good checkpoint is {where}"
    )


def configured_clip_weights(clip) -> str:
    """The CLIP weights a training config makes its model run on, in words."""
    from clipsr.clip_backbone import describe_clip_weights

    if not clip.has_weights:
        return describe_clip_weights(clip, "random")
    return describe_clip_weights(clip, clip.checkpoint or clip.pretrained or clip.arch)


def failure_reason(err: BaseException) -> str:
    """One line for a failed ``fit()``: each failed worker's own error (its last line: what was
    raised, not the traceback around it), else the error's own last line."""
    failures = getattr(err, "worker_failures", None) or {}
    reasons = []
    for _, failure in sorted(failures.items()):
        cause = failure
        while getattr(cause, "cause", None) is not None:  # RayTaskError wraps the worker's
            cause = cause.cause
        text = str(cause)
        lines = [line for line in text.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(cause).__name__
        if lines and "Traceback" not in text:  # a plain exception: its type says what it is
            reason = f"{type(cause).__name__}: {reason}"
        if reason not in reasons:
            reasons.append(reason)
    if not reasons:
        lines = [line for line in str(err).splitlines() if line.strip()]
        reasons = [lines[-1].strip() if lines else type(err).__name__]
    return "; ".join(reasons)


def format_result(result: TrainResult) -> str:
    """Where the results are: the store, the run, the model URI the other commands take."""
    from jobs.tracking import run_link

    shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
    lines = [
        f"train done: final metrics {shown}",
        f"  checkpoint: {result.checkpoint}",
        f"  tracking:   {result.tracking_uri}",
        f"  run:        {run_link(result.tracking_uri, result.experiment_id, result.run_id)}",
    ]
    if result.model_version:
        lines.append(f"  model:      {result.model_uri}")
        lines.append(
            f"  next:       clipsr evaluate --model {result.model_uri} --shards TEST_SHARDS"
            + _uri_flag(result.tracking_uri)
        )
    elif result.model_uri:
        lines.append(f"  model:      {result.model_uri} (not registered)")
    return "\n".join(lines)


def _uri_flag(tracking_uri: str) -> str:
    from jobs.tracking import default_tracking_uri

    return "" if default_tracking_uri() == tracking_uri else f" --tracking-uri {tracking_uri}"


def build_parser() -> console.Parser:
    parser = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config (e.g. configs/train/tiny-x4.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=200")
    return parser


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs.run_state import Interrupted
    from jobs.tracking import TrackingUnavailable
    from jobs.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    try:
        result = run_train(cfg)
    except TrackingUnavailable as err:
        return console.fail(PROG, err, 2)
    except TrainingFailed as err:
        return console.fail(PROG, err, 1)
    except Interrupted as err:  # Ctrl-C or SIGTERM: the MLflow run ended KILLED
        return console.fail(PROG, f"{err}; the run ends KILLED", 130)
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
