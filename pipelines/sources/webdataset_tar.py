"""Existing WebDataset tars (e.g. img2dataset output: ``00000.tar`` with ``KEY.jpg`` + ``KEY.txt``).

``path`` is one ``.tar`` or a directory/prefix whose ``*.tar`` files are read in sorted order. Each
tar's headers are scanned once (streaming, uncompressed tars only, since images are later read by
byte range). Members are grouped by WebDataset's rule: the key is the member path up to the FIRST
dot of its base name, the field is the rest (``a/x.b.jpg`` -> key ``a/x``, field ``b.jpg``), so
members need not be adjacent. A field is used as the image (caption) if it equals one of the image
extensions (the caption extension), or else if its last dot-component does. Keys without an image
are skipped. ``source_id`` is ``<tar name>/<key>``; ``byte_range`` locates the image in the tar.
A key with an absolute or ``..`` member name (``/abs/x.jpg``, ``../evil.jpg``) is rejected with
reason ``unsafe_member_name``, and none of its members is read.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pipelines import storage
from pipelines.sources.base import (
    CAPTION_MISSING,
    SourceSample,
    captions_from_bytes,
    relative,
    require_dir,
    require_file,
)
from pipelines.storage import StorageOptions

log = logging.getLogger(__name__)

KEY_FIELD = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext
GZIP_MAGIC = b"\x1f\x8b"


UNSAFE_MEMBER = "unsafe_member_name"


@dataclass
class TarEntry:
    """One key's members: (offset, length) of each non-caption field, caption bytes by field;
    ``unsafe``: a member name that is absolute or climbs out of the tar (``/x``, ``../x``)."""

    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    captions: dict[str, bytes] = field(default_factory=dict)
    unsafe: bool = False


def unsafe_name(name: str) -> bool:
    """An absolute member name, or one with a ``..`` component: never a sample (a tool that
    extracts the tar would write it outside its target)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _pick(fields: list[str], wanted: list[str]) -> str | None:
    """The first field equal to a wanted extension, else the first whose last component is one."""
    for ext in wanted:
        if ext in fields:
            return ext
    return next((f for f in sorted(fields) if f.rsplit(".", 1)[-1] in wanted), None)


def scan_tar(
    fileobj: IO[bytes], uri: str, caption_ext: str
) -> tuple[dict[str, TarEntry], int, str | None]:
    """Group a tar's members by key. Returns (entries, file size, error if the tar broke off)."""
    fileobj.seek(0, 2)
    size = fileobj.tell()
    fileobj.seek(0)
    if fileobj.read(2) == GZIP_MAGIC:
        raise ValueError(f"source.path: {uri} is compressed; byte ranges need uncompressed tars")
    fileobj.seek(0)
    entries: dict[str, TarEntry] = {}
    if size == 0:
        return entries, size, "empty file"
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                match = KEY_FIELD.match(name)
                if not member.isfile() or not match:
                    log.debug("%s: skipping member %r", uri, member.name)
                    continue
                key, field_name = match.group(1), match.group(2).lower()
                entry = entries.setdefault(key, TarEntry())
                if unsafe_name(member.name):
                    entry.unsafe = True
                    continue
                if field_name.rsplit(".", 1)[-1] == caption_ext:
                    reader = tar.extractfile(member)
                    entry.captions[field_name] = reader.read() if reader else b""
                else:
                    entry.ranges[field_name] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError) as exc:
        return entries, size, str(exc) or type(exc).__name__
    return entries, size, None


@dataclass
class WebDatasetTarSource:
    """Samples of existing WebDataset tars, read later by byte range."""

    path: str
    opts: StorageOptions
    image_ext: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    caption_ext: str = "txt"
    name: str = "webdataset"

    def single_tar(self) -> bool:
        return self.path.lower().endswith(".tar")

    def tar_uris(self) -> list[str]:
        """``path`` itself, or every ``.tar`` under the directory/prefix ``path`` (sorted)."""
        if self.single_tar():
            return [self.path]
        return storage.list_files(self.path, self.opts, suffixes=(".tar",))

    def check(self) -> None:
        if self.single_tar():
            require_file(self.path, "source.path", "tar", self.opts)
            return
        require_dir(self.path, "source.path", self.opts)
        if not self.tar_uris():
            raise ValueError(f"source.path: no .tar files under {self.path}")

    def list_samples(self) -> Iterator[SourceSample]:
        wanted = [e.lower().lstrip(".") for e in self.image_ext]
        caption_ext = self.caption_ext.lower().lstrip(".")
        for uri in self.tar_uris():
            label = uri.rsplit("/", 1)[-1] if self.single_tar() else relative(uri, self.path)
            with storage.open_for_tar_scan(uri, self.opts) as fileobj:
                entries, size, broken = scan_tar(fileobj, uri, caption_ext)
            if broken:
                log.warning(
                    "%s: tar is truncated or corrupt (%s); keeping whole samples", uri, broken
                )
            for key in sorted(entries):
                sample = _sample(entries[key], f"{label}/{key}", uri, size, wanted, caption_ext)
                if sample is None:
                    log.debug("%s: key %r has no image member, skipped", uri, key)
                else:
                    yield sample

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "path": self.path,
            "image_ext": list(self.image_ext),
            "caption_ext": self.caption_ext,
        }


def _sample(
    entry: TarEntry, source_id: str, uri: str, size: int, wanted: list[str], caption_ext: str
) -> SourceSample | None:
    """The SourceSample of one key, or None if it has no image member."""
    if entry.unsafe:  # listed, so that it is rejected with its reason, never read
        return SourceSample(source_id, uri, error=UNSAFE_MEMBER)
    image_field = _pick(list(entry.ranges), wanted)
    if image_field is None:
        return None
    byte_range = entry.ranges[image_field]
    caption_field = _pick(list(entry.captions), [caption_ext])
    captions: tuple[str, ...] = ()
    error: str | None = CAPTION_MISSING
    if caption_field is not None:
        captions, error = captions_from_bytes(entry.captions[caption_field])
    if byte_range[0] + byte_range[1] > size:
        error = "tar_truncated"
    return SourceSample(source_id, uri, captions=captions, byte_range=byte_range, error=error)
