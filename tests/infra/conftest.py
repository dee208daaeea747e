"""Helpers of the infra tests: run ``infra/local/services.sh`` with free ports and a state dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "local" / "services.sh"


def services(command: str, env: dict[str, str], timeout: float = 180, args: tuple = ()):
    return subprocess.run(
        ["bash", str(SCRIPT), command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def services_env(state: Path, ray_temp: str, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env |= {
        "CLIPSR_SERVICES_DIR": str(state),
        "CLIPSR_S3_PORT": str(ports.get("s3") or free_port()),
        "CLIPSR_MLFLOW_PORT": str(ports.get("mlflow") or free_port()),
        "CLIPSR_RAY_PORT": str(ports.get("ray") or free_port()),
        "CLIPSR_S3_BUCKET": "clipsr-services-test",
        "CLIPSR_RAY_NUM_CPUS": "1",
        "CLIPSR_RAY_TEMP_DIR": ray_temp,  # short: Ray's AF_UNIX socket paths
    }
    return env


def sourced(env_sh: Path) -> dict[str, str]:
    """The variables that ``source env.sh`` sets in a clean bash."""
    out = subprocess.run(
        ["bash", "-c", f"source {env_sh} && env -0"], env={}, capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.fixture
def ray_temp():
    path = tempfile.mkdtemp(prefix="clipsr-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def s3_client(svc: dict[str, str]):
    """A boto3 S3 client for the store that ``env.sh`` (as read by :func:`sourced`) describes."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=svc["AWS_ENDPOINT_URL"],
        aws_access_key_id=svc["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=svc["AWS_SECRET_ACCESS_KEY"],
        region_name=svc["AWS_DEFAULT_REGION"],
    )
