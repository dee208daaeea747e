"""pipelines.storage on local paths and on a real S3-compatible server (moto on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.storage import StorageOptions
from tests.pipelines.conftest import S3Server


def test_is_s3_join_and_parent() -> None:
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x")
    assert storage.join("s3://b/root/", "a", "b.txt") == "s3://b/root/a/b.txt"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("/data", "a", "b.txt") == os.path.join("/data", "a", "b.txt")
    assert storage.join("/data", "/abs/f.json") == "/abs/f.json"
    assert storage.join("/data", "s3://b/f.json") == "s3://b/f.json"
    assert storage.parent("s3://b/x/y.txt") == "s3://b/x"
    assert storage.parent("s3://b/y.txt") == "s3://b"
    assert storage.parent("/d/y.txt") == "/d"


def test_local_roundtrip_range_list_delete(tmp_path: Path) -> None:
    target = str(tmp_path / "deep" / "dir" / "f.bin")
    storage.write_bytes(target, b"0123456789")
    assert storage.read_bytes(target) == b"0123456789"
    assert storage.read_bytes(target, byte_range=(3, 4)) == b"3456"
    assert storage.read_bytes(target, byte_range=(3, 0)) == b""
    with pytest.raises(EOFError, match="wanted 5 bytes"):
        storage.read_bytes(target, byte_range=(8, 5))
    storage.write_bytes(str(tmp_path / "a.TXT"), "héllo".encode())
    assert storage.read_text(str(tmp_path / "a.TXT")) == "héllo"
    assert storage.exists(target) and storage.is_file(target) and not storage.is_dir(target)
    assert storage.is_dir(str(tmp_path / "deep"))
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "a.TXT"), target]
    assert storage.list_files(str(tmp_path), suffixes=(".txt",)) == [str(tmp_path / "a.TXT")]
    assert sorted(os.listdir(tmp_path / "deep" / "dir")) == ["f.bin"]  # no temp file left behind
    storage.delete(target)
    storage.delete(target)  # already gone: fine
    assert not storage.exists(target)
    with storage.open_for_tar_scan(str(tmp_path / "a.TXT")) as f:
        assert f.read() == "héllo".encode()


def test_local_errors_name_the_uri(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        storage.open_for_tar_scan(missing)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        storage.list_files(str(tmp_path / "nodir"))
    storage.write_bytes(str(tmp_path / "latin.txt"), "café".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        storage.read_text(str(tmp_path / "latin.txt"))


def test_local_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_s3_roundtrip_range_list_exists_delete(s3_server: S3Server, s3_prefix: str) -> None:
    opts = s3_server.options
    uri = storage.join(s3_prefix, "a", "f.bin")
    storage.write_bytes(uri, b"0123456789", opts)
    storage.write_bytes(storage.join(s3_prefix, "b.txt"), "héllo".encode(), opts)
    storage.write_bytes(storage.join(s3_prefix + "-sibling", "x.txt"), b"x", opts)
    assert storage.read_bytes(uri, opts) == b"0123456789"
    assert storage.read_bytes(uri, opts, byte_range=(2, 5)) == b"23456"
    assert storage.read_text(storage.join(s3_prefix, "b.txt"), opts) == "héllo"
    assert storage.exists(uri, opts) and storage.is_file(uri, opts)
    assert storage.exists(storage.join(s3_prefix, "a"), opts)  # a prefix with objects
    assert storage.is_dir(s3_prefix, opts) and not storage.is_dir(uri, opts)
    assert not storage.exists(storage.join(s3_prefix, "zzz"), opts)
    assert storage.list_files(s3_prefix, opts) == [uri, storage.join(s3_prefix, "b.txt")]
    assert storage.list_files(s3_prefix + "/", opts, suffixes=(".TXT",)) == [
        storage.join(s3_prefix, "b.txt")
    ]
    with storage.open_for_tar_scan(uri, opts) as f:
        assert f.read() == b"0123456789"
    storage.delete(uri, opts)
    assert not storage.exists(uri, opts)
    assert storage.list_files(storage.join(s3_prefix, "empty"), opts) == []


def test_s3_list_paginates(s3_server: S3Server, s3_prefix: str) -> None:
    opts = s3_server.options
    client = storage._client(opts)
    bucket, key = storage.split_s3(s3_prefix)
    for i in range(1005):  # more than one 1000-key page
        client.put_object(Bucket=bucket, Key=f"{key}/{i:05d}.txt", Body=b"")
    listed = storage.list_files(s3_prefix, opts)
    assert len(listed) == 1005 and listed[0].endswith("00000.txt") and listed == sorted(listed)


def test_s3_errors_name_the_key_or_bucket(s3_server: S3Server, s3_prefix: str) -> None:
    opts = s3_server.options
    missing = storage.join(s3_prefix, "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        storage.read_bytes(missing, opts)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        storage.open_for_tar_scan(missing, opts)
    for call in (
        lambda: storage.read_bytes("s3://no-such-bucket-x/k", opts),
        lambda: storage.exists("s3://no-such-bucket-x/k", opts),
        lambda: storage.list_files("s3://no-such-bucket-x/p", opts),
    ):
        with pytest.raises(FileNotFoundError, match="no-such-bucket-x"):
            call()


def test_s3_endpoint_from_environment(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    uri = storage.join(s3_prefix, "env.txt")
    storage.write_bytes(uri, b"via env")
    assert storage.read_bytes(uri, StorageOptions()) == b"via env"


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, pipelines.sources; print('boto3' in sys.modules, 'pyarrow' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert out.stdout.split() == ["False", "False"]
