"""Fixtures for pipeline tests: a real S3-compatible server (moto) on loopback, tiny images, tars.

``s3_server`` (session): starts ``moto_server`` on a free 127.0.0.1 port, sets fake AWS credentials
in the environment and creates one bucket. It yields an :class:`S3Server` with ``.endpoint_url``,
``.bucket``, ``.options`` (a StorageOptions) and ``.uri(key)``. Use ``s3_prefix`` for a fresh,
per-test ``s3://bucket/<uuid>`` prefix, and ``upload_tree(local_dir, s3_uri)`` to copy a fixture.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.storage import StorageOptions

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server and the bucket created on it."""

    endpoint_url: str
    bucket: str

    @property
    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region="us-east-1")

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server_cmd() -> list[str]:
    beside_python = Path(sys.executable).with_name("moto_server")
    exe = str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    return [exe]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout_s}s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with one bucket; fake credentials set for the session."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = _moto_server_cmd() + ["-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        try:
            _wait_until_up(endpoint + "/", proc)
            server = S3Server(endpoint_url=endpoint, bucket="clipsr-test")
            storage._client(server.options).create_bucket(Bucket=server.bucket)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> str:
    """A fresh ``s3://bucket/<uuid>`` prefix, so tests sharing the bucket never collide."""
    return s3_server.uri(uuid.uuid4().hex)


@pytest.fixture
def upload_tree(s3_server: S3Server) -> Callable[[Path, str], None]:
    """``upload_tree(local_dir, s3_uri)``: copy every file under ``local_dir`` to ``s3_uri/``."""

    def upload(local_dir: Path, s3_uri: str) -> None:
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                storage.write_bytes(storage.join(s3_uri, rel), path.read_bytes(), s3_server.options)

    return upload


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
