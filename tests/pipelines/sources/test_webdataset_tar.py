"""WebDatasetTarSource: img2dataset-style tars scanned for keys and image byte ranges."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.sources import SourceConfig, build_source, validate
from pipelines.storage import StorageOptions
from tests.pipelines.conftest import S3Server, image_bytes, write_file, write_tar

JPG0, JPG1, PNG2 = image_bytes("JPEG", color=0), image_bytes("JPEG", color=90), image_bytes("PNG")


def make_shards(root: Path) -> Path:
    meta = json.dumps({"url": "http://x"}).encode()
    write_tar(
        root / "00000.tar",
        [
            ("000000000.jpg", JPG0),
            ("000000000.txt", b"a red bird\n"),
            ("000000000.json", meta),
            ("000000001.txt", "café au lait".encode("latin-1")),  # members out of order
            ("000000002.png", PNG2),
            ("000000001.jpg", JPG1),
            ("000000003.json", meta),  # no image: skipped
        ],
    )
    write_tar(
        root / "sub" / "00001.tar",
        [
            ("./my.photo.v2.jpg", JPG1),  # key up to the first dot: "my", field "photo.v2.jpg"
            ("./my.photo.v2.txt", b"dotted key\n"),
            ("dir/k" + "x" * 120 + ".jpg", JPG0),  # long name -> PAX header before the data
            ("dir/k" + "x" * 120 + ".txt", b"long name"),
        ],
    )
    write_file(root / "notes.txt", "ignored")
    return root


def check_shards(root: str, opts: StorageOptions) -> None:
    source = build_source(SourceConfig(kind="webdataset", path=root), opts)
    samples = list(source.list_samples())
    long_key = "dir/k" + "x" * 120
    assert [s.source_id for s in samples] == [
        "00000.tar/000000000",
        "00000.tar/000000001",
        "00000.tar/000000002",
        f"sub/00001.tar/{long_key}",
        "sub/00001.tar/my",
    ]
    by_id = {s.source_id: s for s in samples}
    expected_bytes = {
        "00000.tar/000000000": JPG0,
        "00000.tar/000000001": JPG1,
        "00000.tar/000000002": PNG2,
        f"sub/00001.tar/{long_key}": JPG0,
        "sub/00001.tar/my": JPG1,
    }
    for source_id, data in expected_bytes.items():
        sample = by_id[source_id]
        assert sample.byte_range is not None and sample.byte_range[1] == len(data)
        assert storage.read_bytes(sample.image, opts, byte_range=sample.byte_range) == data
    assert by_id["00000.tar/000000000"].image == storage.join(root, "00000.tar")
    assert by_id["00000.tar/000000000"].captions == ("a red bird",)
    assert by_id["00000.tar/000000000"].error is None
    assert by_id["00000.tar/000000001"].error == "caption_undecodable"
    assert by_id["00000.tar/000000002"].error == "caption_missing"
    assert by_id["sub/00001.tar/my"].captions == ("dotted key",)
    assert by_id[f"sub/00001.tar/{long_key}"].captions == ("long name",)


def test_webdataset_local_dir(tmp_path: Path) -> None:
    check_shards(str(make_shards(tmp_path / "shards")), StorageOptions())


def test_webdataset_s3_prefix(
    tmp_path: Path,
    s3_server: S3Server,
    s3_prefix: str,
    upload_tree: Callable[[Path, str], None],
) -> None:
    upload_tree(make_shards(tmp_path / "shards"), s3_prefix + "/shards")
    validate(SourceConfig(kind="webdataset", path=s3_prefix + "/shards"), s3_server.options)
    check_shards(s3_prefix + "/shards", s3_server.options)


def test_webdataset_single_tar_and_image_ext(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "one.tar", [("k.webp", b"W"), ("k.png", PNG2), ("k.txt", b"c")])
    cfg = SourceConfig(kind="webdataset", path=str(tar), webdataset_image_ext=["png", "webp"])
    validate(cfg)
    [sample] = build_source(cfg).list_samples()
    assert sample.source_id == "one.tar/k"
    assert storage.read_bytes(sample.image, byte_range=sample.byte_range) == PNG2


def test_webdataset_truncated_tar_keeps_whole_samples(tmp_path: Path) -> None:
    big = image_bytes("PNG", size=(64, 64)) + b"\0" * 4000
    tar = write_tar(
        tmp_path / "cut.tar", [("a.jpg", JPG0), ("a.txt", b"ok"), ("b.jpg", big), ("b.txt", b"x")]
    )
    data = tar.read_bytes()
    tar.write_bytes(data[: data.index(big) + 100])  # broken off inside b.jpg
    samples = list(build_source(SourceConfig(kind="webdataset", path=str(tar))).list_samples())
    assert [(s.source_id, s.error) for s in samples] == [
        ("cut.tar/a", None),
        ("cut.tar/b", "tar_truncated"),
    ]


def test_webdataset_validate_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source.path: tar not found: .*missing.tar"):
        validate(SourceConfig(kind="webdataset", path=str(tmp_path / "missing.tar")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="source.path: no .tar files under"):
        validate(SourceConfig(kind="webdataset", path=str(tmp_path / "empty")))
    gz = write_file(tmp_path / "gz" / "x.tar", gzip.compress(b"\0" * 1024))
    with pytest.raises(ValueError, match="is compressed"):
        list(build_source(SourceConfig(kind="webdataset", path=str(gz))).list_samples())
    with pytest.raises(ValueError, match="source.webdataset_image_ext"):
        build_source(SourceConfig(kind="webdataset", path="x", webdataset_image_ext=[]))


def test_webdataset_hostile_member_names_are_rejected_with_a_reason(tmp_path: Path) -> None:
    """Members that would land outside an extraction target (``../x``, ``/x``) never become
    samples: their keys are listed with the reason, and nothing of them is read."""
    tar = write_tar(
        tmp_path / "hostile.tar",
        [
            ("ok.jpg", JPG0),
            ("ok.txt", b"a fine caption"),
            ("../evil.jpg", JPG1),
            ("../evil.txt", b"climbs out"),
            ("/abs/path.png", PNG2),
            ("a/../../up.jpg", JPG0),
        ],
    )
    samples = list(build_source(SourceConfig(kind="webdataset", path=str(tar))).list_samples())
    got = {s.source_id: (s.error, s.byte_range) for s in samples}
    assert got["hostile.tar/ok"][0] is None
    for key in ("../evil", "/abs/path", "a/../../up"):
        assert got[f"hostile.tar/{key}"] == ("unsafe_member_name", None), key
    assert len(got) == 4
