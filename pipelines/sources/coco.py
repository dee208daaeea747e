"""COCO captions: the official ``annotations/captions_<split><year>.json`` files plus image folders.

Layout (``path`` = the COCO root)::

    annotations/captions_train2014.json   {"images": [{"id", "file_name"}], "annotations": [...]}
    train2014/<file_name>                 or images/train2014/<file_name>, or <file_name> directly

``split`` is the letters of the json's split ("train", "val"); ``source_id`` is
``<split-folder>/<file_name>``; all captions of an image are grouped, in annotation-id order.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines import storage
from pipelines.sources.base import CAPTION_MISSING, SourceSample, require_dir
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)

SPLIT_RE = re.compile(r"^captions_([A-Za-z]+)(\d*)\.json$")


@dataclass
class CaptionsFile:
    """One parsed captions json: its split and where its images live."""

    uri: str
    split_folder: str  # "train2014"
    split: str  # "train"


def split_of(json_uri: str) -> tuple[str, str]:
    """``.../captions_train2014.json`` -> ``("train2014", "train")``."""
    name = json_uri.rstrip("/").rsplit("/", 1)[-1]
    match = SPLIT_RE.match(name)
    if not match:
        raise ValueError(f"source.coco_captions: expected captions_<split>.json, got {json_uri}")
    return match.group(1) + match.group(2), match.group(1).lower()


def _load_json(uri: str, opts: StorageOptions) -> dict[str, Any]:
    try:
        data = json.loads(storage.read_bytes(uri, opts))
    except FileNotFoundError as exc:
        raise ValueError(f"source.coco_captions: captions file not found: {uri}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"source.coco_captions: {uri} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"source.coco_captions: {uri} has no 'images' list (not a COCO json)")
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"source.coco_captions: {uri} has no 'annotations' list")
    return data


@dataclass
class CocoSource:
    """COCO-style captions json(s) + image folders."""

    path: str
    opts: StorageOptions
    captions_files: list[str] = field(default_factory=list)  # relative to path, or absolute
    name: str = "coco"

    def json_uris(self) -> list[str]:
        """The captions files: the configured ones, or every ``annotations/captions_*.json``."""
        if self.captions_files:
            return [storage.join(self.path, f) for f in self.captions_files]
        ann_dir = storage.join(self.path, "annotations")
        if not storage.is_dir(ann_dir, self.opts):
            return []
        found = storage.list_files(ann_dir, self.opts, suffixes=(".json",))
        return [u for u in found if SPLIT_RE.match(u.rsplit("/", 1)[-1])]

    def check(self) -> None:
        require_dir(self.path, "source.path", self.opts)
        uris = self.json_uris()
        if not uris:
            raise ValueError(
                f"source.path: COCO layout needs annotations/captions_*.json under {self.path} "
                "(or set source.coco_captions)"
            )
        for uri in uris:
            split_of(uri)
            if not storage.is_file(uri, self.opts):
                raise ValueError(f"source.coco_captions: captions file not found: {uri}")
            self._image_dir(uri, _load_json(uri, self.opts))

    def _image_dir(self, json_uri: str, data: dict[str, Any]) -> str:
        """The folder holding this json's images, found by probing its first image."""
        split_folder, _ = split_of(json_uri)
        candidates = [
            storage.join(self.path, split_folder),
            storage.join(self.path, "images", split_folder),
            self.path,
        ]
        names = sorted(str(img.get("file_name", "")) for img in data["images"])
        if not names:
            return candidates[0]
        for directory in candidates:
            if storage.is_file(storage.join(directory, names[0]), self.opts):
                return directory
        raise ValueError(
            f"source.path: images of {json_uri} not found: {names[0]} is in none of "
            + ", ".join(candidates)
        )

    def list_samples(self) -> Iterator[SourceSample]:
        samples: list[SourceSample] = []
        for uri in self.json_uris():
            split_folder, split = split_of(uri)
            data = _load_json(uri, self.opts)
            image_dir = self._image_dir(uri, data)
            samples += _samples_of(data, image_dir, split_folder, split)
        samples.sort(key=lambda s: s.source_id)
        yield from samples

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "path": self.path, "captions_files": self.json_uris()}


def _samples_of(
    data: dict[str, Any], image_dir: str, split_folder: str, split: str
) -> list[SourceSample]:
    """One sample per image entry, with its captions grouped (annotation-id order)."""
    by_image: dict[Any, list[tuple[Any, str]]] = defaultdict(list)
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            continue
        caption = ann.get("caption")
        if isinstance(caption, str) and caption.strip():
            order = ann.get("id", index)
            by_image[ann.get("image_id")].append(
                (order if isinstance(order, int) else index, caption)
            )
    out = []
    for image in data["images"]:
        if not isinstance(image, dict) or not image.get("file_name"):
            log.debug("skipping a COCO image entry without file_name: %r", image)
            continue
        file_name = str(image["file_name"])
        captions = tuple(c.strip() for _, c in sorted(by_image.get(image.get("id"), [])))
        out.append(
            SourceSample(
                source_id=f"{split_folder}/{file_name}",
                image=storage.join(image_dir, file_name),
                captions=captions,
                split=split,
                error=None if captions else CAPTION_MISSING,
            )
        )
    return out
