"""A table of (image path/URI, caption) rows: parquet, CSV/TSV or JSONL (optionally ``.gz``).

``path`` is one manifest file, or a directory whose manifest files are read in sorted order. Rows
are read in bounded batches (parquet ``iter_batches``; CSV/JSONL line by line), so a huge manifest
is never loaded at once. A relative image path resolves against the manifest's directory. A
caption cell may be a string or a list of strings. ``source_id`` is ``<manifest name>:<row>``
(row = 0-based data row, zero-padded), so rows that repeat an image stay distinct samples.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pipelines import storage
from pipelines.sources.base import (
    CAPTION_MISSING,
    CAPTION_UNDECODABLE,
    SourceSample,
    relative,
    require_dir,
)
from pipelines.storage import StorageOptions

MANIFEST_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz")
PARQUET_BATCH_ROWS = 8192
SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
INVALID_ROW = object()  # a JSONL line that is not a JSON object


def manifest_format(uri: str) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl`` from the file name; ValueError otherwise."""
    name = uri.lower()
    for suffix in MANIFEST_SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1]
    raise ValueError(f"source.path: unknown manifest type {uri} (use one of {MANIFEST_SUFFIXES})")


def _text_stream(raw: IO[bytes], uri: str) -> io.TextIOWrapper:
    """Text lines of a (maybe gzipped) file; non-UTF-8 bytes survive as surrogates to flag later."""
    binary: IO[bytes] = gzip.GzipFile(fileobj=raw) if uri.lower().endswith(".gz") else raw
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _missing_columns(wanted: list[str], present: list[str], uri: str) -> None:
    """ValueError naming the config key and column, listing the columns present."""
    for key, column in zip(
        ("source.manifest_image_column", "source.manifest_caption_column"), wanted
    ):
        if column not in present:
            raise ValueError(f"{key}: column {column!r} not in {uri}; columns present: {present}")


def _joiner(base_dir: str):
    """``image -> URI`` relative to ``base_dir`` (``storage.join``, fast for the common case of
    a relative path under a local directory)."""
    if storage.is_remote(base_dir):
        return lambda image: storage.join(base_dir, image)
    prefix = base_dir.rstrip("/") + "/" if base_dir else ""

    def join(image: str) -> str:
        if "://" in image or image.startswith("/"):
            return storage.join(base_dir, image)
        return prefix + image

    return join


def _captions(cell: Any) -> tuple[tuple[str, ...], str | None]:
    """A caption cell (string, bytes, list of them, or null) -> (captions, error)."""
    if type(cell) is str and not SURROGATE.search(cell):  # the common case, fast
        caption = cell.strip()
        return ((caption,), None) if caption else ((), CAPTION_MISSING)
    values = list(cell) if isinstance(cell, (list, tuple)) else [cell]
    captions: list[str] = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return (), CAPTION_UNDECODABLE
        if isinstance(value, str):
            if SURROGATE.search(value):
                return (), CAPTION_UNDECODABLE
            if value.strip():
                captions.append(value.strip())
    return tuple(captions), (None if captions else CAPTION_MISSING)


@dataclass
class ManifestSource:
    """Rows of (image, caption) from one manifest file or a directory of them."""

    path: str
    opts: StorageOptions
    image_column: str = "image"
    caption_column: str = "caption"
    name: str = "manifest"

    def manifest_uris(self) -> list[str]:
        """The manifest files: ``path`` itself, or the manifests under the directory ``path``."""
        if storage.is_file(self.path, self.opts):
            manifest_format(self.path)
            return [self.path]
        if self.path.lower().endswith(MANIFEST_SUFFIXES):
            raise ValueError(f"source.path: manifest not found: {self.path}")
        require_dir(self.path, "source.path", self.opts)
        return storage.list_files(self.path, self.opts, suffixes=MANIFEST_SUFFIXES)

    def check(self) -> None:
        uris = self.manifest_uris()
        if not uris:
            raise ValueError(f"source.path: no manifest files {MANIFEST_SUFFIXES} in {self.path}")
        for uri in uris:
            next(iter(self._rows(uri, header_only=True)), None)

    def list_samples(self) -> Iterator[SourceSample]:
        single = storage.is_file(self.path, self.opts)
        for uri in self.manifest_uris():
            label = uri.rsplit("/", 1)[-1] if single else relative(uri, self.path)
            join = _joiner(storage.parent(uri))
            for row, (image_cell, caption_cell) in enumerate(self._rows(uri)):
                yield self._sample(f"{label}:{row:09d}", join, image_cell, caption_cell)

    def _sample(self, source_id: str, join, image_cell: Any, caption: Any) -> SourceSample:
        if image_cell is INVALID_ROW:
            return SourceSample(source_id, image="", error="manifest_row_invalid")
        captions, error = _captions(caption)
        image = image_cell.strip() if isinstance(image_cell, str) else ""
        if not image:
            return SourceSample(source_id, image="", captions=captions, error="image_missing")
        if SURROGATE.search(image):
            return SourceSample(source_id, image="", error="image_path_undecodable")
        if "://" in image and SCHEME.match(image) and not storage.is_supported(image):
            return SourceSample(source_id, image=image, error="image_uri_unsupported")
        return SourceSample(source_id, join(image), captions, error=error)

    def _rows(self, uri: str, header_only: bool = False) -> Iterator[tuple[Any, Any]]:
        """(image cell, caption cell) per row; checks the columns first."""
        columns = [self.image_column, self.caption_column]
        fmt = manifest_format(uri)
        with storage.open_read(uri, self.opts) as raw:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(raw)
                _missing_columns(columns, parquet.schema_arrow.names, uri)
                if header_only:
                    return
                for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                    images, captions = (batch.column(c).to_pylist() for c in columns)
                    yield from zip(images, captions)
            elif fmt in ("csv", "tsv"):
                reader = csv.DictReader(
                    _text_stream(raw, uri), delimiter="," if fmt == "csv" else "\t"
                )
                _missing_columns(columns, list(reader.fieldnames or []), uri)
                if header_only:
                    return
                for record in reader:
                    yield record.get(columns[0]), record.get(columns[1])
            else:
                yield from _jsonl_rows(_text_stream(raw, uri), columns, uri, header_only)


def _jsonl_rows(
    lines: io.TextIOWrapper, columns: list[str], uri: str, header_only: bool
) -> Iterator[tuple[Any, Any]]:
    """JSONL rows; a line that is not a JSON object gives ``INVALID_ROW`` (a reject, no crash)."""
    checked = False
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            yield INVALID_ROW, None
            continue
        if not checked:
            _missing_columns(columns, list(record), uri)
            checked = True
            if header_only:
                return
        yield record.get(columns[0]), record.get(columns[1])
