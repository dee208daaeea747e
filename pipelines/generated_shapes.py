"""A generated captioned set in which only the caption tells an object's shape (leak-free at 16x).

Each image is a grid of ``cell`` x ``cell`` px cells (16 px: one LR pixel at 16x); some cells hold
one object, all of the same shape and colour, on a plain background: ``"red triangles on a grey
background"``. The set is built so that the low-resolution image carries **no** shape information
while colour, background and where the objects are stay visible (the control):

- every object lies inside its own cell, centred, never crossing into a neighbour;
- objects are binary masks (no anti-aliasing) with **exactly** ``object_pixels`` pixels for every
  shape (:func:`shape_mask` counts them);
- the LR is made by **box (area) downsampling** (``degradation.kind=box``): an LR pixel is the mean
  of its cell, so a circle, a square, a triangle and a cross of one colour give bit-identical LR
  images. MATLAB bicubic (the default for real corpora) would leak shape, because its 16x kernel
  reaches 64 HR pixels across neighbouring cells.

A model can therefore draw the right shape only by reading the caption. ``attributes()`` describes
the set for ``clipsr evaluate``'s prompt-adherence metrics (the shape templates, colours and
background RGB values and the caption pattern); :mod:`pipelines.bundled_corpus` writes it beside
the corpus as ``attributes.json`` and ``clipsr preprocess`` copies it into the shard manifest.

Deterministic: image ``i`` of ``generated_shapes(n, seed)`` depends only on (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "purple": (140, 40, 170),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
}
CAPTION = "{colour} {shape} on a {background} background"  # {shape}: the plural word
CELL = 16
OBJECT_PIXELS = 100
_SUPERSAMPLE = 8


@dataclass(frozen=True)
class GeneratedImage:
    name: str  # "shapes-000042"
    image: np.ndarray  # size x size x 3 uint8 RGB
    caption: str
    shape: str
    colour: str
    background: str
    occupied: np.ndarray  # cells x cells bool: which cells hold an object


def _inside(shape: str, x: np.ndarray, y: np.ndarray, cell: int, area: float) -> np.ndarray:
    """Whether points (x, y) (pixel units, cell centre at cell/2) lie in the continuous shape of
    the given area."""
    c = cell / 2
    dx, dy = x - c, y - c
    if shape == "circle":
        return dx**2 + dy**2 <= area / np.pi
    if shape == "square":
        half = area**0.5 / 2
        return (abs(dx) <= half) & (abs(dy) <= half)
    if shape == "triangle":  # apex up, base = height = b, bounding box centred
        b = (2 * area) ** 0.5
        v = dy + b / 2  # 0 at the apex, b at the base
        return (v >= 0) & (v <= b) & (abs(dx) <= v / 2)
    if shape == "cross":  # arms L long, L/3 thick: 2 L^2/3 - L^2/9 = 5 L^2 / 9
        arm = (9 * area / 5) ** 0.5
        half, thick = arm / 2, arm / 6
        bar_h = (abs(dx) <= half) & (abs(dy) <= thick)
        bar_v = (abs(dy) <= half) & (abs(dx) <= thick)
        return bar_h | bar_v
    raise ValueError(f"unknown shape {shape!r} (expected one of {SHAPES})")


@lru_cache(maxsize=64)
def shape_mask(shape: str, cell: int = CELL, pixels: int = OBJECT_PIXELS) -> np.ndarray:
    """The ``cell`` x ``cell`` boolean mask of ``shape`` with exactly ``pixels`` pixels set.

    Pixels are ranked by how much of them the continuous shape of area ``pixels`` covers
    (8 x 8 supersampling), then by distance to the cell centre; the top ``pixels`` are set, chosen
    in mirror pairs so that every mask is left-right symmetric (horizontal flips, a training
    augmentation, leave it unchanged). So the mask looks like the shape and every shape has the
    same pixel count (read-only array).
    """
    if cell % 2 or pixels % 2 or not 0 < pixels < cell * cell:
        raise ValueError(
            f"cell size and object pixels must be even, pixels in 2..{cell * cell - 2}; "
            f"got cell {cell}, pixels {pixels}"
        )
    sub = (np.arange(cell * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    x, y = np.meshgrid(sub, sub)
    inside = _inside(shape, x, y, cell, float(pixels))
    coverage = inside.reshape(cell, _SUPERSAMPLE, cell, _SUPERSAMPLE).mean(axis=(1, 3))
    half = cell // 2
    centre = (np.arange(cell) + 0.5) - cell / 2
    distance = centre[None, :half] ** 2 + centre[:, None] ** 2
    left = coverage[:, :half]
    order = np.lexsort((np.arange(cell * half), distance.ravel(), -left.ravel()))
    chosen = np.zeros(cell * half, dtype=bool)
    chosen[order[: pixels // 2]] = True
    chosen = chosen.reshape(cell, half)
    mask = np.concatenate([chosen, chosen[:, ::-1]], axis=1)
    mask.setflags(write=False)
    return mask


def render(
    shape: str,
    colour: str,
    background: str,
    occupied: np.ndarray,
    cell: int = CELL,
    pixels: int = OBJECT_PIXELS,
) -> np.ndarray:
    """The image of ``occupied`` (a boolean grid of cells) as uint8 RGB, ``cell`` px a cell."""
    rows, cols = occupied.shape
    image = np.empty((rows * cell, cols * cell, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[background]
    mask = shape_mask(shape, cell, pixels)
    tiles = image.reshape(rows, cell, cols, cell, 3).transpose(0, 2, 1, 3, 4)
    tiles[occupied.astype(bool)] = np.where(
        mask[..., None], np.array(COLOURS[colour], np.uint8), tiles[occupied.astype(bool)]
    )
    return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3, 4).reshape(image.shape))


def caption_for(shape: str, colour: str, background: str) -> str:
    return CAPTION.format(colour=colour, shape=PLURAL[shape], background=background)


def attributes(cell: int = CELL, pixels: int = OBJECT_PIXELS) -> dict:
    """The set's attribute declaration (JSON-safe): what prompt-adherence metrics need."""
    return {
        "kind": "cell-shapes",
        "cell": cell,
        "caption": CAPTION,
        "shapes": {s: PLURAL[s] for s in SHAPES},
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        "templates": {s: shape_mask(s, cell, pixels).astype(int).tolist() for s in SHAPES},
        "degradation": "box",
    }


def generated_shapes(
    n: int,
    seed: int = 0,
    size: int = 128,
    cell: int = CELL,
    start: int = 0,
    pixels: int = OBJECT_PIXELS,
) -> list[GeneratedImage]:
    """Images ``start .. start + n - 1`` of the set with ``seed``, ``cell`` px cells."""
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    if size % cell:
        raise ValueError(f"size {size} is not a multiple of the cell size {cell}")
    cells = size // cell
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        occupied = rng.random((cells, cells)) < rng.uniform(0.3, 0.7)
        occupied.flat[rng.integers(occupied.size)] = True  # at least one object
        image = render(shape, colour, background, occupied, cell, pixels)
        out.append(
            GeneratedImage(
                f"shapes-{i:06d}",
                image,
                caption_for(shape, colour, background),
                shape,
                colour,
                background,
                occupied,
            )
        )
    return out
