"""Checks of local output paths that every job makes before any work."""

from __future__ import annotations

from pathlib import Path


def blocking_file(path: str | Path) -> Path | None:
    """The existing non-directory that stands where the output directory ``path`` must be: the
    path itself or one of its parents (``out.png``, ``notes.txt/sub``), else None. URIs
    (``s3://...``) are not local: None."""
    if "://" in str(path):
        return None
    path = Path(path).expanduser()
    taken = next((p for p in (path, *path.parents) if p.exists()), None)
    return taken if taken is not None and not taken.is_dir() else None
