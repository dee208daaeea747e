"""Configuration of ``clipsr pretrain-clip`` (YAML + ``a.b=value`` overrides, type-checked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipsr.config import ClipConfig
from clipsr.config_loader import ConfigError, load_config
from jobs.train_config import TrackingConfig


@dataclass
class ClipDataConfig:
    # Dataset root written by `clipsr preprocess` (local dir or s3://bucket/prefix): its HR
    # images and captions are what the CLIP learns from.
    shards: str = ""
    train_split: str = "train"
    val_split: str = "test"
    batch_size: int = 64  # per Ray Train worker (contrastive: bigger batches, more negatives)
    loader_workers: int = 1
    shuffle_buffer: int = 256
    hflip: bool = True
    endpoint_url: str = ""


@dataclass
class ClipAugmentConfig:
    # Share of each batch blurred (Gaussian, sigma drawn from blur_sigma) with a little noise,
    # so the CLIP also recognises what a half-trained generator draws. 0 = sharp images only.
    degrade_prob: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 3.0])
    noise: float = 0.03


@dataclass
class ClipOptimConfig:
    # AdamW as open_clip trains: no weight decay on gains, biases, embeddings and the temperature.
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 20


@dataclass
class ClipRunConfig:
    # The run's name: a rerun with the same name resumes from its latest checkpoint.
    name: str = "clipsr-clip"
    storage_path: str = "runs"
    steps: int = 400
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    log_every: int = 20
    checkpoint_every: int = 100
    eval_every: int = 100
    # Held-out samples (val_split) for the zero-shot and retrieval metrics.
    eval_samples: int = 256
    max_failures: int = 1
    ray_address: str = ""


@dataclass
class PretrainClipConfig:
    seed: int = 0
    # The CLIP to train: an open_clip architecture, from random (init_seed) or from weights
    # (pretrained tag / checkpoint file) to fine-tune. image_resize is how images reach it.
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(arch="clipsr-tiny"))
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    augment: ClipAugmentConfig = field(default_factory=ClipAugmentConfig)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    run: ClipRunConfig = field(default_factory=ClipRunConfig)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(
            experiment="clipsr-clip", registered_model="clipsr-clip"
        )
    )
    # Where the trained weights go (a .safetensors file that model.clip.checkpoint accepts);
    # "" = <run.storage_path>/<run.name>/clip.safetensors (a local storage path).
    output: str = ""

    def validate(self) -> None:
        if not self.data.shards:
            raise ConfigError("data.shards: required (the output of clipsr preprocess)")
        r = self.run
        if r.steps < 1 or r.num_workers < 1 or self.data.batch_size < 2:
            raise ConfigError("run.steps/run.num_workers: >= 1; data.batch_size: >= 2")
        if min(r.log_every, r.checkpoint_every, r.eval_every, r.eval_samples) < 1:
            raise ConfigError("run.log_every/checkpoint_every/eval_every/eval_samples: >= 1")
        if not 0 <= self.augment.degrade_prob <= 1:
            raise ConfigError("augment.degrade_prob: a probability in [0, 1]")
        lo, hi = self.augment.blur_sigma
        if not 0 < lo <= hi:
            raise ConfigError("augment.blur_sigma: [low, high] with 0 < low <= high")
        if self.optim.lr <= 0 or self.optim.warmup_steps < 0:
            raise ConfigError("optim.lr: > 0; optim.warmup_steps: >= 0")
        if self.output and not self.output.endswith(".safetensors"):
            raise ConfigError("output: a .safetensors file path")
        if self.clip.pretrained and self.clip.checkpoint:
            raise ConfigError("clip: set clip.pretrained or clip.checkpoint, not both")
        if self.clip.checkpoint and not Path(self.clip.checkpoint).expanduser().is_file():
            raise ConfigError(f"clip.checkpoint: file not found: {self.clip.checkpoint}")


def load_pretrain_clip_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> PretrainClipConfig:
    return load_config(PretrainClipConfig, path, overrides, validate)
