"""Configuration of ``clipsr evaluate`` (YAML + ``a.b=value`` overrides + flags, one schema).

Each field's ``help`` is its documentation and the help text of its ``--flag``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipsr.config_loader import ConfigError, load_config
from jobs.evaluation_record import DEFAULT_EXPERIMENT
from pipelines.local_paths import blocking_file


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class EvaluateConfig:
    # old spellings that still work, with a warning
    DEPRECATED_KEYS = {"num_actors": "concurrency"}

    model: str = _f(
        "",
        "the model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model or a checkpoint "
        "directory",
    )
    shards: str = _f("", "test shards made by clipsr preprocess: a directory or s3://bucket/prefix")
    split: str = _f("test", "the shard split to evaluate")
    out: str = _f(
        "outputs/evaluation",
        "local output directory (evaluation.json, report.html, images/); created if missing",
    )
    limit: int = _f(0, "evaluate the first N samples in manifest and tar order (0: all)")
    batch_size: int = _f(
        8, "samples per forward pass; part of the result (keep it fixed to compare runs)"
    )
    mode: Literal["auto", "local", "ray"] = _f(
        "auto", "local: in this process; ray: Ray Data actors; auto: ray above ray_threshold"
    )
    ray_threshold: int = _f(256, "mode auto uses Ray above this many samples")
    concurrency: int = _f(2, "Ray actors in ray mode (one model load each)")
    ray_address: str = _f("", 'Ray cluster address ("" = RAY_ADDRESS or a local Ray)')
    threads: int = _f(
        1,
        "torch threads of each evaluating process (each actor gets this many CPUs); keep it "
        "equal across runs to compare bytes",
    )
    device: str = _f("", 'cpu or cuda[:N] ("" = cuda when available, else cpu)')
    tracking_uri: str = _f(
        "",
        'MLflow tracking URI ("" = MLFLOW_TRACKING_URI, else ./runs/mlflow.db when it exists; '
        "with none, a checkpoint directory is evaluated unlogged)",
    )
    experiment: str = _f(DEFAULT_EXPERIMENT, "MLflow experiment of the evaluation run")
    endpoint_url: str = _f(
        "", 'S3-compatible endpoint for s3:// shards ("" = AWS_ENDPOINT_URL or AWS itself)'
    )
    grid_rows: int = _f(8, "samples shown as image rows in the report")
    crop_border: int | None = _f(
        None, "pixels shaved off each border before PSNR/SSIM (null: the model's metrics.*)"
    )
    lpips: bool = _f(True, "false: no LPIPS even when weights are configured")
    lpips_backbone_weights: str = _f(
        "", 'LPIPS VGG backbone weights file (with lpips_linear_weights; "": the model\'s)'
    )
    lpips_linear_weights: str = _f(
        "", "LPIPS linear layers weights file (with lpips_backbone_weights)"
    )
    shared_filesystem: bool = _f(
        False,
        "ray mode: local shards, model and weights are on a filesystem mounted at the same path "
        "on every node (checked); without it a multi-node cluster refuses local paths",
    )

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (models:/NAME@ALIAS, models:/NAME/N or a dir)")
        if not self.shards:
            raise ConfigError("shards: required (the test shards' directory or s3:// prefix)")
        if not self.out or "://" in self.out:
            raise ConfigError(f"out: a local directory, not {self.out!r}")
        if (taken := blocking_file(self.out)) is not None:
            raise ConfigError(f"out: {taken} exists and is not a directory; choose another --out")
        if not self.split:
            raise ConfigError("split: required (e.g. test)")
        for name in ("batch_size", "concurrency", "threads", "ray_threshold"):
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


def load_evaluate_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> EvaluateConfig:
    return load_config(EvaluateConfig, path, overrides, validate)
