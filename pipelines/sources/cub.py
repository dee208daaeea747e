"""CUB-200-2011 birds with the Reed et al. captions (the AttnGAN / DF-GAN "birds" layout).

Layout (``path`` = the birds root)::

    CUB_200_2011/images.txt            "<id> <relpath>"
    CUB_200_2011/images/<relpath>      e.g. 001.Black_footed_Albatross/<name>.jpg
    CUB_200_2011/bounding_boxes.txt    "<id> <x> <y> <w> <h>"  (needed only for cub_bbox_crop)
    text_c10/<relpath minus .jpg>.txt  10 captions, one a line  (``text/`` is accepted too)

Splits come from ``cub_split_dir`` (``train/filenames.txt``, ``test/filenames.txt``, names = relpath
without extension); without it ``split`` is None. ``source_id`` is the relpath.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.sources.base import (
    SourceSample,
    read_split_lists,
    require_dir,
    require_file,
    strip_ext,
)
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)

CUB_DIR = "CUB_200_2011"
TEXT_DIRS = ("text_c10", "text")


def _read_table(uri: str, ncols: int, opts: StorageOptions) -> dict[str, list[str]]:
    """``{id: [fields...]}`` of a whitespace-separated CUB table; a bad line is a ValueError."""
    try:
        lines = storage.read_text(uri, opts).splitlines()
    except FileNotFoundError as exc:
        raise ValueError(f"source.path: CUB file not found: {uri}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"source.path: {uri} is not UTF-8 text") from exc
    table: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=ncols - 1) if ncols == 2 else line.split()
        if len(fields) != ncols:
            raise ValueError(f"source.path: {uri} line {number}: expected {ncols} fields: {line!r}")
        table[fields[0]] = fields[1:]
    return table


@dataclass
class CubSource:
    """CUB-200-2011 images, text_c10 captions, optional literature split and bird boxes."""

    path: str
    opts: StorageOptions
    bbox_crop: bool = False
    split_dir: str = ""
    name: str = "cub"

    def _cub(self, *parts: str) -> str:
        return storage.join(self.path, CUB_DIR, *parts)

    def text_dir(self) -> str:
        """``text_c10/`` if present, else ``text/``; ValueError if neither exists."""
        for name in TEXT_DIRS:
            uri = storage.join(self.path, name)
            if storage.is_dir(uri, self.opts):
                return uri
        raise ValueError(
            f"source.path: CUB captions not found: expected text_c10/ or text/ under {self.path}"
        )

    def check(self) -> None:
        require_dir(self.path, "source.path", self.opts)
        require_file(self._cub("images.txt"), "source.path", "CUB image list", self.opts)
        require_dir(self._cub("images"), "source.path", self.opts)
        if self.bbox_crop:
            boxes = self._cub("bounding_boxes.txt")
            require_file(boxes, "source.cub_bbox_crop", "CUB bounding boxes", self.opts)
        self.text_dir()
        if self.split_dir:
            require_dir(self.split_dir, "source.cub_split_dir", self.opts)
            if not read_split_lists(self.split_dir, "source.cub_split_dir", self.opts):
                raise ValueError(
                    f"source.cub_split_dir: no train/filenames.txt or test/filenames.txt "
                    f"under {self.split_dir}"
                )

    def list_samples(self) -> Iterator[SourceSample]:
        images = _read_table(self._cub("images.txt"), 2, self.opts)
        boxes: dict[str, list[str]] = {}
        if self.bbox_crop:
            boxes = _read_table(self._cub("bounding_boxes.txt"), 5, self.opts)
        splits: dict[str, str] = {}
        if self.split_dir:
            splits = read_split_lists(self.split_dir, "source.cub_split_dir", self.opts)
        text_dir, image_dir = self.text_dir(), self._cub("images")
        rows = sorted((fields[0].strip(), image_id) for image_id, fields in images.items())
        unlisted = 0
        for relpath, image_id in rows:
            stem = strip_ext(relpath)
            bbox, error = None, None
            if self.bbox_crop:
                try:
                    x, y, w, h = (float(v) for v in boxes[image_id])
                    bbox = (x, y, w, h)
                except (KeyError, ValueError):
                    error = "bbox_missing"
            split = splits.get(stem)
            unlisted += bool(splits) and split is None
            yield SourceSample(
                source_id=relpath,
                image=storage.join(image_dir, relpath),
                caption_uri=storage.join(text_dir, stem + ".txt"),
                split=split,
                bbox=bbox,
                error=error,
            )
        if unlisted:
            log.warning("CUB: %d images are in neither split list (split=None)", unlisted)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "path": self.path,
            "text_dir": self.text_dir(),
            "bbox_crop": self.bbox_crop,
            "split_dir": self.split_dir or None,
        }
