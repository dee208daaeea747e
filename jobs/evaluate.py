"""clipsr evaluate: a model on test shards: PSNR/SSIM (RGB and Y), LPIPS and CLIP-score next to
bicubic, and the caption ablation (true, mismatched, empty caption), into evaluation.json, an
HTML report and an MLflow evaluation run linked to the model version.

    clipsr evaluate --model models:/clipsr-x4@champion --shards s3://bucket/shards/coco --out ev/
    clipsr evaluate --config configs/evaluate/default.yaml model=runs/x/checkpoint shards=DIR

``--flag VALUE`` and ``key=value`` set the same fields (jobs/evaluate_config.py); flags win.
The JSON is byte-for-byte repeatable (no timestamps, run ids or temp paths; floats rounded), in
local and in Ray mode alike. The MLflow contract is jobs/evaluation_record.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsr.config_loader import ConfigError, flatten, to_dict
from jobs.evaluate_config import EvaluateConfig, load_evaluate_config
from jobs.evaluation_record import (
    KIND,
    METRIC_NAMES,
    TAG_KIND,
    TAG_MANIFEST,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_MODEL_VERSION,
    TAG_RESULT_SHA,
    TAG_SPLIT,
    VERSION_TAG_MANIFEST,
    VERSION_TAG_RUN,
    metric_key,
)

JSON_NAME = "evaluation.json"
FORMAT = 1
ARTIFACT_DIR = "evaluation"


@dataclass
class EvaluateResult:
    json_path: Path
    report_path: Path
    run_id: str | None  # None: evaluated without MLflow (a local checkpoint, no tracking URI)
    metrics: dict[str, float]  # keyed x{scale}/{name} (jobs.evaluation_record.metric_key)
    model_name: str | None
    model_version: str | None
    manifest_sha256: str
    samples: int = 0
    mode: str = "local"


def resolve_registered(model_uri: str, tracking_uri: str) -> tuple[str | None, str | None]:
    """(name, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI (checked to
    exist); (None, None) for other URIs. Raises ModelNotFound."""
    from jobs.tracking import ModelNotFound

    if not model_uri.startswith("models:/"):
        return None, None
    import mlflow
    from mlflow.exceptions import MlflowException

    path = model_uri.removeprefix("models:/").strip("/")
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in path:
            name, alias = path.rsplit("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, ref = path.partition("/")
        if ref.isdigit():
            return name, str(client.get_model_version(name, ref).version)
        if ref == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if versions:
                return name, str(max(int(v.version) for v in versions))
    except MlflowException as err:
        msg = f"cannot find model {model_uri} at {tracking_uri}: {err.message}"
        raise ModelNotFound(msg) from None
    raise ModelNotFound(
        f"{model_uri}: name a version or an alias (models:/NAME/VERSION, models:/NAME@ALIAS)"
    )


def _shards(cfg: EvaluateConfig, scale: int) -> tuple[dict, list[tuple[str, int]]]:
    """The shard set's manifest (checked to have ``scale``) and the split's (url, samples)."""
    from clipsr.shard_dataset import check_scales, read_dataset_manifest, shard_urls
    from pipelines import storage

    opts = storage.StorageOptions(endpoint_url=cfg.endpoint_url)
    read = functools.partial(storage.read_bytes, opts=opts)
    manifest = read_dataset_manifest(cfg.shards, read_bytes=read)
    try:
        check_scales(manifest, [scale])
    except ValueError as err:
        raise ValueError(f"{cfg.shards}: the model {cfg.model} is {scale}x, but {err}") from None
    urls = shard_urls(cfg.shards, cfg.split, manifest)
    entries = [s for s in manifest["shards"] if s["split"] == cfg.split and s.get("samples", 1) > 0]
    if any("samples" not in s for s in entries):
        raise ValueError(f"{cfg.shards}: manifest.json lacks per-shard sample counts")
    return manifest, [(u, int(s["samples"])) for u, s in zip(urls, entries, strict=True)]


def _lpips_paths(cfg: EvaluateConfig, model_cfg: Any) -> tuple[str, str]:
    if not cfg.lpips:
        return "", ""
    if cfg.lpips_backbone_weights:
        return cfg.lpips_backbone_weights, cfg.lpips_linear_weights
    paths = (model_cfg.metrics.lpips_backbone_weights, model_cfg.metrics.lpips_linear_weights)
    if not all(paths):
        return "", ""
    for key, path in zip(("backbone", "linear"), paths, strict=True):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"the model's metrics.lpips_{key}_weights {path} does not exist here: set "
                f"lpips_{key}_weights=FILE (both LPIPS files) or lpips=false"
            )
    return paths


def _device(cfg: EvaluateConfig) -> str:
    import torch

    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check_cluster(cfg: EvaluateConfig, model_uri: str, backbone: str, linear: str) -> None:
    """Multi-node guardrails (pipelines/cluster_guard.py) for what the actors read."""
    from pipelines.cluster_guard import check_cluster_paths, local_path
    from pipelines.ray_cluster import init_ray

    reads = {"shards": cfg.shards, "model": local_path(model_uri)}
    reads |= {"lpips_backbone_weights": backbone, "lpips_linear_weights": linear}
    ray = init_ray(cfg.ray_address, log_to_driver=False)
    check_cluster_paths(ray, "shared_filesystem", cfg.shared_filesystem, reads, {})


def _evaluate(cfg: EvaluateConfig, units: list, spec: Any, resolver: Any, mode: str) -> list:
    """Rows of every sample, computed here or on Ray."""
    from clipsr.evaluation import mismatched_captions, read_captions

    if mode == "ray":
        from pipelines.batch_evaluate import evaluate_ray, read_captions_ray

        captions = read_captions_ray(units, cfg.endpoint_url, cfg.ray_address)
        wrong = mismatched_captions(captions)
        return evaluate_ray(units, wrong, spec, cfg.num_actors, cfg.ray_address)
    import torch

    from pipelines.batch_evaluate import UnitEvaluator, opener_for

    opener = opener_for(cfg.endpoint_url)
    captions = [c for u in units for _, c in read_captions(u, opener)]
    wrong = mismatched_captions(captions)
    threads = torch.get_num_threads()
    try:
        evaluator = UnitEvaluator(spec, resolver)  # sets spec.threads
        return [r for u in units for r in evaluator.run(u, wrong[u.start : u.start + u.count])]
    finally:
        torch.set_num_threads(threads)


def build_document(
    model: dict, manifest_sha: str, split: str, settings: dict, rows: list[dict]
) -> dict:
    """The content of evaluation.json: ``model`` (uri, name, version, scale), the shard set,
    settings, the means per scale (``metrics["x4"]``) and the rounded rows (``per_sample``)."""
    from clipsr.evaluation import aggregate, rounded_row

    by_name = aggregate(rows)
    unknown = set(by_name) - set(METRIC_NAMES)
    if unknown:
        raise RuntimeError(f"metric names outside the evaluation record: {sorted(unknown)}")
    scale = f"x{model['scale']}"
    return {
        "format": FORMAT,
        "model": model,
        "manifest_sha256": manifest_sha,
        "split": split,
        "samples": len(rows),
        "settings": settings,
        "metrics": {scale: by_name},
        "per_sample": {scale: [rounded_row(r) for r in rows]},
    }


def _write_outputs(out: Path, doc: dict, rows: list[dict], scale: int) -> tuple[Path, Path]:
    from jobs.eval_report import IMAGES_DIR, write_report

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)  # no stale grids of an earlier run
    json_path = out / JSON_NAME
    json_path.write_bytes((json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    grid = {scale: [r for r in rows if "images" in r]}
    return json_path, write_report(out, doc, grid)


def _start_run(client: Any, cfg: EvaluateConfig, tracking_uri: str, tags: dict) -> str:
    from jobs.tracking import resolve_tracking_uri

    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = resolve_tracking_uri(tracking_uri, cfg.out)[1]
        exp_id = client.create_experiment(cfg.experiment, location)
    else:
        exp_id = exp.experiment_id
    name = tags.get(TAG_MODEL_NAME)
    label = f"{name}-v{tags[TAG_MODEL_VERSION]}" if name else Path(cfg.model).name or "model"
    run = client.create_run(exp_id, tags=tags, run_name=f"eval-{label}-{cfg.split}")
    return run.info.run_id


def _log_run(
    client: Any, run_id: str, cfg: EvaluateConfig, metrics: dict, out: Path, manifest: dict
) -> None:
    from mlflow.entities import Metric, Param

    params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(to_dict(cfg)).items())]
    client.log_batch(run_id, params=params)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_dict(run_id, manifest, "dataset/manifest.json")
    for name in (JSON_NAME, "report.html"):
        client.log_artifact(run_id, str(out / name), ARTIFACT_DIR)
    if (out / "images").is_dir():
        client.log_artifacts(run_id, str(out / "images"), f"{ARTIFACT_DIR}/images")


def run_evaluate(cfg: EvaluateConfig, log=print) -> EvaluateResult:
    """Evaluate ``cfg.model`` on ``cfg.shards``; see the module docstring."""
    from clipsr.evaluation import Unit, iter_rows_in_order, plan_units
    from clipsr.shard_dataset import manifest_sha256
    from jobs.tracking import check_tracking_uri, load_resolver
    from pipelines.batch_evaluate import WorkerSpec
    from pipelines.storage import resolve_endpoint

    cfg.endpoint_url = resolve_endpoint(cfg.endpoint_url)  # what the actors get
    tracking_uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    name, version = resolve_registered(cfg.model, tracking_uri) if tracking_uri else (None, None)
    load_uri = f"models:/{name}/{version}" if name else cfg.model  # the alias cannot move now
    device = _device(cfg)
    resolver = load_resolver(load_uri, device, tracking_uri=tracking_uri or None)
    scale = resolver.scale
    manifest, shards = _shards(cfg, scale)
    units: list[Unit] = plan_units(shards, cfg.limit)
    samples = sum(u.count for u in units)
    if samples == 0:
        raise ValueError(f"{cfg.shards}: split {cfg.split!r} has no samples")
    crop = resolver.cfg.metrics.crop_border if cfg.crop_border is None else cfg.crop_border
    backbone, linear = _lpips_paths(cfg, resolver.cfg)
    mode = cfg.mode if cfg.mode != "auto" else ("ray" if samples > cfg.ray_threshold else "local")
    spec = WorkerSpec(
        load_uri, tracking_uri, device, cfg.threads, cfg.batch_size, crop, cfg.grid_rows,
        backbone, linear, cfg.endpoint_url,
    )  # fmt: skip
    sha = manifest_sha256(manifest)
    if mode == "ray":
        _check_cluster(cfg, load_uri, backbone, linear)

    client, run_id = None, None
    if tracking_uri:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
        tags = {TAG_KIND: KIND, TAG_MODEL_URI: cfg.model, TAG_MANIFEST: sha, TAG_SPLIT: cfg.split}
        if name:
            tags |= {TAG_MODEL_NAME: name, TAG_MODEL_VERSION: version}
        run_id = _start_run(client, cfg, tracking_uri, tags)
    else:
        log("MLflow: no tracking URI (--tracking-uri or MLFLOW_TRACKING_URI): not logged")
    log(f"evaluating {cfg.model} ({scale}x) on {samples} {cfg.split} samples, {mode} mode")
    try:
        if mode == "ray":
            resolver = None  # the actors load their own; free this one
        rows = list(iter_rows_in_order(_evaluate(cfg, units, spec, resolver, mode)))
        if len(rows) != samples:
            raise ValueError(f"evaluated {len(rows)} samples, expected {samples}")
        settings = {
            "batch_size": cfg.batch_size,
            "crop_border": crop,
            "limit": cfg.limit,
            "lpips": bool(backbone),
            "threads": cfg.threads,
            "device": device,
        }
        model = {"uri": cfg.model, "name": name, "version": version, "scale": scale}
        doc = build_document(model, sha, cfg.split, settings, rows)
        by_name = doc["metrics"][f"x{scale}"]
        json_path, report_path = _write_outputs(Path(cfg.out), doc, rows, scale)
        metrics = {metric_key(scale, k): v for k, v in by_name.items()}
        if client is not None:
            _log_run(client, run_id, cfg, metrics, Path(cfg.out), manifest)
            result_sha = hashlib.sha256(json_path.read_bytes()).hexdigest()
            client.set_tag(run_id, TAG_RESULT_SHA, result_sha)
            if name:
                client.set_model_version_tag(name, version, VERSION_TAG_RUN, run_id)
                client.set_model_version_tag(name, version, VERSION_TAG_MANIFEST, sha)
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        if client is not None:
            client.set_terminated(run_id, "FAILED")
        raise
    return EvaluateResult(
        json_path, report_path, run_id, metrics, name, version, sha, samples, mode
    )


TABLE = (  # (label, model metric, bicubic metric, digits)
    ("PSNR (dB)", "psnr", "psnr_bicubic", 2),
    ("SSIM", "ssim", "ssim_bicubic", 4),
    ("PSNR Y (dB)", "psnr_y", "psnr_y_bicubic", 2),
    ("SSIM Y", "ssim_y", "ssim_y_bicubic", 4),
    ("LPIPS", "lpips", "lpips_bicubic", 4),
    ("CLIP-score", "clip_score", None, 2),
)


def format_table(metrics: dict[str, float]) -> str:
    """The metrics per scale: model vs bicubic, then the caption ablation."""
    by_scale: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        scale, _, name = key.partition("/")
        by_scale.setdefault(int(scale.removeprefix("x")), {})[name] = value
    lines = []
    for scale, m in sorted(by_scale.items()):
        lines.append(f"{scale}x, {int(m['samples'])} samples   {'model':>9} {'bicubic':>9}")
        for label, name, bic, digits in TABLE:
            if name in m:
                shown = f"{m[bic]:>9.{digits}f}" if bic else ""
                lines.append(f"  {label:<22}{m[name]:>9.{digits}f} {shown}")
        lines.append(
            f"  text gain: PSNR true - mismatched caption {m['text_gain_psnr']:+.3f} dB, "
            f"true - empty {m['text_gain_psnr_empty']:+.3f} dB"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsr evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides (e.g. limit=100)")
    parser.add_argument("--config", help="YAML config (e.g. configs/evaluate/default.yaml)")
    for f in dataclasses.fields(EvaluateConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f"field_{f.name}", metavar=f.name.upper())
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from clipsr.checkpoint import CheckpointError
    from jobs.tracking import ModelNotFound, TrackingUnavailable

    overrides = list(args.overrides)
    for f in dataclasses.fields(EvaluateConfig):
        value = getattr(args, f"field_{f.name}")
        if value is not None:  # a string field stays a string (JSON-quoted for the YAML reader)
            overrides.append(f"{f.name}={json.dumps(value) if f.type == 'str' else value}")
    try:
        cfg = load_evaluate_config(args.config, overrides)
        result = run_evaluate(cfg)
    except (
        ConfigError, ValueError, FileNotFoundError, ModelNotFound, CheckpointError,
        TrackingUnavailable,
    ) as err:  # fmt: skip
        print(f"clipsr evaluate: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(result.metrics))
    print(f"\nresults: {result.json_path}\nreport:  {result.report_path}")
    if result.run_id:
        version = f" version {result.model_version}" if result.model_version else ""
        model = f"{result.model_name}{version}" if result.model_name else cfg.model
        print(f"MLflow run: {result.run_id} (evaluation of {model})")
    else:
        print("MLflow run: none (no tracking URI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
