"""CocoSource: official captions_*.json files with images under train2014/ or images/val2014/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.sources import SourceConfig, build_source, validate
from tests.pipelines.conftest import S3Server, image_bytes, write_file

Uploader = Callable[[Path, str], None]


def captions_json(images: list[tuple[int, str]], anns: list[tuple[int, int, str]]) -> str:
    return json.dumps(
        {
            "info": {},
            "images": [{"id": i, "file_name": f, "width": 8, "height": 6} for i, f in images],
            "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in anns],
        }
    )


def make_coco(root: Path) -> Path:
    train = [(9, "COCO_train2014_000000000009.jpg"), (3, "COCO_train2014_000000000003.jpg")]
    write_file(
        root / "annotations" / "captions_train2014.json",
        captions_json(
            train + [(5, "COCO_train2014_000000000005.jpg")],
            [(20, 9, "Two plates of food. "), (11, 9, "A meal on a table"), (12, 3, "A dog")],
        ),
    )
    write_file(
        root / "annotations" / "captions_val2014.json",
        captions_json([(42, "COCO_val2014_000000000042.jpg")], [(1, 42, "A bus on a street")]),
    )
    write_file(root / "annotations" / "instances_train2014.json", "{}")  # not a captions file
    for _, name in train + [(5, "COCO_train2014_000000000005.jpg")]:
        write_file(root / "train2014" / name, image_bytes("JPEG"))
    write_file(root / "images" / "val2014" / "COCO_val2014_000000000042.jpg", image_bytes("JPEG"))
    return root


def test_coco_groups_captions_and_splits(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    cfg = SourceConfig(kind="coco", path=str(root))
    validate(cfg)
    samples = list(build_source(cfg).list_samples())
    assert [(s.source_id, s.split) for s in samples] == [
        ("train2014/COCO_train2014_000000000003.jpg", "train"),
        ("train2014/COCO_train2014_000000000005.jpg", "train"),
        ("train2014/COCO_train2014_000000000009.jpg", "train"),
        ("val2014/COCO_val2014_000000000042.jpg", "val"),
    ]
    by_id = {s.source_id: s for s in samples}
    nine = by_id["train2014/COCO_train2014_000000000009.jpg"]
    assert nine.captions == ("A meal on a table", "Two plates of food.")  # annotation-id order
    assert nine.image == str(root / "train2014" / "COCO_train2014_000000000009.jpg")
    assert nine.error is None and nine.caption_uri is None
    assert by_id["train2014/COCO_train2014_000000000005.jpg"].error == "caption_missing"
    val = by_id["val2014/COCO_val2014_000000000042.jpg"]
    assert val.image == str(root / "images" / "val2014" / "COCO_val2014_000000000042.jpg")
    assert val.captions == ("A bus on a street",)
    described = build_source(cfg).describe()
    assert described["kind"] == "coco" and len(described["captions_files"]) == 2


def test_coco_explicit_captions_file_and_flat_images(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_file(
        root / "meta" / "captions_val2017.json", captions_json([(1, "a.jpg")], [(1, 1, "x")])
    )
    write_file(root / "a.jpg", image_bytes("JPEG"))
    cfg = SourceConfig(kind="coco", path=str(root), coco_captions=["meta/captions_val2017.json"])
    validate(cfg)
    [sample] = build_source(cfg).list_samples()
    assert (sample.source_id, sample.image, sample.split) == (
        "val2017/a.jpg",
        str(root / "a.jpg"),
        "val",
    )


def test_coco_validate_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source.path: directory not found"):
        validate(SourceConfig(kind="coco", path=str(tmp_path / "none")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="source.path: COCO layout needs annotations/captions_"):
        validate(SourceConfig(kind="coco", path=str(tmp_path / "empty")))
    cfg = SourceConfig(kind="coco", path=str(tmp_path / "empty"), coco_captions=["captions_x.json"])
    with pytest.raises(ValueError, match="source.coco_captions: captions file not found: .*x.json"):
        validate(cfg)
    root = make_coco(tmp_path / "noimages")
    for path in (root / "train2014").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="images of .*captions_train2014.json not found"):
        validate(SourceConfig(kind="coco", path=str(root)))
    write_file(root / "annotations" / "captions_train2014.json", "{not json")
    with pytest.raises(ValueError, match="captions_train2014.json is not valid JSON"):
        validate(SourceConfig(kind="coco", path=str(root)))


def test_coco_on_s3(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str, upload_tree: Uploader
) -> None:
    upload_tree(make_coco(tmp_path / "coco"), s3_prefix + "/coco")
    cfg = SourceConfig(kind="coco", path=s3_prefix + "/coco")
    validate(cfg, s3_server.options)
    samples = list(build_source(cfg, s3_server.options).list_samples())
    assert len(samples) == 4
    assert samples[-1].image == f"{s3_prefix}/coco/images/val2014/COCO_val2014_000000000042.jpg"
