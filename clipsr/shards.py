"""The shard format written by ``clipsr preprocess`` and read by training and evaluation.

A dataset directory (local or ``s3://``) holds::

    {split}-{NNNNNN}.tar          WebDataset shard: members grouped by key, GNU tar, fixed headers
    {split}-{NNNNNN}.parquet        per-sample metadata (written samples and rejects)
    {split}-{NNNNNN}_stats.json     written last: the shard's commit marker
    manifest.json                   counts per split, every shard with samples and sha256, config
    sizes.json                      {"train-000000.tar": n, ...} (webdataset/open_clip convention)
    rejects.jsonl                   every rejected sample with its reason

Each sample ``KEY`` (lowercase hex, no dots) has the members ``KEY.hr.png`` (or jpg/webp),
``KEY.lr_x4.png`` ... one per scale, ``KEY.txt`` (one caption), ``KEY.captions.json`` (all) and
``KEY.json`` (source id, sizes, crop, degradation parameters and seeds).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIZES = "sizes.json"
REJECTS = "rejects.jsonl"
_KEY = re.compile(r"[0-9a-z_-]+")


def sample_key(source_id: str) -> str:
    """A stable, dot-free key for a source id (unique across a dataset: 80 bits of sha256)."""
    return hashlib.sha256(source_id.encode("utf-8")).hexdigest()[:20]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def lr_member(scale: int) -> str:
    return f"lr_x{scale}.png"


@dataclass
class ShardSample:
    """One sample's members (extension -> bytes), in the order they are written."""

    key: str
    members: dict[str, bytes]


def sample_members(
    hr: bytes,
    hr_format: str,
    lrs: dict[int, bytes],
    captions: list[str],
    meta: dict[str, Any],
) -> dict[str, bytes]:
    members = {f"hr.{hr_format}": hr}
    members.update({lr_member(s): lrs[s] for s in sorted(lrs)})
    members["txt"] = captions[0].encode("utf-8")
    members["captions.json"] = json.dumps(captions, ensure_ascii=False).encode("utf-8")
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members


def write_tar(out: BinaryIO, samples: Iterable[ShardSample]) -> int:
    """Write samples as a byte-reproducible GNU tar (mtime 0, root, 0644, members grouped by
    key in a fixed order). Returns the number of samples."""
    count = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for sample in samples:
            if not _KEY.fullmatch(sample.key):
                raise ValueError(f"invalid sample key {sample.key!r}: use [0-9a-z_-], no dots")
            for ext, data in sample.members.items():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
