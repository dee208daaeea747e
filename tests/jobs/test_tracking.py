"""MLflow tracking and registry against a real ``mlflow server`` with artifacts on S3 (moto)."""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data

from clipsr.checkpoint import CheckpointError
from clipsr.inference import (
    SuperResolver,
    image_to_tensor,
    tensor_to_image,
)
from jobs.tracking import (
    ModelNotFound,
    RunTracker,
    TrackingUnavailable,
    check_tracking_uri,
    load_resolver,
    log_generator_model,
    resolve_tracking_uri,
)
from tests.conftest import text_sensitive_checkpoint
from tests.services import MlflowServer, free_port

CAPTION = "a person in a space suit"
VERSION_TAGS = {"dataset_manifest": "sha256:abc", "code_version": "deadbeef", "scales": "4"}


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    model_uri: str


def s3_keys(server: MlflowServer, contains: str = "") -> list[str]:
    s3 = boto3.client("s3", endpoint_url=server.s3.endpoint_url, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=server.s3.bucket)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return [k for k in keys if k.startswith("mlartifacts/") and contains in k]


@pytest.fixture(scope="module")
def checkpoint(tiny_clip, tmp_path_factory) -> Path:
    return text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "checkpoint")


@pytest.fixture(scope="module")
def lr_image() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((32, 32), Image.BICUBIC)


def upscale(resolver: SuperResolver, image: Image.Image) -> torch.Tensor:
    return resolver.upscale_tensor(image_to_tensor(image)[None], [CAPTION])


@pytest.fixture(scope="module")
def reference(checkpoint, lr_image) -> torch.Tensor:
    return upscale(SuperResolver.from_checkpoint(checkpoint, device="cpu"), lr_image)


@pytest.fixture(autouse=True)
def _mlflow_globals() -> Iterator[None]:
    """Leave no active run or global tracking URI (it is also MLFLOW_TRACKING_URI) behind."""
    yield
    while mlflow.active_run():
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking(mlflow_server, mlflow_tmpdir) -> MlflowServer:
    mlflow.set_tracking_uri(mlflow_server.uri)
    return mlflow_server


@pytest.fixture(scope="module")
def registered(mlflow_server, checkpoint) -> Registered:
    """The tiny checkpoint logged from a training run and registered as version 1, @champion."""
    tracker = RunTracker(mlflow_server.uri)
    tracker.start("clipsr-registry", "train-x4", {"scale": 4}, None, system_metrics=False)
    name = f"clipsr-tiny-{uuid.uuid4().hex[:8]}"
    model_uri, version = log_generator_model(checkpoint, name, VERSION_TAGS)
    tracker.end()
    mlflow.set_tracking_uri(None)
    mlflow.MlflowClient(mlflow_server.uri).set_registered_model_alias(name, "champion", version)
    return Registered(name, version, model_uri)


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    uri, artifacts = resolve_tracking_uri("", run_dir)
    assert uri == f"sqlite:///{run_dir / 'mlflow.db'}"
    assert artifacts == (run_dir / "mlartifacts").as_uri()
    monkeypatch.chdir(tmp_path)  # a relative sqlite path becomes absolute (workers run elsewhere)
    assert resolve_tracking_uri("sqlite:///rel/m.db", run_dir) == (
        f"sqlite:///{tmp_path / 'rel' / 'm.db'}",
        (tmp_path / "rel" / "mlartifacts").as_uri(),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri("", run_dir) == ("http://tracking:5000", None)
    assert resolve_tracking_uri("http://cfg:5000", run_dir) == ("http://cfg:5000", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="local run directory"):
        resolve_tracking_uri("", "s3://bucket/run")


def test_embedded_store_keeps_runs_and_artifacts_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = resolve_tracking_uri("", tmp_path)
    check_tracking_uri(uri)  # not http: nothing to check
    tracker = RunTracker(uri)
    run_id = tracker.start("local", "r1", {"a": {"b": 1}}, artifacts, system_metrics=False)
    tracker.log_metrics({"loss": 0.5}, step=3)
    tracker.log_dict({"ok": True}, "summary.json")
    tracker.end()
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"a.b": "1"} and run.data.metrics["loss"] == 0.5
    assert (tmp_path / "mlflow.db").is_file()
    assert [p.name for p in (tmp_path / "mlartifacts").rglob("summary.json")] == ["summary.json"]


def test_unreachable_tracking_server_fails_fast(mlflow_server):
    check_tracking_uri(mlflow_server.uri)  # the real one answers
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=re.escape(uri)) as err:
        check_tracking_uri(uri, timeout_s=3)
    assert time.monotonic() - start < 5
    assert "mlflow server --host 127.0.0.1" in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value)


def test_registered_model_lands_on_s3_with_version_tags(registered, mlflow_server):
    keys = s3_keys(mlflow_server, registered.model_uri.removeprefix("models:/"))
    for suffix in ("/MLmodel", "/generator.safetensors", "/checkpoint.json", "/config.yaml"):
        assert any(k.endswith(suffix) for k in keys), (suffix, keys)
    assert any(k.endswith("/artifacts/mlflow_pyfunc.py") for k in keys)  # the model's code
    assert any(k.endswith("code/clipsr/inference.py") for k in keys)
    assert not any(k.endswith(".pkl") or "__pycache__" in k for k in keys)
    client = mlflow.MlflowClient(mlflow_server.uri)
    version = client.get_model_version(registered.name, registered.version)
    assert VERSION_TAGS.items() <= version.tags.items()
    assert client.get_model_version_by_alias(registered.name, "champion").version == "1"


