"""Prompt adherence, measured by pixels: does the SR image draw the shape its caption names?

For shard sets whose manifest declares ``attributes`` (``kind: cell-shapes``; written by the
generated shapes set, :mod:`pipelines.generated_shapes`): images are grids of ``cell`` x ``cell``
cells, each empty or holding one object whose shape, colour and background the caption names
through a pattern such as ``"{colour} {shape} on a {background} background"``.

The classifier is deterministic and needs no training: a cell's pixels are projected onto the
line from the background colour to the object colour (0 = background, 1 = object), and the
result is compared with each shape's binary template by normalised correlation; the best match
wins. A cell with no contrast (a flat blob or background) matches nothing (``-1``), which counts
as wrong. On the ground-truth images it is exact (tested on every shape, colour and background).

Metrics (:func:`adherence_counts`): **adherence** = share of objects in SR(true caption) classified
as the caption's shape; **edit success** = share of objects in SR(caption with only the shape word
swapped to each other shape) classified as the requested shape. Chance is 1 / number of shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "cell-shapes"


@dataclass(frozen=True)
class CaptionAttributes:
    shape: str
    colour: str
    background: str


def _rgb(section: str, name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (3,) or not np.all((arr >= 0) & (arr <= 255)):
        raise ValueError(
            f"attributes.{section}.{name}: expected [R, G, B] in 0..255, got {value!r}"
        )
    return arr


@dataclass(frozen=True)
class ShapeAttributes:
    """A parsed ``attributes`` declaration of kind ``cell-shapes``."""

    cell: int
    caption_pattern: str
    shape_words: dict[str, str]  # shape name -> the word the captions use ("circles")
    colours: dict[str, np.ndarray]
    backgrounds: dict[str, np.ndarray]
    templates: dict[str, np.ndarray]  # shape name -> cell x cell bool mask

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeAttributes:
        """Validate a declaration (as in a shard manifest); ValueError names the bad field."""
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ValueError(f"attributes.kind: expected '{KIND}', got {data.get('kind')!r}")
        for key in ("cell", "caption", "shapes", "colours", "backgrounds", "templates"):
            if key not in data:
                raise ValueError(f"attributes.{key}: missing")
        cell = data["cell"]
        if not isinstance(cell, int) or cell < 2:
            raise ValueError(f"attributes.cell: expected an integer >= 2, got {cell!r}")
        pattern = data["caption"]
        for slot in ("{colour}", "{shape}", "{background}"):
            if not isinstance(pattern, str) or pattern.count(slot) != 1:
                raise ValueError(f"attributes.caption: needs {slot} exactly once: {pattern!r}")
        shapes = dict(data["shapes"])
        if len(shapes) < 2:
            raise ValueError("attributes.shapes: at least two shapes")
        templates = {}
        for name in shapes:
            mask = np.asarray(data["templates"].get(name, []), dtype=bool)
            if mask.shape != (cell, cell) or mask.all() or not mask.any():
                raise ValueError(
                    f"attributes.templates.{name}: expected a non-trivial {cell}x{cell} 0/1 mask"
                )
            templates[name] = mask
        colours = {k: _rgb("colours", k, v) for k, v in data["colours"].items()}
        backgrounds = {k: _rgb("backgrounds", k, v) for k, v in data["backgrounds"].items()}
        if not colours or not backgrounds:
            raise ValueError("attributes.colours/backgrounds: at least one of each")
        return cls(cell, pattern, shapes, colours, backgrounds, templates)

    @property
    def shapes(self) -> list[str]:
        return list(self.shape_words)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.shape_words)

    def _regex(self) -> re.Pattern:
        def alt(words):
            return "(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"

        parts = re.split(r"(\{colour\}|\{shape\}|\{background\})", self.caption_pattern)
        slots = {
            "{colour}": alt(self.colours),
            "{shape}": alt(self.shape_words.values()),
            "{background}": alt(self.backgrounds),
        }
        return re.compile("".join(slots.get(p, re.escape(p)) for p in parts))

    def parse(self, caption: str) -> CaptionAttributes | None:
        """The attributes a caption names, or None when it does not follow the pattern."""
        match = self._regex().fullmatch(caption.strip())
        if not match:
            return None
        order = re.findall(r"\{(colour|shape|background)\}", self.caption_pattern)
        found = dict(zip(order, match.groups()))
        by_word = {w: s for s, w in self.shape_words.items()}
        return CaptionAttributes(by_word[found["shape"]], found["colour"], found["background"])

    def caption(self, attrs: CaptionAttributes) -> str:
        return self.caption_pattern.format(
            colour=attrs.colour, shape=self.shape_words[attrs.shape], background=attrs.background
        )

    def _cells(self, image: np.ndarray) -> np.ndarray:
        h, w, _ = image.shape
        c = self.cell
        if h % c or w % c:
            raise ValueError(f"image size {h}x{w} is not a multiple of the {c}-px cell")
        return image.reshape(h // c, c, w // c, c, 3).transpose(0, 2, 1, 3, 4).astype(np.float64)

    def occupied(self, hr: np.ndarray, background: str) -> np.ndarray:
        """Cells of a ground-truth image that hold an object (any pixel off the background)."""
        cells = self._cells(hr)
        return np.abs(cells - self.backgrounds[background]).max(axis=(2, 3, 4)) > 0

    def classify(
        self, image: np.ndarray, colour: str, background: str, occupied: np.ndarray
    ) -> np.ndarray:
        """Shape index (into :attr:`shapes`) of each occupied cell of a uint8 RGB image, in
        row-major order; -1 where the cell shows no contrast along background -> colour."""
        cells = self._cells(image)[occupied]  # (n, c, c, 3)
        bg, obj = self.backgrounds[background], self.colours[colour]
        direction = obj - bg
        t = ((cells - bg) @ direction) / max(float(direction @ direction), 1e-9)
        t = t.reshape(len(t), -1)
        t = t - t.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(t, axis=1)
        templates = np.stack([self.templates[s].ravel() for s in self.shapes]).astype(np.float64)
        templates -= templates.mean(axis=1, keepdims=True)
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        scores = (t / np.maximum(norm, 1e-9)[:, None]) @ templates.T
        out = np.argmax(scores, axis=1)
        out[norm < 1e-3 * self.cell] = -1
        return out


def adherence_counts(
    attrs: ShapeAttributes,
    caption_attrs: CaptionAttributes,
    hr: np.ndarray,
    sr_true: np.ndarray,
    sr_swapped: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Per-sample counts: ``objects``, ``adherent`` (true-caption objects drawn as the caption's
    shape), ``edit_objects`` / ``edit_hits`` (objects of each swapped-caption image, and those
    drawn as the requested shape), and ``verdicts`` (the shape drawn in each swapped image's
    cells, majority, or None)."""
    occupied = attrs.occupied(hr, caption_attrs.background)
    shapes = attrs.shapes

    def verdict(image: np.ndarray) -> tuple[np.ndarray, str | None]:
        labels = attrs.classify(image, caption_attrs.colour, caption_attrs.background, occupied)
        valid = labels[labels >= 0]
        majority = shapes[int(np.bincount(valid).argmax())] if valid.size else None
        return labels, majority

    labels, majority = verdict(sr_true)
    true_index = shapes.index(caption_attrs.shape)
    out: dict[str, Any] = {
        "objects": int(occupied.sum()),
        "adherent": int((labels == true_index).sum()),
        "edit_objects": 0,
        "edit_hits": 0,
        "verdicts": {caption_attrs.shape: majority},
    }
    for shape, image in sr_swapped.items():
        labels, majority = verdict(image)
        out["edit_objects"] += int(occupied.sum())
        out["edit_hits"] += int((labels == shapes.index(shape)).sum())
        out["verdicts"][shape] = majority
    return out
