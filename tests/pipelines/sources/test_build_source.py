"""SourceConfig, build_source and validate: the config keys named in every error."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from pipelines.sources import SOURCE_KINDS, SourceConfig, build_source, validate
from pipelines.sources.celeba import CelebASource
from pipelines.sources.coco import CocoSource
from pipelines.sources.cub import CubSource
from pipelines.sources.folder import FolderSource
from pipelines.sources.manifest import ManifestSource
from pipelines.sources.webdataset_tar import WebDatasetTarSource
from pipelines.storage import StorageOptions


def test_build_source_picks_the_layout() -> None:
    expected = {
        "coco": CocoSource,
        "cub": CubSource,
        "celeba": CelebASource,
        "folder": FolderSource,
        "manifest": ManifestSource,
        "webdataset": WebDatasetTarSource,
    }
    assert set(SOURCE_KINDS) == set(expected)
    for kind, cls in expected.items():
        source = build_source(SourceConfig(kind=kind, path="/nowhere"), StorageOptions())  # type: ignore[arg-type]
        assert isinstance(source, cls) and source.name == kind


def test_defaults_are_json_safe() -> None:
    cfg = SourceConfig(kind="webdataset", path="s3://b/shards")
    assert json.loads(json.dumps(asdict(cfg)))["webdataset_image_ext"] == [
        "jpg",
        "jpeg",
        "png",
        "webp",
    ]
    assert cfg.webdataset_caption_ext == "txt" and cfg.coco_captions == []
    assert SourceConfig(kind="folder").coco_captions is not cfg.coco_captions


def test_validate_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source.kind: unknown 'laion'"):
        validate(SourceConfig(kind="laion", path=str(tmp_path)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source.path: required"):
        validate(SourceConfig(kind="folder"))
    for kind in ("coco", "cub", "celeba", "folder", "manifest", "webdataset"):
        with pytest.raises(ValueError, match=r"source.path: .*not found"):
            validate(SourceConfig(kind=kind, path=str(tmp_path / "missing")))  # type: ignore[arg-type]
