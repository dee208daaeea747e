"""A few CPU minutes of `clipsr train` (tiny, 4x) beat bicubic on held-out real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.train_config import load_train_config
from pipelines.bundled_photos import bundled_photos

ROOT = Path(__file__).resolve().parents[2]


def _celeba_layout(root: Path, seed: int = 0) -> None:
    """Random crops of the bundled photographs in the image/ text/ {train,test}/ layout; the
    test split comes only from the held-out photographs."""
    rng = np.random.default_rng(seed)
    for d in ("image", "text", "train", "test"):
        (root / d).mkdir(parents=True)
    for split, photos, count in (
        ("train", bundled_photos("train"), 160),
        ("test", bundled_photos("test"), 12),
    ):
        names = []
        for i in range(count):
            photo = photos[i % len(photos)]
            h, w, _ = photo.image.shape
            side = int(rng.integers(128, min(h, w, 256) + 1))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            name = f"{split}{i:04d}"
            Image.fromarray(photo.image[y : y + side, x : x + side]).save(
                root / "image" / f"{name}.png"
            )
            (root / "text" / f"{name}.txt").write_text(photo.caption + "\n")
            names.append(name)
        (root / split / "filenames.txt").write_text("\n".join(names) + "\n")


@pytest.mark.slow
def test_tiny_4x_beats_bicubic_on_held_out_photographs(tmp_path, ray_session):
    from jobs.train import run_train
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    _celeba_layout(tmp_path / "corpus")
    run_preprocess(
        load_preprocess_config(
            None,
            [
                "source.kind=celeba",
                f"source.path={tmp_path / 'corpus'}",
                f"output={tmp_path / 'shards'}",
                "hr_size=128",
                "scales=[4]",
                "samples_per_shard=20",
            ],
        ),
        progress=False,
    )
    cfg = load_train_config(
        ROOT / "configs" / "train" / "tiny-x4.yaml",
        [
            f"data.shards={tmp_path / 'shards'}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.steps=400",
            "data.batch_size=4",
            "data.loader_workers=1",
            "run.log_every=50",
            "run.validate_every=400",
            "run.checkpoint_every=400",
            "run.val_samples=12",
            "tracking.system_metrics=false",
            "tracking.registered_model=",
        ],
    )
    result = run_train(cfg)
    m = result.metrics
    assert m["val/psnr"] > m["val/psnr_bicubic"], m
