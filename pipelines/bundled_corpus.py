"""Write the bundled sample corpora as folder corpora (``train/`` and ``test/``, image + .txt).

- ``photos``: scikit-image's photographs (:mod:`pipelines.bundled_photos`) cut into square tiles,
  each tile with its photo's caption; the held-out photos (coffee, chelsea) go to ``test/``.
- ``shapes``: the generated set of :mod:`pipelines.generated_shapes` (only the caption tells an
  object's shape once box-downscaled 16x), separate seeds for train and test, and its
  ``attributes.json``.

Read them with ``source.kind=folder source.folder_split_dirs=true``. Writing is deterministic
and idempotent: a finished corpus has a ``_complete.json`` (written last) naming what made it,
and is reused when asked for again with the same parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from pipelines.bundled_photos import bundled_photos
from pipelines.generated_shapes import attributes, generated_shapes

COMPLETE = "_complete.json"


def _write(root: Path, split: str, name: str, image, caption: str) -> None:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png", optimize=False, compress_level=1)
    (folder / f"{name}.txt").write_text(caption + "\n")


def _done(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished corpus made with ``params``; otherwise clears what
    is there (a partial or differently made corpus) so that nothing stale is left."""
    marker = root / COMPLETE
    if marker.is_file():
        made = json.loads(marker.read_text())
        if {k: made.get(k) for k in params} == params:
            return True
        marker.unlink()
    for split in ("train", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
    return False


def write_photo_tiles(root: str | Path, tile: int = 128, train_stride: int = 64) -> dict:
    """Tiles of ``tile`` px: every ``train_stride`` px of the training photos (overlapping),
    every ``tile`` px of the held-out ones (disjoint). Returns counts per split."""
    root = Path(root)
    params = {"corpus": "photos", "tile": tile, "train_stride": train_stride}
    if _done(root, params):
        return json.loads((root / COMPLETE).read_text())["counts"]
    counts = {"train": 0, "test": 0}
    for split, stride in (("train", train_stride), ("test", tile)):
        for photo in bundled_photos(split):
            h, w, _ = photo.image.shape
            for y in range(0, h - tile + 1, stride):
                for x in range(0, w - tile + 1, stride):
                    crop = photo.image[y : y + tile, x : x + tile]
                    _write(root, split, f"{photo.name}-y{y:04d}-x{x:04d}", crop, photo.caption)
                    counts[split] += 1
    (root / COMPLETE).write_text(json.dumps({**params, "counts": counts}, indent=2))
    return counts


def write_shapes(
    root: str | Path, train: int = 512, test: int = 64, size: int = 128, seed: int = 0
) -> dict:
    """``train`` + ``test`` generated images (test from seed + 1: never seen in training) and
    ``attributes.json`` (the set's declaration, which preprocess copies into the manifest)."""
    root = Path(root)
    params = {
        "corpus": "shapes",
        "version": 2,  # leak-free: exact pixel counts, one object per cell
        "train": train,
        "test": test,
        "size": size,
        "seed": seed,
    }
    if _done(root, params):
        return json.loads((root / COMPLETE).read_text())["counts"]
    for split, n, split_seed in (("train", train, seed), ("test", test, seed + 1)):
        for item in generated_shapes(n, seed=split_seed, size=size):
            _write(root, split, item.name, item.image, item.caption)
    (root / "attributes.json").write_text(json.dumps(attributes(), indent=1))
    counts = {"train": train, "test": test}
    (root / COMPLETE).write_text(json.dumps({**params, "counts": counts}, indent=2))
    return counts
