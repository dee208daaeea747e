"""MM-CelebA-HQ (TediGAN captions), the CLIP-SR / DF-GAN "celeba" layout.

Layout (``path`` = the dataset root)::

    image/<key>.jpg          the faces (any image suffix; sub-folders allowed)
    text/<key>.txt           ~10 captions, one a line
    train/filenames.txt      optional split lists, one key a line (``.pickle`` lists are refused)
    test/filenames.txt

``source_id`` is the image path relative to ``image/``; ``split`` is None without split lists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.sources.base import (
    IMAGE_SUFFIXES,
    SourceSample,
    is_hidden,
    read_split_lists,
    relative,
    require_dir,
    strip_ext,
)
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)


@dataclass
class CelebASource:
    """``image/`` + ``text/`` + optional ``{train,test}/filenames.txt``."""

    path: str
    opts: StorageOptions
    name: str = "celeba"

    def check(self) -> None:
        require_dir(self.path, "source.path", self.opts)
        require_dir(storage.join(self.path, "image"), "source.path", self.opts)
        require_dir(storage.join(self.path, "text"), "source.path", self.opts)
        read_split_lists(self.path, "source.path", self.opts)

    def list_samples(self) -> Iterator[SourceSample]:
        image_dir, text_dir = storage.join(self.path, "image"), storage.join(self.path, "text")
        splits = read_split_lists(self.path, "source.path", self.opts)
        for uri in storage.list_files(image_dir, self.opts, suffixes=IMAGE_SUFFIXES):
            rel = relative(uri, image_dir)
            if is_hidden(rel):
                continue
            key = strip_ext(rel)
            yield SourceSample(
                source_id=rel,
                image=uri,
                caption_uri=storage.join(text_dir, key + ".txt"),
                split=splits.get(key),
            )

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "path": self.path}
