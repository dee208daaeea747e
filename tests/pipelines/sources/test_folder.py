"""FolderSource: any tree of images with same-stem .txt captions, locally and on S3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.sources import SourceConfig, build_source, load_captions, validate
from pipelines.storage import StorageOptions
from tests.pipelines.conftest import S3Server, image_bytes, write_file


def make_folder(root: Path) -> Path:
    write_file(root / "cats" / "tabby.jpg", image_bytes("JPEG"))
    write_file(root / "cats" / "tabby.txt", "a tabby cat\nstriped cat on a sofa\n")
    write_file(root / "dogs" / "pug.PNG", image_bytes("PNG"))
    write_file(root / "dogs" / "pug.txt", "a pug")
    write_file(root / "dogs" / "nocap.webp", image_bytes("WEBP"))
    write_file(root / "dogs" / "latin.tiff", image_bytes("TIFF"))
    write_file(root / "dogs" / "latin.txt", "chien à poil ras".encode("latin-1"))
    write_file(root / "notes.md", "not an image")
    write_file(root / ".hidden" / "x.jpg", image_bytes("JPEG"))
    write_file(root / "dogs" / "._pug.png", b"macos resource fork")
    return root


def check_samples(root: str, opts: StorageOptions) -> None:
    source = build_source(SourceConfig(kind="folder", path=root), opts)
    samples = list(source.list_samples())
    assert [s.source_id for s in samples] == [
        "cats/tabby.jpg",
        "dogs/latin.tiff",
        "dogs/nocap.webp",
        "dogs/pug.PNG",
    ]
    assert samples == list(source.list_samples())  # deterministic
    by_id = {s.source_id: s for s in samples}
    assert by_id["cats/tabby.jpg"].image == storage.join(root, "cats", "tabby.jpg")
    assert by_id["cats/tabby.jpg"].caption_uri == storage.join(root, "cats", "tabby.txt")
    assert by_id["dogs/nocap.webp"].error == "caption_missing"
    assert all(s.split is None and s.byte_range is None for s in samples)
    captions = {s.source_id: load_captions(s, opts) for s in samples}
    assert captions["cats/tabby.jpg"] == (("a tabby cat", "striped cat on a sofa"), None)
    assert captions["dogs/pug.PNG"] == (("a pug",), None)
    assert captions["dogs/latin.tiff"] == ((), "caption_undecodable")
    assert captions["dogs/nocap.webp"] == ((), "caption_missing")
    image = by_id["dogs/pug.PNG"].image
    assert storage.read_bytes(image, opts) == image_bytes("PNG")
    assert source.describe() == {"kind": "folder", "path": root}


def test_folder_local(tmp_path: Path) -> None:
    check_samples(str(make_folder(tmp_path / "photos")), StorageOptions())


def test_folder_s3(
    tmp_path: Path,
    s3_server: S3Server,
    s3_prefix: str,
    upload_tree: Callable[[Path, str], None],
) -> None:
    upload_tree(make_folder(tmp_path / "photos"), s3_prefix + "/photos")
    validate(SourceConfig(kind="folder", path=s3_prefix + "/photos"), s3_server.options)
    check_samples(s3_prefix + "/photos", s3_server.options)


def test_folder_validate_missing_dir(tmp_path: Path, s3_server: S3Server, s3_prefix: str) -> None:
    with pytest.raises(ValueError, match="source.path: directory not found: .*nope"):
        validate(SourceConfig(kind="folder", path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="source.path: directory not found: s3://"):
        validate(SourceConfig(kind="folder", path=s3_prefix + "/nope"), s3_server.options)


def test_folder_split_dirs_name_the_split(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for rel in ("train/a.png", "Test/b.png", "val/sub/c.png", "loose.png", "misc/d.png"):
        write_file(root / rel, image_bytes("PNG"))
        write_file((root / rel).with_suffix(".txt"), "a caption")
    cfg = SourceConfig(kind="folder", path=str(root), folder_split_dirs=True)
    samples = {s.source_id: s for s in build_source(cfg).list_samples()}
    assert {k: (s.split, s.error) for k, s in samples.items()} == {
        "train/a.png": ("train", None),
        "Test/b.png": ("test", None),
        "val/sub/c.png": ("val", None),
        "loose.png": (None, "outside_split_dir"),
        "misc/d.png": (None, "outside_split_dir"),
    }
    plain = build_source(SourceConfig(kind="folder", path=str(root))).list_samples()
    assert all(s.split is None and s.error is None for s in plain)
