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

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
from argparse import SUPPRESS
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import console
from jobs.evaluate_config import EvaluateConfig, load_evaluate_config

PROG = "clipsr evaluate"
JSON_NAME = "evaluation.json"
FORMAT = 1


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
    tracking_uri: str = ""
    experiment_id: str = ""


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
        from jobs import console
        from pipelines.batch_evaluate import evaluate_ray, read_captions_ray

        console.ray_data_progress(ours=False)  # Ray Data's global bar is this job's display

        captions = read_captions_ray(units, cfg.endpoint_url, cfg.ray_address)
        wrong = mismatched_captions(captions)
        return evaluate_ray(units, wrong, spec, cfg.concurrency, cfg.ray_address)
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
    from jobs.evaluation_record import metric_names

    by_name = aggregate(rows)
    unknown = set(by_name) - set(metric_names())
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


def _write_outputs(
    out: Path, doc: dict, rows: list[dict], scale: int, run: dict | None
) -> tuple[Path, Path]:
    from jobs.eval_report import IMAGES_DIR, write_report

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)  # no stale grids of an earlier run
    json_path = out / JSON_NAME
    json_path.write_bytes((json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    grid = {scale: [r for r in rows if "images" in r]}
    return json_path, write_report(out, doc, grid, run)


def run_evaluate(cfg: EvaluateConfig, log=print) -> EvaluateResult:
    """Evaluate ``cfg.model`` on ``cfg.shards``; see the module docstring."""
    from clipsr.evaluation import Unit, iter_rows_in_order, plan_units
    from clipsr.shard_dataset import manifest_sha256
    from jobs.evaluate_mlflow import log_run, model_id_of, resolve_registered, start_run
    from jobs.evaluation_record import (
        KIND,
        TAG_CLIP_WEIGHTS,
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
    from jobs.tracking import check_tracking_uri, default_tracking_uri, load_resolver, run_page
    from pipelines.batch_evaluate import WorkerSpec
    from pipelines.storage import resolve_endpoint

    cfg.endpoint_url = resolve_endpoint(cfg.endpoint_url)  # what the actors get
    tracking_uri = default_tracking_uri(cfg.tracking_uri)
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    name, version = resolve_registered(cfg.model, tracking_uri) if tracking_uri else (None, None)
    load_uri = f"models:/{name}/{version}" if name else cfg.model  # the alias cannot move now
    device = _device(cfg)
    resolver = load_resolver(load_uri, device, tracking_uri=tracking_uri or None)
    scale, clip_weights = resolver.scale, resolver.clip.weights_description
    manifest, shards = _shards(cfg, scale)
    units: list[Unit] = plan_units(shards, cfg.limit)
    samples = sum(u.count for u in units)
    if samples == 0:
        raise ValueError(f"{cfg.shards}: split {cfg.split!r} has no samples")
    crop = resolver.cfg.metrics.crop_border if cfg.crop_border is None else cfg.crop_border
    backbone, linear = _lpips_paths(cfg, resolver.cfg)
    mode = cfg.mode if cfg.mode != "auto" else ("ray" if samples > cfg.ray_threshold else "local")
    attributes = json.dumps(manifest["attributes"]) if manifest.get("attributes") else ""
    spec = WorkerSpec(
        load_uri, tracking_uri, device, cfg.threads, cfg.batch_size, crop, cfg.grid_rows,
        backbone, linear, cfg.endpoint_url, attributes,
    )  # fmt: skip
    sha = manifest_sha256(manifest)
    if mode == "ray":
        _check_cluster(cfg, load_uri, backbone, linear)

    client, run_id, run, experiment_id = None, None, None, ""
    if tracking_uri:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
        tags = {TAG_KIND: KIND, TAG_MODEL_URI: cfg.model, TAG_MANIFEST: sha, TAG_SPLIT: cfg.split}
        tags[TAG_CLIP_WEIGHTS] = clip_weights
        if name:
            tags |= {TAG_MODEL_NAME: name, TAG_MODEL_VERSION: version}
        run_id = start_run(client, cfg, tracking_uri, tags)
        experiment_id = client.get_run(run_id).info.experiment_id
        url, serve = run_page(tracking_uri, experiment_id, run_id)
        run = {"id": run_id, "url": url, "serve": serve}
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
        model["clip_weights"] = clip_weights
        doc = build_document(model, sha, cfg.split, settings, rows)
        by_name = doc["metrics"][f"x{scale}"]
        json_path, report_path = _write_outputs(Path(cfg.out), doc, rows, scale, run)
        metrics = {metric_key(scale, k): v for k, v in by_name.items()}
        if client is not None:
            log_run(
                client, run_id, cfg, metrics, Path(cfg.out), manifest, sha,
                model_id_of(client, name, version), (JSON_NAME, report_path.name),
            )  # fmt: skip
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
        json_path, report_path, run_id, metrics, name, version, sha, samples, mode,
        tracking_uri, experiment_id,
    )  # fmt: skip


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
        if "adherence" in m:
            lines.append(
                f"  prompt adherence {m['adherence']:.1%}, edit success {m['edit_success']:.1%} "
                f"(chance {m['adherence_chance']:.0%}); shape-only text gain "
                f"{m['text_gain_shape_psnr']:+.3f} dB ({int(m['adherence_samples'])} samples)"
            )
    return "\n".join(lines)


def _parser() -> console.Parser:
    parser = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides (e.g. limit=100)")
    parser.add_argument("--config", help="YAML config (e.g. configs/evaluate/default.yaml)")
    for f in dataclasses.fields(EvaluateConfig):
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in ("", None) else f" (default: {default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f"field_{f.name}", metavar=f.name.upper(),
            help=f.metadata["help"] + shown,
        )  # fmt: skip
    for old in EvaluateConfig.DEPRECATED_KEYS:  # old flags still work; the loader warns
        parser.add_argument("--" + old.replace("_", "-"), dest=f"field_{old}", help=SUPPRESS)
    return parser


def format_result(result: EvaluateResult, model: str) -> str:
    from jobs.tracking import run_link

    lines = ["", format_table(result.metrics), ""]
    lines.append(f"results: {result.json_path}\nreport:  {result.report_path}")
    if result.run_id:
        version = f" version {result.model_version}" if result.model_version else ""
        name = f"{result.model_name}{version}" if result.model_name else model
        lines.append(f"MLflow run: {result.run_id} (evaluation of {name})")
        lines.append(f"  {run_link(result.tracking_uri, result.experiment_id, result.run_id)}")
    else:
        lines.append("MLflow run: none (no tracking URI)")
    return "\n".join(lines)


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from clipsr.checkpoint import CheckpointError
    from jobs.tracking import ModelNotFound, TrackingUnavailable

    overrides = list(args.overrides)
    names = [(f.name, f.type) for f in dataclasses.fields(EvaluateConfig)]
    for name, kind in [*names, *((old, "int") for old in EvaluateConfig.DEPRECATED_KEYS)]:
        value = getattr(args, f"field_{name}")
        if value is not None:  # a string field stays a string (JSON-quoted for the YAML reader)
            overrides.append(f"{name}={json.dumps(value) if kind == 'str' else value}")
    cfg = load_evaluate_config(args.config, overrides)  # --out checked here, before any work
    try:
        result = run_evaluate(cfg)
    except (ModelNotFound, CheckpointError, TrackingUnavailable) as err:
        return console.fail(PROG, err, 2)
    print(format_result(result, cfg.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
