"""Fixtures for pipeline tests: a real S3-compatible server (moto) on loopback, tiny images, tars.

The S3 fixtures live in :mod:`tests.services` (shared with tests/jobs): ``s3_server`` (session)
yields an :class:`S3Server` with ``.endpoint_url``, ``.bucket``, ``.options`` (a StorageOptions)
and ``.uri(key)``; ``s3_prefix`` is a fresh, per-test ``s3://bucket/<uuid>`` prefix, and
``upload_tree(local_dir, s3_uri)`` copies a fixture there.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.services import AWS_ENV, S3Server

__all__ = ["AWS_ENV", "S3Server", "image_bytes", "write_file", "write_tar"]


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6), color: int = 0) -> bytes:
    """A tiny solid-colour image encoded as ``fmt`` (PNG, JPEG, WEBP, BMP, TIFF)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (color % 256, 40, 200)).save(buf, format=fmt)
    return buf.getvalue()


def write_file(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An uncompressed tar with ``members`` in the given order (img2dataset style)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path
