"""Configuration of ``clipsr evaluate`` (YAML + ``a.b=value`` overrides, one schema)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clipsr.config_loader import ConfigError, load_config
from jobs.evaluation_record import DEFAULT_EXPERIMENT


@dataclass
class EvaluateConfig:
    # The model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model or a checkpoint dir.
    model: str = ""
    # Test shards made by clipsr preprocess: a directory or s3://bucket/prefix (manifest.json).
    shards: str = ""
    split: str = "test"
    # Local output directory: evaluation.json, report.html and images/.
    out: str = "outputs/evaluation"
    # Samples to evaluate, the first ones in manifest and tar order (0: all of the split).
    limit: int = 0
    # Samples per forward pass; part of the result (conv arithmetic depends on batch shape).
    batch_size: int = 8
    # local: in this process; ray: Ray Data actor pool; auto: ray above ray_threshold samples.
    mode: Literal["auto", "local", "ray"] = "auto"
    ray_threshold: int = 256
    num_actors: int = 2
    ray_address: str = ""  # "" = RAY_ADDRESS or a local Ray
    # torch threads of each evaluating process (this one, or each actor, which gets this many
    # CPUs). Keep it equal across runs to compare bytes: float arithmetic follows the threads.
    threads: int = 1
    device: str = ""  # "" = cuda when available, else cpu
    # MLflow: "" = MLFLOW_TRACKING_URI; with neither, a local checkpoint is evaluated unlogged.
    tracking_uri: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    # S3-compatible endpoint for s3:// shards ("" = AWS_ENDPOINT_URL or AWS itself).
    endpoint_url: str = ""
    # Samples shown as image rows in the report.
    grid_rows: int = 8
    # Override the model's metrics.crop_border / metrics.lpips_* (null / "": the model's).
    crop_border: int | None = None
    lpips: bool = True  # false: no LPIPS even when weights are configured
    lpips_backbone_weights: str = ""
    lpips_linear_weights: str = ""
    # Ray mode: local shards/model/weights are on a filesystem mounted at the same path on every
    # node (checked); without it a multi-node cluster refuses local paths.
    shared_filesystem: bool = False

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (models:/NAME@ALIAS, models:/NAME/N or a dir)")
        if not self.shards:
            raise ConfigError("shards: required (the test shards' directory or s3:// prefix)")
        if not self.out or "://" in self.out:
            raise ConfigError(f"out: a local directory, not {self.out!r}")
        if not self.split:
            raise ConfigError("split: required (e.g. test)")
        for name in ("batch_size", "num_actors", "threads", "ray_threshold"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "grid_rows"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.crop_border is not None and self.crop_border < 0:
            raise ConfigError(f"crop_border: must be >= 0, got {self.crop_border}")
        if bool(self.lpips_backbone_weights) != bool(self.lpips_linear_weights):
            raise ConfigError("lpips_backbone_weights and lpips_linear_weights: set both or none")
        for name in ("lpips_backbone_weights", "lpips_linear_weights"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path}")
        if self.device not in ("", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device: '', cpu or cuda[:N], not {self.device!r}")


def load_evaluate_config(path: str | Path | None, overrides: list[str] = ()) -> EvaluateConfig:
    return load_config(EvaluateConfig, path, overrides)
