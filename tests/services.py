"""Real services for tests, on loopback: an S3-compatible server (moto) and an MLflow server.

``s3_server`` (session): starts ``moto_server`` on a free 127.0.0.1 port, sets fake AWS credentials
in the environment and creates one bucket. It yields an :class:`S3Server` with ``.endpoint_url``,
``.bucket``, ``.options`` (a StorageOptions) and ``.uri(key)``. Use ``s3_prefix`` for a fresh,
per-test ``s3://bucket/<uuid>`` prefix, and ``upload_tree(local_dir, s3_uri)`` to copy a fixture.

``mlflow_server`` (session): ``mlflow server`` with a sqlite backend store and its artifacts proxied
to ``s3://<bucket>/mlartifacts`` on the moto server; yields an :class:`MlflowServer` with ``.uri``.
``mlflow_tmpdir`` points ``TMPDIR`` (and :mod:`tempfile`) at a per-test dir for the test's
duration, since ``mlflow.pyfunc.load_model`` leaves temp dirs behind. (Not for the session: Ray
puts its sockets under TMPDIR, and a pytest temp path exceeds the 107-byte AF_UNIX limit.)

Import the fixtures into a ``conftest.py`` (``from tests.services import s3_server``) to use them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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

    def client(self):
        """A boto3 S3 client of this server (for fixtures; the product uses pipelines.storage)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: ``uri`` for clients, artifacts under ``artifacts_uri`` on S3."""

    uri: str
    artifacts_uri: str
    s3: S3Server
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _executable(name: str, install_hint: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    exe = str(beside_python) if beside_python.exists() else shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed ({install_hint})")
    return exe


def wait_until_up(
    url: str, proc: subprocess.Popen, timeout_s: float = 60.0, name: str = "moto_server"
) -> None:
    """Poll ``url`` until it answers; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer on {url} within {timeout_s}s")


def _stop(proc: subprocess.Popen, group: bool = False) -> None:
    """Terminate ``proc`` (and its process group when it leads one), then kill if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with one bucket; fake credentials set for the session."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [_executable("moto_server", "pip install 'moto[server]'"), "-H", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd + ["-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        try:
            wait_until_up(endpoint + "/", proc)
            server = S3Server(endpoint_url=endpoint, bucket="clipsr-test")
            server.client().create_bucket(Bucket=server.bucket)
            yield server
        finally:
            _stop(proc)


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


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 (sqlite store, artifacts proxied to the moto bucket)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    tmp = root / "tmp"
    tmp.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    artifacts = s3_server.uri("mlartifacts")
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 9 processes, 2.4 GB
        "TMPDIR": str(tmp),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [_executable("mlflow", "pip install mlflow"), "server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", artifacts]
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        # its own process group: the server runs uvicorn in a child process
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        try:
            try:
                wait_until_up(uri + "/health", proc, timeout_s=90, name="mlflow server")
            except RuntimeError as err:
                raise RuntimeError(f"{err}\n{log_path.read_text()[-3000:]}") from None
            yield MlflowServer(uri=uri, artifacts_uri=artifacts, s3=s3_server, log_path=log_path)
        finally:
            _stop(proc, group=True)


@pytest.fixture
def mlflow_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``TMPDIR`` and :mod:`tempfile` pointed at a per-test dir (MLflow downloads land there)."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path