def test_load_resolver_reproduces_the_checkpoint(
    registered, mlflow_server, checkpoint, reference, lr_image
):
    uris = [
        f"models:/{registered.name}/{registered.version}",
        f"models:/{registered.name}@champion",
        registered.model_uri,  # models:/<logged model id>
        str(checkpoint),
    ]
    for uri in uris:
        resolver = load_resolver(uri, device="cpu", tracking_uri=mlflow_server.uri)
        assert torch.equal(upscale(resolver, lr_image), reference), uri


def test_pyfunc_from_code_predicts_pngs(registered, tracking, reference, lr_image, tmp_path):
    model = mlflow.pyfunc.load_model(
        f"models:/{registered.name}@champion", model_config={"device": "cpu"}
    )
    buf = io.BytesIO()
    lr_image.save(buf, format="PNG")
    png = buf.getvalue()
    df = pd.DataFrame({"image": [png, base64.b64encode(png).decode()], "caption": [CAPTION] * 2})
    out = model.predict(df, params={"scale": 4})
    expected = np.asarray(tensor_to_image(reference[0]))
    assert list(out.columns) == ["sr_png"] and len(out) == 2
    for blob in out["sr_png"]:
        image = Image.open(io.BytesIO(blob))
        assert image.format == "PNG" and image.size == (128, 128)
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)
    with pytest.raises(ValueError, match="scale 2 but this model upscales by 4"):
        model.predict(df, params={"scale": 2})
    local = Path(mlflow.artifacts.download_artifacts(registered.model_uri, dst_path=str(tmp_path)))
    assert not list(local.rglob("*.pkl")) and not (local / "python_model.pkl").exists()
    assert "mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()


def test_missing_model_version_or_alias_is_a_clear_error(registered, tracking, tmp_path):
    for uri in (
        "models:/clipsr-no-such-model/1",
        f"models:/{registered.name}/99",
        f"models:/{registered.name}@no-such-alias",
    ):
        with pytest.raises(ModelNotFound, match=re.escape(uri)):
            load_resolver(uri, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_resolver(str(tmp_path / "nothing-here"))


def test_registry_uri_without_tracking_uri_fails_without_a_stray_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow 3's default store is ./mlflow.db
    with pytest.raises(ModelNotFound, match="no tracking URI"):
        load_resolver("models:/clipsr/1")
    assert not list(tmp_path.iterdir())


def test_corrupt_or_deleted_checkpoint_on_s3_is_a_clear_error(tracking, checkpoint):
    name = f"clipsr-broken-{uuid.uuid4().hex[:8]}"
    model_uri, version = log_generator_model(checkpoint, name, {})
    assert version == "1"
    uri = f"models:/{name}/1"
    model_id = model_uri.removeprefix("models:/")
    (weights,) = [k for k in s3_keys(tracking, model_id) if k.endswith("/generator.safetensors")]
    s3 = boto3.client("s3", endpoint_url=tracking.s3.endpoint_url, region_name="us-east-1")
    s3.put_object(Bucket=tracking.s3.bucket, Key=weights, Body=b"not safetensors")
    with pytest.raises(CheckpointError, match=f"{re.escape(uri)}.*sha256 mismatch"):
        load_resolver(uri, device="cpu")
    s3.delete_object(Bucket=tracking.s3.bucket, Key=weights)
    with pytest.raises(CheckpointError, match="weights file missing"):
        load_resolver(uri, device="cpu")
    for key in s3_keys(tracking, model_id):
        if "/checkpoint/" in key:
            s3.delete_object(Bucket=tracking.s3.bucket, Key=key)
    with pytest.raises(CheckpointError, match="checkpoint artifact .* is missing"):
        load_resolver(uri, device="cpu")


def test_run_tracker_logs_and_resumes_the_same_run(tracking, tmp_path):
    uri, name = tracking.uri, f"train-{uuid.uuid4().hex[:8]}"
    params = {
        "model": {"scale": 4, "image_taps": [1, 2, 3]},
        "note": "x" * 7000,
        "sweep": {f"p{i:03d}": i for i in range(150)},
    }
    tracker = RunTracker(uri)
    run_id = tracker.start("clipsr-tracking", name, params, None, tags={"kind": "train"})
    tracker.log_metrics({"loss/g": 1.5, "loss/d": 0.5}, step=1)
    (tmp_path / "config.yaml").write_text("model:\n  scale: 4\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    tracker.log_dict({"psnr": 20.0}, "eval/summary.json")
    tracker.log_image(Image.new("RGB", (16, 16), "red"), "samples/step_1.png")
    tracker.end("FAILED")  # a crash: the next start resumes this run

    resumed = RunTracker(uri)
    changed = {**params, "model": {"scale": 2, "image_taps": [1, 2, 3]}}
    with pytest.warns(UserWarning, match="model.scale"):
        assert resumed.start("clipsr-tracking", name, changed, None, system_metrics=False) == run_id
    resumed.log_metrics({"loss/g": 1.0}, step=2)
    resumed.end()

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "train"
    assert len(run.data.params) == 153 and run.data.params["model.scale"] == "4"
    assert run.data.params["model.image_taps"] == "[1, 2, 3]"
    assert len(run.data.params["note"]) == 6000
    assert [m.step for m in client.get_metric_history(run_id, "loss/g")] == [1, 2]
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "eval", "samples"} <= paths

    # a rerun of a finished training (same run name) continues it, in the same MLflow run
    again = RunTracker(uri)
    assert again.start("clipsr-tracking", name, {}, None, system_metrics=False) == run_id
    again.end()
    explicit = RunTracker(uri)
    assert explicit.start("clipsr-tracking", name, {}, None, run_id=run_id) == run_id
    explicit.end()
