"""Configuration of ``clipsr preprocess`` (YAML + ``a.b=value`` overrides, type-checked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipsr.config_loader import ConfigError, load_config
from clipsr.degradations import DegradationConfig
from pipelines.local_paths import blocking_file
from pipelines.sources import SourceConfig
from pipelines.storage import StorageOptions


@dataclass
class PreprocessConfig:
    source: SourceConfig = field(default_factory=lambda: SourceConfig(kind="folder"))
    # Destination directory or s3://bucket/prefix; workers write shards straight to it.
    output: str = ""
    # S3 endpoint override for S3-compatible stores ("" = AWS_ENDPOINT_URL(_S3) of the driver,
    # else AWS; resolved on the driver); credentials only from the environment.
    storage: StorageOptions = field(default_factory=StorageOptions)
    hr_size: int = 256
    scales: list[int] = field(default_factory=lambda: [4, 8, 16])
    hr_format: Literal["png", "jpg", "webp"] = "png"
    hr_quality: int = 95
    # zlib level (0-9) of every PNG member (the LR images, and the HR when hr_format is png).
    # Lossless at any level: 1 encodes about 3x faster than 6 for about 6% more bytes.
    png_compression: int = 1
    # Resampling of the HR crop: area (fast, the default), bicubic or lanczos.
    resample: Literal["area", "bicubic", "lanczos"] = "area"
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    # Seed of every random choice: per sample and scale, derive_seed(seed, key, scale).
    seed: int = 0
    min_image_size: int = 64
    max_image_pixels: int = 89_478_485  # decompression-bomb guard (Pillow's default limit)
    samples_per_shard: int = 1000
    # At least this many shards per split (when it has the samples): ranks x loader workers.
    min_shards_per_split: int = 1
    # Splits for corpora without their own: a deterministic hash of the source id.
    test_fraction: float = 0.05
    val_fraction: float = 0.0
    # Take only the first N listed samples (0: all); for trials and benchmarks.
    max_samples: int = 0
    # Ray: address ("" = RAY_ADDRESS or a local Ray), parallel shard writers (0 = CPUs).
    ray_address: str = ""
    concurrency: int = 0
    # Start over: delete the commit markers of existing shards and rewrite everything.
    overwrite: bool = False
    # Attribute declaration copied into manifest.json (what clipsr evaluate's prompt-adherence
    # metrics need): a JSON file, local or s3://. "" = source.path/attributes.json if it exists.
    attributes: str = ""
    # A local source.path/output is on a filesystem mounted at the same path on every node:
    # allowed on a multi-node Ray cluster after a check that every node sees it (else refused).
    shared_filesystem: bool = False

    def validate(self) -> None:
        if not self.source.path:
            raise ConfigError("source.path: required (the corpus root, manifest or tar prefix)")
        if not self.output:
            raise ConfigError("output: required (a directory or s3://bucket/prefix)")
        if (taken := blocking_file(self.output)) is not None:
            raise ConfigError(f"output: {taken} exists and is not a directory")
        if not self.scales:
            raise ConfigError("scales: at least one scale, e.g. [4, 8, 16]")
        for s in self.scales:
            if s < 2 or self.hr_size % s:
                raise ConfigError(f"scales: {s} does not divide hr_size {self.hr_size}")
        if len(set(self.scales)) != len(self.scales):
            raise ConfigError(f"scales: duplicates in {self.scales}")
        if self.samples_per_shard < 1:
            raise ConfigError("samples_per_shard: must be >= 1")
        if self.min_shards_per_split < 1:
            raise ConfigError("min_shards_per_split: must be >= 1")
        if (
            not 0 <= self.test_fraction + self.val_fraction < 1
            or min(self.test_fraction, self.val_fraction) < 0
        ):
            raise ConfigError("test_fraction/val_fraction: each >= 0, together < 1")
        if not 1 <= self.hr_quality <= 100:
            raise ConfigError("hr_quality: 1..100")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError("png_compression: 0 (none, fastest) .. 9 (smallest)")
        if self.concurrency < 0 or self.max_samples < 0:
            raise ConfigError("concurrency/max_samples: must be >= 0")


def load_preprocess_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> PreprocessConfig:
    return load_config(PreprocessConfig, path, overrides, validate)
