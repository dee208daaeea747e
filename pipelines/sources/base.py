"""What every corpus source yields (:class:`SourceSample`) and the helpers the layouts share.

A source only lists metadata on the driver: image URIs, captions it can get cheaply, splits and
boxes. Images are never decoded there. Captions stored one file per image are read later, on a
worker, by :func:`load_captions`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines import storage
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
CAPTION_MISSING = "caption_missing"
CAPTION_UNDECODABLE = "caption_undecodable"

PICKLE_HELP = (
    "pickle files are never loaded from data (unpickling can run code). Convert each one once, "
    "somewhere you trust the file, to one name per line:\n"
    "  python -c \"import pickle,sys; print('\\n'.join(pickle.load(open(sys.argv[1], 'rb'), "
    "encoding='latin1')))\" train/filenames.pickle > train/filenames.txt\n"
    "(and the same for test/)"
)


@dataclass(frozen=True)
class SourceSample:
    """One image of a corpus, as listed on the driver."""

    source_id: str  # stable id within the corpus (e.g. relative image path, or tar + member key)
    image: str  # URI of the image file (local path or s3://...), or of the tar holding it
    captions: tuple[str, ...] = ()  # captions read at listing time (COCO json, manifests, tars)
    caption_uri: str | None = None  # or: a .txt read later on the worker (one caption per line)
    split: str | None = None  # the dataset's own split ("train"/"test"/...), None if it has none
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h in pixels (CUB bird box)
    byte_range: tuple[int, int] | None = None  # (offset, length) of the image inside `image`
    error: str | None = None  # why this sample is already known bad (e.g. "caption_missing")


class Source(Protocol):
    """A corpus layout: lists samples in a deterministic order and describes itself."""

    name: str

    def list_samples(self) -> Iterator[SourceSample]:
        """Metadata only, never decoded images; the same order on every call."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description for the dataset manifest."""
        ...

    def check(self) -> None:
        """Raise ValueError naming the config key/file if the layout is incomplete."""
        ...


def captions_from_bytes(data: bytes) -> tuple[tuple[str, ...], str | None]:
    """Captions of a text file, one per line (stripped, empty ones dropped), and an error reason."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return (), CAPTION_UNDECODABLE
    captions = tuple(line.strip() for line in text.splitlines() if line.strip())
    return captions, (None if captions else CAPTION_MISSING)


def load_captions(
    sample: SourceSample, opts: StorageOptions | None = None
) -> tuple[tuple[str, ...], str | None]:
    """``(captions, error_reason)``: the sample's listed captions, or its ``caption_uri`` read now.

    Reasons: ``caption_missing`` (no file, or no non-empty line), ``caption_undecodable`` (not
    UTF-8), or the sample's own ``error``.
    """
    if sample.error:
        return sample.captions, sample.error
    if sample.captions:
        return sample.captions, None
    if sample.caption_uri is None:
        return (), CAPTION_MISSING
    try:
        data = storage.read_bytes(sample.caption_uri, opts)
    except FileNotFoundError:
        return (), CAPTION_MISSING
    return captions_from_bytes(data)


def relative(uri: str, root: str) -> str:
    """``uri`` relative to the directory ``root``, with ``/`` separators."""
    if storage.is_remote(uri):
        return uri[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(uri, root).replace(os.sep, "/")


def strip_ext(name: str) -> str:
    """``a/b.c.jpg`` -> ``a/b.c`` (only the last extension)."""
    head, _, tail = name.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}" if head else stem


def is_hidden(rel_path: str) -> bool:
    """True if any component starts with a dot (``.ipynb_checkpoints/``, macOS ``._x.jpg``)."""
    return any(part.startswith(".") for part in rel_path.split("/"))


def require_dir(uri: str, key: str, opts: StorageOptions | None) -> None:
    """ValueError ``"<key>: directory not found: <uri>"`` unless ``uri`` is a directory/prefix."""
    if not storage.is_dir(uri, opts):
        raise ValueError(f"{key}: directory not found: {uri}")


def require_file(uri: str, key: str, what: str, opts: StorageOptions | None) -> None:
    """ValueError naming ``key``, what is missing and the file, unless ``uri`` is a file."""
    if not storage.is_file(uri, opts):
        raise ValueError(f"{key}: {what} not found: {uri}")


def read_split_lists(split_dir: str, key: str, opts: StorageOptions | None) -> dict[str, str]:
    """``{name: split}`` from ``<split_dir>/{train,test}/filenames.txt`` (one name per line).

    Names are image paths without extension. ``.pickle`` lists are refused with a conversion recipe;
    a name listed in both splits is a ValueError. An empty result means "no split lists found".
    """
    splits: dict[str, str] = {}
    for split in ("train", "test"):
        txt = storage.join(split_dir, split, "filenames.txt")
        if not storage.is_file(txt, opts):
            pickle_path = storage.join(split_dir, split, "filenames.pickle")
            if storage.is_file(pickle_path, opts):
                raise ValueError(f"{key}: found {pickle_path} but no {txt}; {PICKLE_HELP}")
            continue
        try:
            names = storage.read_text(txt, opts).splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{key}: {txt} is not UTF-8 text") from exc
        for name in (n.strip() for n in names):
            if not name:
                continue
            name = strip_ext(name) if name.lower().endswith(IMAGE_SUFFIXES) else name
            if splits.get(name, split) != split:
                raise ValueError(f"{key}: {name!r} is listed in both train and test")
            splits[name] = split
    return splits
