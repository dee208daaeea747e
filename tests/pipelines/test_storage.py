"""pipelines.storage on local paths and on a real S3-compatible server (moto on loopback);
gs:// and abfs:// routing, and their refusal without credentials (no such stores here)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.storage import StorageCredentialsError, StorageOptions
from tests.pipelines.conftest import S3Server


def test_is_s3_join_and_parent() -> None:
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x")
    assert storage.is_remote("gs://b/k") and not storage.is_remote("file:///tmp/x")
    assert storage.join("gs://b/root", "a") == "gs://b/root/a"
    assert storage.parent("abfs://c@acct.dfs.core.windows.net/x/y") == (
        "abfs://c@acct.dfs.core.windows.net/x"
    )
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
    key = s3_prefix.removeprefix(f"s3://{s3_server.bucket}/")
    client = s3_server.client()
    for i in range(1005):  # more than one 1000-key page
        client.put_object(Bucket=s3_server.bucket, Key=f"{key}/{i:05d}.txt", Body=b"")
    listed = storage.list_files(s3_prefix, opts)
    assert len(listed) == 1005 and listed[0].endswith("00000.txt") and listed == sorted(listed)
    storage.delete_tree(s3_prefix, opts)
    assert storage.list_files(s3_prefix, opts) == []
    storage.delete_tree(s3_prefix, opts)  # already gone: fine


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


def test_files_get_the_umask_mode_and_uploads_stream(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3 << 20))
    old = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "a" / "w.bin"), b"x")
        storage.upload_file(str(source), str(tmp_path / "a" / "u.bin"))
        os.umask(0o002)
        storage.write_bytes(str(tmp_path / "a" / "g.bin"), b"x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a").iterdir()}
    assert modes == {"w.bin": 0o644, "u.bin": 0o644, "g.bin": 0o664}
    assert (tmp_path / "a" / "u.bin").read_bytes() == source.read_bytes()


def test_s3_upload_and_ray_storage(s3_server: S3Server, s3_prefix: str, tmp_path: Path) -> None:
    import pyarrow.fs

    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(9 << 20))  # more than one multipart part
    uri = storage.join(s3_prefix, "up", "big.bin")
    storage.upload_file(str(source), uri, s3_server.options)
    assert storage.read_bytes(uri, s3_server.options) == source.read_bytes()
    path, fs = storage.ray_storage(storage.join(s3_prefix, "runs"), s3_server.options)
    assert isinstance(fs, pyarrow.fs.S3FileSystem)
    assert path == storage.join(s3_prefix, "runs").removeprefix("s3://")
    assert fs.get_file_info(f"{path.rsplit('/', 1)[0]}/up/big.bin").size == 9 << 20
    assert storage.to_uri(s3_prefix, f"{path}/x/ckpt") == f"{s3_prefix}/runs/x/ckpt"
    local_path, local_fs = storage.ray_storage("runs")
    assert local_fs is None and local_path == os.path.abspath("runs")


def test_endpoint_is_resolved_once_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    resolved = StorageOptions().resolved()
    assert (resolved.endpoint_url, resolved.region) == ("http://127.0.0.1:9", "eu-west-3")
    assert StorageOptions("http://x:1", "r").resolved() == StorageOptions("http://x:1", "r")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.resolve_endpoint("") == "aws"  # shipped as is: workers use AWS, not their env
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, _ = storage.filesystem("s3://bucket/k", StorageOptions("aws", "eu-west-3"))
    settings = fs.__reduce__()[1][0]
    assert settings["endpoint_override"] == "" and settings["region"] == "eu-west-3"


@pytest.fixture
def no_cloud_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user with no Google or Azure credentials, on no cloud VM."""
    from pipelines import filesystems

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "AZURE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(filesystems, "GCE_PRODUCT", tmp_path / "no-dmi")
    monkeypatch.setattr(filesystems, "AZURE_VENDOR", tmp_path / "no-dmi")


def test_gcs_and_azure_without_credentials_fail_before_any_request(no_cloud_credentials):
    start = time.monotonic()
    with pytest.raises(StorageCredentialsError, match="gs://b/x: no Google Cloud credentials"):
        storage.read_bytes("gs://b/x")
    with pytest.raises(StorageCredentialsError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        storage.list_files("gcs://b/prefix")
    with pytest.raises(StorageCredentialsError, match="no Azure credentials"):
        storage.exists("abfs://c@acct.dfs.core.windows.net/x")
    with pytest.raises(StorageCredentialsError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        storage.exists("abfs://c/x")  # no account in the URI or the environment
    with pytest.raises(ValueError, match="unsupported storage scheme ftp://"):
        storage.read_bytes("ftp://host/x")
    assert time.monotonic() - start < 5  # no network retries


def test_gcs_and_azure_uris_route_to_their_filesystems(
    no_cloud_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs

    key = tmp_path / "sa.json"
    key.write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "c2VjcmV0")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "envacct")
    fs, path = storage.filesystem("gs://bkt/a/b.tar")
    assert isinstance(fs, pyarrow.fs.GcsFileSystem) and path == "bkt/a/b.tar"
    fs, path = storage.filesystem("abfss://cont@acct.dfs.core.windows.net/a/b")
    assert isinstance(fs, pyarrow.fs.AzureFileSystem) and path == "cont/a/b"
    fs2, path = storage.filesystem("abfs://cont/a")  # the account from the environment
    assert isinstance(fs2, pyarrow.fs.AzureFileSystem) and fs2 is not fs and path == "cont/a"
    assert storage.to_uri("abfs://cont@acct.dfs.core.windows.net/a", "cont/a/x") == (
        "abfs://cont@acct.dfs.core.windows.net/a/x"
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    with pytest.raises(StorageCredentialsError, match="gone.json is not a file"):
        storage.filesystem("gs://bkt/a")


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, pipelines.sources; print('boto3' in sys.modules, 'pyarrow' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert out.stdout.split() == ["False", "False"]
