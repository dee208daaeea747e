"""CubSource: CUB-200-2011 tree + text_c10 captions, literature split, bird boxes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.sources import SourceConfig, build_source, load_captions, validate
from tests.pipelines.conftest import S3Server, image_bytes, write_file

Uploader = Callable[[Path, str], None]

ALBATROSS = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18"
AUKLET = "002.Laysan_Albatross/Laysan_Albatross_0002_1027"
WREN = "003.Sooty_Albatross/Sooty_Albatross_0031_1066"


def make_cub(root: Path, text_dir: str = "text_c10") -> Path:
    cub = root / "CUB_200_2011"
    names = [AUKLET, ALBATROSS, WREN]  # images.txt order is by id, not by name
    write_file(cub / "images.txt", "".join(f"{i} {n}.jpg\n" for i, n in enumerate(names, 1)))
    write_file(cub / "bounding_boxes.txt", "1 60.0 27.0 325.0 304.0\n2 139 30 153 264\n")
    for name in names:
        write_file(cub / "images" / f"{name}.jpg", image_bytes("JPEG"))
    captions = "".join(f"caption {i} of the bird\n" for i in range(10))
    write_file(root / text_dir / f"{ALBATROSS}.txt", captions)
    write_file(root / text_dir / f"{AUKLET}.txt", "un oiseau blessé".encode("latin-1"))
    return root


def test_cub_samples_captions_split_bbox(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "birds")
    write_file(root / "train" / "filenames.txt", f"{ALBATROSS}\n{AUKLET}\n")
    write_file(root / "test" / "filenames.txt", f"{WREN}\n")
    cfg = SourceConfig(kind="cub", path=str(root), cub_bbox_crop=True, cub_split_dir=str(root))
    validate(cfg)
    samples = list(build_source(cfg).list_samples())
    assert [(s.source_id, s.split) for s in samples] == [
        (f"{ALBATROSS}.jpg", "train"),
        (f"{AUKLET}.jpg", "train"),
        (f"{WREN}.jpg", "test"),
    ]
    albatross, auklet, wren = samples
    assert albatross.image == str(root / "CUB_200_2011" / "images" / f"{ALBATROSS}.jpg")
    assert albatross.caption_uri == str(root / "text_c10" / f"{ALBATROSS}.txt")
    assert albatross.bbox == (139.0, 30.0, 153.0, 264.0)  # id 2
    assert auklet.bbox == (60.0, 27.0, 325.0, 304.0)  # id 1
    assert wren.bbox is None and wren.error == "bbox_missing"
    captions, error = load_captions(albatross)
    assert error is None and len(captions) == 10 and captions[0] == "caption 0 of the bird"
    assert load_captions(auklet) == ((), "caption_undecodable")


def test_cub_defaults_no_split_no_bbox_text_dir(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "birds", text_dir="text")
    cfg = SourceConfig(kind="cub", path=str(root))
    validate(cfg)
    samples = list(build_source(cfg).list_samples())
    assert len(samples) == 3
    assert all(s.split is None and s.bbox is None and s.error is None for s in samples)
    assert samples[0].caption_uri == str(root / "text" / f"{ALBATROSS}.txt")
    assert load_captions(samples[2]) == ((), "caption_missing")  # WREN has no caption file
    assert build_source(cfg).describe()["text_dir"] == str(root / "text")


def test_cub_validate_messages(tmp_path: Path) -> None:
    root = tmp_path / "birds"
    write_file(root / "readme.txt", "")
    with pytest.raises(ValueError, match="source.path: CUB image list not found: .*images.txt"):
        validate(SourceConfig(kind="cub", path=str(root)))
    root = make_cub(tmp_path / "b2")
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    validate(SourceConfig(kind="cub", path=str(root)))  # boxes not needed without the crop
    with pytest.raises(ValueError, match="source.cub_bbox_crop: CUB bounding boxes not found"):
        validate(SourceConfig(kind="cub", path=str(root), cub_bbox_crop=True))
    write_file(root / "split" / "train" / "filenames.pickle", b"\x80\x04N.")
    cfg = SourceConfig(kind="cub", path=str(root), cub_split_dir=str(root / "split"))
    with pytest.raises(ValueError, match="source.cub_split_dir: found .*filenames.pickle"):
        validate(cfg)
    (root / "split" / "train" / "filenames.pickle").unlink()
    with pytest.raises(ValueError, match="source.cub_split_dir: no train/filenames.txt"):
        validate(cfg)
    (root / "text_c10").rename(root / "captions")
    with pytest.raises(ValueError, match="source.path: CUB captions not found"):
        validate(SourceConfig(kind="cub", path=str(root)))
    write_file(root / "CUB_200_2011" / "images.txt", "1 a.jpg\n2\n")
    with pytest.raises(ValueError, match="images.txt line 2: expected 2 fields"):
        list(build_source(SourceConfig(kind="cub", path=str(root))).list_samples())


def test_cub_on_s3(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str, upload_tree: Uploader
) -> None:
    root = make_cub(tmp_path / "birds")
    write_file(root / "train" / "filenames.txt", f"{ALBATROSS}\n")
    upload_tree(root, s3_prefix + "/birds")
    opts = s3_server.options
    cfg = SourceConfig(kind="cub", path=s3_prefix + "/birds", cub_split_dir=s3_prefix + "/birds")
    validate(cfg, opts)
    samples = list(build_source(cfg, opts).list_samples())
    assert [s.split for s in samples] == ["train", None, None]
    assert load_captions(samples[0], opts)[0][9] == "caption 9 of the bird"
    assert samples[0].caption_uri == f"{s3_prefix}/birds/text_c10/{ALBATROSS}.txt"
