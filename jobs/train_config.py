"""Configuration of ``clipsr train``: the model/loss/optimiser schema plus data, run, tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipsr.config import CLIPSRConfig
from clipsr.config_loader import ConfigError, load_config


@dataclass
class DataConfig:
    # Dataset root written by `clipsr preprocess` (local dir or s3://bucket/prefix).
    shards: str = ""
    train_split: str = "train"
    val_split: str = "test"
    # Scales to train on, one drawn per batch (default: [model.scale]). Several scales need a
    # model whose head serves them all (see README: multi-scale).
    scales: list[int] = field(default_factory=list)
    batch_size: int = 8  # per Ray Train worker
    loader_workers: int = 2  # DataLoader processes per Ray Train worker
    shuffle_buffer: int = 256
    hflip: bool = True
    # S3-compatible endpoint for s3:// shards and run storage: "" = AWS_ENDPOINT_URL(_S3) of
    # the driver, else AWS; resolved once on the driver (credentials only from the environment).
    endpoint_url: str = ""


@dataclass
class TrainRunConfig:
    # The run's name: a rerun with the same name resumes from its latest checkpoint.
    name: str = "clipsr"
    # Where Ray Train keeps checkpoints: a local dir or s3://bucket/prefix.
    storage_path: str = "runs"
    steps: int = 1000
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema_decay: float = 0.999
    # EMA decay min(ema_decay, (1 + t) / (10 + t)) at step t (false: ema_decay from the start).
    ema_warmup: bool = True
    # Share of training captions replaced by "" (caption dropout); 0 = the reference (none).
    caption_dropout: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    num_to_keep: int = 2
    validate_every: int = 100
    val_samples: int = 32
    # Ray Train restarts the workers from the last checkpoint this many times after a failure.
    max_failures: int = 2
    # Start from the weights of this checkpoint directory (G, EMA, D, CLIP when it has them:
    # a run's checkpoint, an exported model, clipsr convert-reference output); step, optimizers
    # and data start afresh. Ignored once the run has checkpoints of its own (it resumes).
    init_from: str = ""
    ray_address: str = ""
    # Local paths (data.shards, run.storage_path, weights, a sqlite MLflow store) are on a
    # filesystem mounted at the same path on every node: allowed on a multi-node cluster, after
    # a check that every node sees them. Without it, a multi-node cluster refuses local paths.
    shared_filesystem: bool = False


@dataclass
class TrackingConfig:
    # MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else an embedded sqlite store in the run.
    tracking_uri: str = ""
    experiment: str = "clipsr"
    # Register the final EMA generator as a new version of this model ("" = do not register).
    registered_model: str = "clipsr"
    system_metrics: bool = True


@dataclass
class TrainConfig(CLIPSRConfig):
    data: DataConfig = field(default_factory=DataConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def scales(self) -> list[int]:
        return self.data.scales or [self.model.scale]

    def validate(self) -> None:
        super().validate()
        if not self.data.shards:
            raise ConfigError("data.shards: required (the output of clipsr preprocess)")
        if self.scales != [self.model.scale]:
            raise ConfigError(
                f"data.scales: {self.data.scales} must be [model.scale] = [{self.model.scale}]; "
                "this generator serves one scale"
            )
        r = self.run
        if r.steps < 1 or r.num_workers < 1 or self.data.batch_size < 1:
            raise ConfigError("run.steps, run.num_workers and data.batch_size must be >= 1")
        if min(r.log_every, r.checkpoint_every, r.validate_every, r.num_to_keep) < 1:
            raise ConfigError("run.log_every/checkpoint_every/validate_every/num_to_keep: >= 1")
        if not 0 <= r.ema_decay < 1:
            raise ConfigError("run.ema_decay: in [0, 1)")
        if not 0 <= r.caption_dropout < 1:
            raise ConfigError("run.caption_dropout: a probability in [0, 1)")
        if r.precision != "fp32" and not r.use_gpu:
            raise ConfigError("run.precision: bf16/fp16 autocast needs run.use_gpu=true")


def load_train_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> TrainConfig:
    return load_config(TrainConfig, path, overrides, validate)
