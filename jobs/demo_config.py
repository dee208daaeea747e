"""Configuration of ``clipsr demo`` (YAML + ``a.b=value`` overrides, one schema)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipsr.config_loader import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoModelConfig:
    # How this corpus is sharded (clipsr preprocess; source.path and output are set).
    preprocess_config: str = ""
    # A domain CLIP trained on this corpus first (clipsr pretrain-clip) and used as the model's
    # CLIP ("" = none: the train config's CLIP); clip_steps 0 = that config's run.steps.
    clip_config: str = ""
    clip_steps: int = 0
    # The train config of this model (extends a tiny preset) and its training steps.
    train_config: str = ""
    steps: int = 0  # 0: the train config's run.steps
    # Gates of clipsr promote for this model.
    promote_config: str = "configs/promote/default.yaml"
    # Prompts for the prompt-editing grid of one held-out image ("{caption}": its own caption).
    prompts: list[str] = field(default_factory=list)
    # And its caption with one attribute word swapped: the first of these words found in the
    # caption is replaced by each of the others in turn (the spec's editability protocol).
    prompt_swaps: list[str] = field(default_factory=list)


@dataclass
class DemoConfig:
    # Local working directory: corpora, outputs, the demo's state, the embedded MLflow store.
    workdir: str = "runs/demo"
    # Root of shards and training checkpoints: "" = workdir, or s3://bucket/prefix.
    storage: str = ""
    # S3-compatible endpoint for s3:// storage ("" = AWS_ENDPOINT_URL or AWS itself).
    endpoint_url: str = ""
    # MLflow: "" = MLFLOW_TRACKING_URI, else an embedded sqlite store in the workdir.
    tracking_uri: str = ""
    # Ray: "" = RAY_ADDRESS, else a local Ray on this machine.
    ray_address: str = ""
    num_workers: int = 2  # Ray Train workers per model
    # The generated shapes set: training and held-out images.
    shapes_train: int = 512
    shapes_test: int = 64
    # Photo tiles of 128 px every photo_stride px (held-out photos: disjoint tiles).
    photo_stride: int = 64
    photos: DemoModelConfig = field(
        default_factory=lambda: DemoModelConfig(
            preprocess_config="configs/demo/preprocess-photos.yaml",
            train_config="configs/demo/photos-x4.yaml",
            promote_config="configs/demo/promote-photos.yaml",
            prompts=["{caption}", "a black cat with yellow eyes", "a red sports car"],
        )
    )
    shapes: DemoModelConfig = field(
        default_factory=lambda: DemoModelConfig(
            preprocess_config="configs/demo/preprocess-shapes.yaml",
            clip_config="configs/demo/pretrain-clip-shapes.yaml",
            train_config="configs/demo/shapes-x16.yaml",
            promote_config="configs/demo/promote-shapes.yaml",
            prompts=["{caption}"],
            prompt_swaps=["circles", "squares", "triangles", "crosses"],
        )
    )
    # Evaluation: samples per test set (0 = all).
    eval_limit: int = 0
    # Start over: forget finished stages (the workdir's state file) and retrain.
    fresh: bool = False

    def validate(self) -> None:
        if not self.workdir or "://" in self.workdir:
            raise ConfigError(f"workdir: a local directory, not {self.workdir!r}")
        if self.storage and not (self.storage.startswith("s3://") or "://" not in self.storage):
            raise ConfigError(f"storage: a local directory or s3://bucket/prefix: {self.storage}")
        if self.num_workers < 1 or self.shapes_train < 8 or self.shapes_test < 2:
            raise ConfigError("num_workers >= 1, shapes_train >= 8 and shapes_test >= 2")
        if self.photo_stride < 8 or self.eval_limit < 0:
            raise ConfigError("photo_stride >= 8 and eval_limit >= 0")
        for name in ("photos", "shapes"):
            model: DemoModelConfig = getattr(self, name)
            for key in ("preprocess_config", "clip_config", "train_config", "promote_config"):
                path = getattr(model, key)
                if key == "clip_config" and not path:
                    continue
                if not (ROOT / path).is_file() and not Path(path).is_file():
                    raise ConfigError(f"{name}.{key}: no such file {path}")
            if model.steps < 0 or model.clip_steps < 0:
                raise ConfigError(f"{name}.steps/{name}.clip_steps: must be >= 0")


def load_demo_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> DemoConfig:
    return load_config(DemoConfig, path, overrides, validate)
