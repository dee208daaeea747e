"""Any folder tree of images, each with a same-stem ``.txt`` caption file beside it.

``photos/a/cat.jpg`` + ``photos/a/cat.txt`` (one caption a line). Image suffixes: jpg, jpeg, png,
webp, bmp, tif, tiff, in any case. Hidden files and folders (a component starting with ``.``) are
skipped. An image without its ``.txt`` is still yielded, with ``error="caption_missing"``, so it is
counted as a reject. ``source_id`` is the path relative to ``path``; ``split`` is None, or with
``split_dirs`` the first directory of that path (``train/``, ``val/``, ``test/``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.sources.base import (
    CAPTION_MISSING,
    IMAGE_SUFFIXES,
    SourceSample,
    is_hidden,
    relative,
    require_dir,
    strip_ext,
)
from pipelines.storage import StorageOptions

SPLIT_DIRS = ("train", "val", "validation", "valid", "dev", "test")
OUTSIDE_SPLIT_DIR = "outside_split_dir"


@dataclass
class FolderSource:
    """Images + same-stem ``.txt`` captions anywhere under ``path``."""

    path: str
    opts: StorageOptions
    split_dirs: bool = False
    name: str = "folder"

    def check(self) -> None:
        require_dir(self.path, "source.path", self.opts)

    def list_samples(self) -> Iterator[SourceSample]:
        images: list[tuple[str, str]] = []
        caption_by_stem: dict[str, str] = {}
        for uri in storage.list_files(self.path, self.opts, suffixes=IMAGE_SUFFIXES + (".txt",)):
            rel = relative(uri, self.path)
            if is_hidden(rel):
                continue
            if rel.lower().endswith(".txt"):
                caption_by_stem.setdefault(strip_ext(rel), uri)
            else:
                images.append((rel, uri))
        for rel, uri in images:
            caption_uri = caption_by_stem.get(strip_ext(rel))
            split, error = self._split(rel)
            if error is None and not caption_uri:
                error = CAPTION_MISSING
            yield SourceSample(
                source_id=rel, image=uri, caption_uri=caption_uri, split=split, error=error
            )

    def _split(self, rel: str) -> tuple[str | None, str | None]:
        if not self.split_dirs:
            return None, None
        top, sep, _ = rel.partition("/")
        if not sep or top.lower() not in SPLIT_DIRS:
            return None, OUTSIDE_SPLIT_DIR
        return top.lower(), None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "path": self.path}
