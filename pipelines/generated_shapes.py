"""A generated captioned set in which the caption carries what a 16x downscale loses.

Each image is a grid of cells; some cells hold one small object, all of the same shape and
colour, on a plain background: ``"red triangles on a grey background"``. A cell is exactly one
LR pixel at 16x (``cell = size // 8`` for 128 px images), so the LR image keeps where the objects
are and a blend of their colour with the background, but not their shape: a circle, a square and
a triangle of the same colour become the same LR pixel. Only the caption says which, so a model
that reads its caption can draw the right shape, and a mismatched caption measurably hurts.

Deterministic: image ``i`` of ``generated_shapes(n, seed)`` depends only on (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
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
SUPERSAMPLE = 4  # drawn 4x larger, then box-filtered: smooth, deterministic edges


@dataclass(frozen=True)
class GeneratedImage:
    name: str  # "shapes-000042"
    image: np.ndarray  # size x size x 3 uint8 RGB
    caption: str
    shape: str
    colour: str
    background: str


# Every shape covers the same share of its cell, so the LR pixel (a blend of object and
# background weighted by area) is the same whatever the shape: side of the bounding box / cell.
AREA = 0.36
EXTENT = {
    "circle": 2 * (AREA / np.pi) ** 0.5,  # pi r^2 = A
    "square": AREA**0.5,
    "triangle": (2 * AREA) ** 0.5,  # base = height = b, b^2 / 2 = A
    "cross": (9 * AREA / 5) ** 0.5,  # arms L x L/3: 2 L^2/3 - L^2/9 = A
}


def _draw(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], cell: float, fill):
    if shape not in EXTENT:
        raise ValueError(f"unknown shape {shape!r} (expected one of {SHAPES})")
    half = EXTENT[shape] * cell / 2
    cx, cy = centre
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        arm = (x1 - x0) / 3
        draw.rectangle((x0 + arm, y0, x1 - arm, y1), fill=fill)
        draw.rectangle((x0, y0 + arm, x1, y1 - arm), fill=fill)


def render(
    shape: str, colour: str, background: str, occupied: np.ndarray, size: int = 128
) -> np.ndarray:
    """The image of ``occupied`` (a boolean cells x cells grid) as size x size x 3 uint8."""
    cells = occupied.shape[0]
    if size % cells:
        raise ValueError(f"size {size} is not a multiple of the {cells}-cell grid")
    cell = size // cells * SUPERSAMPLE
    canvas = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUNDS[background])
    draw = ImageDraw.Draw(canvas)
    for row, col in zip(*np.nonzero(occupied)):
        centre = ((col + 0.5) * cell, (row + 0.5) * cell)
        _draw(draw, shape, centre, cell, COLOURS[colour])
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.uint8)


PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


def caption_for(shape: str, colour: str, background: str) -> str:
    return f"{colour} {PLURAL[shape]} on a {background} background"


def generated_shapes(
    n: int, seed: int = 0, size: int = 128, cells: int = 8, start: int = 0
) -> list[GeneratedImage]:
    """Images ``start .. start + n - 1`` of the set with ``seed``."""
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        occupied = rng.random((cells, cells)) < rng.uniform(0.3, 0.7)
        image = render(shape, colour, background, occupied, size)
        out.append(
            GeneratedImage(
                f"shapes-{i:06d}",
                image,
                caption_for(shape, colour, background),
                shape,
                colour,
                background,
            )
        )
    return out
