"""What clipsr writes to MLflow in MLflow's own terms (jobs/mlflow_record.py), where results are
found without flags (jobs/tracking.py), and how train reports where they are (jobs/train.py),
against a real embedded (sqlite) store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from jobs.mlflow_record import (
    describe_version,
    run_context_tags,
    set_descriptions,
    shard_set_input,
)
from jobs.tracking import DEFAULT_STORE, default_tracking_uri, run_link, run_page
from jobs.train import TrainResult, failure_reason, format_result

MANIFEST = {
    "format_version": 1,
    "hr_size": 128,
    "scales": [4, 16],
    "shards": [
        {"split": "train", "tar": "train-000000.tar", "samples": 5},
        {"split": "train", "tar": "train-000001.tar", "samples": 4},
        {"split": "test", "tar": "test-000000.tar", "samples": 2},
    ],
}
SHA = "ab" * 32


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    return f"sqlite:///{path}"


def test_shard_sets_are_the_runs_datasets(store):
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("records", (Path(store[10:]).parent / "art").as_uri())
    run = client.create_run(exp, tags=run_context_tags({"k": "v"}))
    train = shard_set_input("s3://bucket/shards/cub", "train", MANIFEST, SHA, "training")
    test = shard_set_input("s3://bucket/shards/cub", "test", MANIFEST, SHA, "validation")
    client.log_inputs(run.info.run_id, datasets=[train, test])
    got = client.get_run(run.info.run_id)
    by_name = {d.dataset.name: d for d in got.inputs.dataset_inputs}
    assert set(by_name) == {"cub/train", "cub/test"}
    dataset = by_name["cub/train"].dataset
    assert dataset.digest == SHA[:36] and dataset.source_type == "s3"
    assert json.loads(dataset.source) == {"uri": "s3://bucket/shards/cub"}
    profile = json.loads(dataset.profile)
    assert (profile["num_rows"], profile["shards"], profile["manifest_sha256"]) == (9, 2, SHA)
    columns = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
    assert columns[:3] == ["hr", "lr_x4", "lr_x16"]
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags} for d in by_name.values()}
    assert contexts["cub/test"]["mlflow.data.context"] == "validation"
    tags = got.data.tags
    assert tags["k"] == "v" and tags["mlflow.user"] and tags["mlflow.source.name"]


def test_versions_and_models_get_descriptions(store, monkeypatch):
    monkeypatch.setenv("CLIPSR_USER", "alice")
    client = mlflow.MlflowClient(store, registry_uri=store)
    client.create_registered_model("described")
    client.create_model_version("described", source="file:///nowhere")
    text = describe_version(4, "tiny-x4", 600, "runs/shards/my-data", SHA, "random (...)")
    set_descriptions(client, "described", "1", text)
    assert client.get_model_version("described", "1").description == text
    assert "600 steps" in text and SHA[:12] in text and "CLIP weights: random" in text
    model = client.get_registered_model("described").description
    assert "models:/described@champion" in model
    client.update_registered_model("described", description="kept")
    set_descriptions(client, "described", "1", text)  # an existing one is not overwritten
    assert client.get_registered_model("described").description == "kept"
    assert run_context_tags({})["mlflow.user"] == "alice"


def test_results_are_found_without_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == ""
    DEFAULT_STORE.parent.mkdir()
    DEFAULT_STORE.write_bytes(b"")
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert default_tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert default_tracking_uri() == "http://env:5000"


def test_where_a_run_is_and_what_train_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_link("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    url, serve = run_page("sqlite:////x/mlflow.db", "1", "r")
    assert url == "http://127.0.0.1:5000/#/experiments/1/runs/r"
    assert (
        serve == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db --host 127.0.0.1 --port 5000"
    )
    result = TrainResult("r1", "/runs/x/ck", {"step": 600, "loss/g": 0.5}, "models:/m/2", "2",
                         "sqlite:////x/mlflow.db", "1")  # fmt: skip
    text = format_result(result)
    assert "models:/m/2" in text and "sqlite:////x/mlflow.db" in text
    assert "#/experiments/1/runs/r1" in text and "--tracking-uri sqlite:////x/mlflow.db" in text
    assert "m-" not in text


def test_a_failed_fit_is_reported_by_the_workers_own_error():
    class Failed(Exception):
        def __init__(self, failures):
            super().__init__("Training failed.\nTraceback ...\n  File ...\nsee above")
            self.worker_failures = failures

    wrapped = RuntimeError("Traceback (most recent call last):\n  File x\nCheckpointError: bad")
    err = Failed({0: wrapped, 1: RuntimeError("Traceback\nCheckpointError: bad")})
    assert failure_reason(err) == "CheckpointError: bad"
    plain = Failed({0: ValueError("model.clip.pretrained: no such tag")})
    assert failure_reason(plain) == "ValueError: model.clip.pretrained: no such tag"
    assert failure_reason(RuntimeError("one\ntwo")) == "two"
