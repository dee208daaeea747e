"""Real photographs bundled with scikit-image (no network needed), with captions written for each.

The embedded default corpus for the quickstart and the demo; the held-out photos are never
trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAPTIONS: dict[str, str] = {
    "astronaut": "an astronaut in a white space suit with an american flag in front of a shuttle",
    "rocket": "a white rocket on the launch pad under a blue sky with a gantry tower",
    "immunohistochemistry": "a microscope image of stained tissue with brown and blue cells",
    "hubble_deep_field": "a deep space image of many small galaxies and stars on black",
    "stereo_motorcycle": "a red and black motorcycle parked in a garage with tools on the wall",
    "retina": "a fundus photograph of a retina, orange with dark red blood vessels",
    "colorwheel": "a colour wheel with a rainbow of hues fading to white at the centre",
    "coffee": "a cup of coffee with latte art on a saucer with a spoon, on a wooden table",
    "chelsea": "a tabby cat with green eyes looking to the side",
}
HELD_OUT = ("coffee", "chelsea")


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    caption: str


def bundled_photos(split: str = "train") -> list[Photo]:
    """The training photos, or (``split='test'``) the held-out ones."""
    from skimage import data

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    photos = []
    for name in CAPTIONS:
        if (name in HELD_OUT) != (split == "test"):
            continue
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        photos.append(Photo(name, np.ascontiguousarray(image[..., :3]), CAPTIONS[name]))
    return photos
