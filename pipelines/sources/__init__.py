"""Corpus sources of ``clipsr preprocess``: one module per layout, one config, one factory.

``validate(cfg, opts)`` fails fast (ValueError naming the config key or file) before any work;
``build_source(cfg, opts)`` is cheap and returns a :class:`~pipelines.sources.base.Source` whose
``list_samples()`` yields :class:`~pipelines.sources.base.SourceSample` metadata in a fixed order.

CUB / CelebA split lists must be ``{train,test}/filenames.txt`` (one name per line); the
literature's ``filenames.pickle`` files are refused (unpickling data can run code). Convert them
once, where you trust them::

    python -c "import pickle,sys; print('\\n'.join(pickle.load(open(sys.argv[1], 'rb'),
        encoding='latin1')))" train/filenames.pickle > train/filenames.txt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from pipelines.sources.base import Source, SourceSample, load_captions
from pipelines.sources.celeba import CelebASource
from pipelines.sources.coco import CocoSource
from pipelines.sources.cub import CubSource
from pipelines.sources.folder import FolderSource
from pipelines.sources.manifest import ManifestSource
from pipelines.sources.webdataset_tar import WebDatasetTarSource
from pipelines.storage import StorageOptions

SourceKind = Literal["coco", "cub", "celeba", "folder", "manifest", "webdataset"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)

__all__ = [
    "SOURCE_KINDS",
    "Source",
    "SourceConfig",
    "SourceSample",
    "build_source",
    "load_captions",
    "validate",
]


@dataclass
class SourceConfig:
    """Which corpus to read and where. Only the fields of ``kind`` matter."""

    kind: SourceKind
    path: str = ""  # root dir, manifest file/dir, or tar/tar prefix; local or s3://
    coco_captions: list[str] = field(default_factory=list)  # default: annotations/captions_*.json
    cub_bbox_crop: bool = False
    cub_split_dir: str = ""  # holds {train,test}/filenames.txt
    manifest_image_column: str = "image"
    manifest_caption_column: str = "caption"
    webdataset_image_ext: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    webdataset_caption_ext: str = "txt"
    # folder: the first directory level names the split (train/, val/, test/); images outside
    # a split directory are rejected ("outside_split_dir").
    folder_split_dirs: bool = False


def build_source(cfg: SourceConfig, opts: StorageOptions | None = None) -> Source:
    """The source for ``cfg.kind`` (no I/O; call :func:`validate` first to fail fast)."""
    opts = opts or StorageOptions()
    if cfg.kind not in SOURCE_KINDS:
        raise ValueError(f"source.kind: unknown {cfg.kind!r} (expected one of {SOURCE_KINDS})")
    if not cfg.path:
        raise ValueError("source.path: required (a local path or s3:// URI)")
    if cfg.kind == "coco":
        return CocoSource(cfg.path, opts, captions_files=list(cfg.coco_captions))
    if cfg.kind == "cub":
        return CubSource(cfg.path, opts, bbox_crop=cfg.cub_bbox_crop, split_dir=cfg.cub_split_dir)
    if cfg.kind == "celeba":
        return CelebASource(cfg.path, opts)
    if cfg.kind == "folder":
        return FolderSource(cfg.path, opts, split_dirs=cfg.folder_split_dirs)
    if cfg.kind == "manifest":
        return ManifestSource(
            cfg.path, opts, cfg.manifest_image_column, cfg.manifest_caption_column
        )
    if not cfg.webdataset_image_ext:
        raise ValueError("source.webdataset_image_ext: must list at least one extension")
    return WebDatasetTarSource(
        cfg.path, opts, list(cfg.webdataset_image_ext), cfg.webdataset_caption_ext
    )


def validate(cfg: SourceConfig, opts: StorageOptions | None = None) -> None:
    """Raise ValueError naming the config key/file unless the corpus layout is complete."""
    build_source(cfg, opts).check()
