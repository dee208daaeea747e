"""``clipsr pretrain-clip CONFIG [a.b=value ...]``: a domain CLIP, trained on a shard set.

Also ``python -m jobs.pretrain_clip``. Contrastive training (open_clip's loss) of an open_clip
model on the HR images and captions of a ``clipsr preprocess`` shard set, on Ray Train (DDP, one
process per worker, resumable by ``run.name``), tracked in MLflow. The result is a
``.safetensors`` file that ``model.clip.checkpoint`` accepts (``clipsr train``, the demo); it is
logged to the run and registered as a version of ``tracking.registered_model``. Its own metrics,
on held-out HR images: zero-shot attribute accuracy (shape, colour, background; for sets whose
manifest declares attributes) and image<->text retrieval recall.

Why: a general CLIP serves medical, satellite or product images poorly, and where no pretrained
weights can be downloaded a random CLIP makes CLIP-SR's CLIP-similarity loss, its CLIP
discriminator and its text embeddings meaningless.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

log = logging.getLogger("clipsr.pretrain_clip")


@dataclass
class PretrainClipResult:
    run_id: str | None
    output: str
    metrics: dict
    registered: str | None  # models:/NAME/VERSION


def _inputs(cfg):
    """Manifest, train/val shard URLs and a scale every sample has (the stream decodes one)."""
    import functools

    from clipsr.shard_dataset import manifest_sha256, read_dataset_manifest, shard_urls
    from pipelines import storage

    opts = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url)
    read = functools.partial(storage.read_bytes, opts=opts)
    manifest = read_dataset_manifest(cfg.data.shards, read_bytes=read)
    train = shard_urls(cfg.data.shards, cfg.data.train_split, manifest)
    val = shard_urls(cfg.data.shards, cfg.data.val_split, manifest)
    scales = manifest.get("scales") or []
    if not scales:
        raise ValueError(f"data.shards: {cfg.data.shards} lists no scales in its manifest")
    return manifest, train, val, int(min(scales)), manifest_sha256(manifest)


def _register(tracker, cfg, output: Path, tags: dict, metrics: dict) -> str | None:
    """Log the weights to the run and register them as a new version (plain artifacts: fetch
    them with ``mlflow.artifacts.download_artifacts("models:/NAME/VERSION")``)."""
    name = cfg.tracking.registered_model
    tracker.log_artifact(output, "clip")
    if not name:
        return None
    client = tracker.client
    from mlflow.exceptions import MlflowException

    described = (
        f"Domain CLIP ({cfg.clip.arch}) trained contrastively by clipsr pretrain-clip; use the "
        "file as model.clip.checkpoint."
    )
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=described)
    source = client.get_run(tracker.run_id).info.artifact_uri.rstrip("/") + "/clip"
    shown = ", ".join(f"{k.removeprefix('clip/')} {v:.3f}" for k, v in sorted(metrics.items()))
    version = client.create_model_version(
        name,
        source=source,
        run_id=tracker.run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=f"{cfg.clip.arch} after {cfg.run.steps} steps; held-out: {shown}",
    )
    return f"models:/{name}/{version.version}"


def run_pretrain_clip(cfg) -> PretrainClipResult:
    import json

    from clipsr.config_loader import flatten, to_dict
    from jobs.pretrain_clip_loop import WEIGHTS, clip_train_loop
    from jobs.ray_setup import train_runtime_env
    from jobs.run_state import honest_end
    from jobs.tracking import RunTracker, check_tracking_uri, resolve_tracking_uri
    from jobs.train import _absolute
    from jobs.train_backend import make_trainer
    from pipelines import storage
    from pipelines.ray_cluster import init_ray

    cfg.validate()
    cfg.data.shards = _absolute(cfg.data.shards)
    cfg.run.storage_path = _absolute(cfg.run.storage_path)
    cfg.clip.checkpoint = _absolute(cfg.clip.checkpoint)
    cfg.clip.cache_dir = _absolute(cfg.clip.cache_dir)
    # the workers get this endpoint, not their own node's environment
    cfg.data.endpoint_url = storage.resolve_endpoint(cfg.data.endpoint_url)
    manifest, train_urls, val_urls, scale, manifest_sha = _inputs(cfg)
    opts = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url)
    storage_path, filesystem = storage.ray_storage(cfg.run.storage_path, opts)
    root = Path(storage_path) if filesystem is None else Path("runs")
    output = (
        Path(cfg.output).expanduser().resolve() if cfg.output else root / cfg.run.name / WEIGHTS
    )
    # the storage root's shared embedded store, as clipsr train uses (unless a URI is set)
    tracking_uri, artifact_location = resolve_tracking_uri(cfg.tracking.tracking_uri, root)
    check_tracking_uri(tracking_uri)
    tags = {"dataset_manifest_sha256": manifest_sha, "clip_arch": cfg.clip.arch}
    tracker = RunTracker(tracking_uri)
    run_id = tracker.start(
        cfg.tracking.experiment,
        cfg.run.name,
        flatten(cfg),
        artifact_location,
        tags=tags,
        system_metrics=cfg.tracking.system_metrics,
    )
    init_ray(
        cfg.run.ray_address,
        log_to_driver=True,
        runtime_env=train_runtime_env(
            {"OMP_NUM_THREADS": str(max(1, int(cfg.run.cpus_per_worker)))}
        ),
    )
    trainer = make_trainer(
        clip_train_loop,
        {
            "cfg": to_dict(cfg),
            "train_urls": train_urls,
            "val_urls": val_urls,
            "scale": scale,
            "attributes": manifest.get("attributes"),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
        },
        cfg.run,
        storage_path,
        filesystem,
        num_to_keep=2,
    )
    with honest_end(tracker):  # FINISHED, FAILED with the reason, or KILLED
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("training ended without a checkpoint")
        output.parent.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as directory:
            shutil.copyfile(Path(directory) / WEIGHTS, output)
        metrics = {
            k: float(v)
            for k, v in (result.metrics or {}).items()
            if k.startswith("clip/") and isinstance(v, (int, float))
        }
        (output.parent / (output.stem + ".json")).write_text(
            json.dumps({"arch": cfg.clip.arch, "steps": cfg.run.steps, "metrics": metrics})
        )
        registered = _register(tracker, cfg, output, tags, metrics)
    return PretrainClipResult(run_id, str(output), metrics, registered)


PROG = "clipsr pretrain-clip"


def build_parser():
    from jobs import console

    parser = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config (e.g. configs/pretrain_clip/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=200")
    return parser


def main(argv: list[str] | None = None) -> int:
    from jobs import console

    return console.command(PROG)(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs import console
    from jobs.pretrain_clip_config import load_pretrain_clip_config
    from jobs.tracking import TrackingUnavailable

    cfg = load_pretrain_clip_config(args.config, args.overrides)
    try:
        result = run_pretrain_clip(cfg)
    except TrackingUnavailable as err:
        return console.fail(PROG, err, 2)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.metrics.items()))
    print(f"pretrain-clip done: {result.output}")
    print(f"  held-out: {shown}")
    print(f"  use it:   model.clip.checkpoint={result.output}")
    if result.registered:
        print(f"  registered: {result.registered} (run {result.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
