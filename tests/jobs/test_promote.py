"""``clipsr promote`` against a real ``mlflow server`` (sqlite store, artifacts on moto S3).

One tiny checkpoint is logged once; each test registers 3 versions of it under a fresh model
name and writes evaluation runs the way ``clipsr evaluate`` does (jobs/evaluation_record.py).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import boto3
import mlflow
import pytest
from mlflow.entities import Metric

from jobs import registry as reg
from jobs.evaluation_record import (
    DEFAULT_EXPERIMENT,
    KIND,
    TAG_KIND,
    TAG_MANIFEST,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_SPLIT,
    metric_key,
)
from jobs.promote import PromoteResult, main, run_promote
from jobs.promote_config import PromoteConfig
from jobs.tracking import log_generator_model
from tests.conftest import text_sensitive_checkpoint
from tests.services import MlflowServer, free_port

SHARDS_A = "a" * 64
SHARDS_B = "b" * 64
BICUBIC = {"psnr_bicubic": 23.5, "ssim_bicubic": 0.65}  # every evaluation has its baseline
GOOD = {"psnr": 24.0, "ssim": 0.70, "text_gain_psnr": 0.2, **BICUBIC}
BETTER = {"psnr": 24.3, "ssim": 0.71, "text_gain_psnr": 0.3, **BICUBIC}
WORSE = {"psnr": 23.8, "ssim": 0.71, "text_gain_psnr": 0.3, **BICUBIC}  # psnr drops 0.2 > 0.05
BARELY_TRAINED = {"psnr": 23.4, "ssim": 0.66, "text_gain_psnr": 0.0, **BICUBIC}
_clock = itertools.count()


@pytest.fixture(autouse=True)
def _mlflow_globals(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("CLIPSR_USER", "alice")  # else the login name (getpass.getuser())
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def logged_model(mlflow_server, tiny_clip, tmp_path_factory) -> str:
    """The tiny checkpoint logged once (a LoggedModel URI, models:/m-...)."""
    checkpoint = text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "ck")
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        with mlflow.start_run(experiment_id=_experiment(mlflow_server.uri, "clipsr-promote")):
            model_uri, _ = log_generator_model(checkpoint, None, {})
    finally:
        mlflow.set_tracking_uri(None)
    return model_uri


def _experiment(uri: str, name: str) -> str:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


@pytest.fixture
def client(mlflow_server, mlflow_tmpdir) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)


@pytest.fixture
def model(client, logged_model) -> str:
    """A fresh registered model with versions 1, 2, 3 (the same weights)."""
    name = f"clipsr-promote-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    model_id = logged_model.removeprefix("models:/")
    for _ in range(3):
        client.create_model_version(name, logged_model, model_id=model_id)
    return name


def evaluate(
    client, name: str, version: str, metrics: dict, manifest: str = SHARDS_A, scale: int = 4
) -> str:
    """An evaluation run as clipsr evaluate writes it; returns its run id."""
    exp_id = _experiment(client.tracking_uri, DEFAULT_EXPERIMENT)
    tags = {
        TAG_KIND: KIND,
        TAG_MODEL_NAME: name,
        TAG_MODEL_VERSION: str(version),
        TAG_MANIFEST: manifest,
        TAG_SPLIT: "test",
    }
    start = int(time.time() * 1000) + next(_clock)  # strictly increasing: "latest" is defined
    run_id = client.create_run(exp_id, start_time=start, tags=tags).info.run_id
    rows = [Metric(metric_key(scale, k), float(v), 0, 0) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=rows)
    client.log_param(run_id, "shards", f"s3://data/shards-{manifest[:4]}")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def promote(server: MlflowServer, capsys, *args: str) -> tuple[int, str]:
    code = main(["--tracking-uri", server.uri, *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def alias(client, name: str) -> str | None:
    return client.get_registered_model(name).aliases.get("champion")


def promote_tags(client, name: str, version: str) -> dict[str, str]:
    tags = client.get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(reg.PREFIX)}


def test_first_champion_then_better_promoted_with_audit_tags(mlflow_server, client, model, capsys):
    run1 = evaluate(client, model, "1", GOOD)
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "1")
    assert code == 0, out
    assert "FIRST CHAMPION" in out and "only absolute gates apply" in out
    assert alias(client, model) == "1"
    tags1 = promote_tags(client, model, "1")
    assert tags1[reg.TAG_PREVIOUS] == "none" and tags1[reg.TAG_ACTION] == "first_champion"
    assert tags1[reg.TAG_CHAMPION_RUN] == "none" and tags1[reg.TAG_CANDIDATE_RUN] == run1

    run2 = evaluate(client, model, "2", BETTER)
    code, out = promote(
        mlflow_server, capsys, "--model", model, "--version", "2", "--reason", "sharper"
    )
    assert code == 0, out
    assert f"PROMOTED: {model}@champion -> version 2 (was version 1)" in out
    assert alias(client, model) == "2"
    tags = promote_tags(client, model, "2")
    assert tags[reg.TAG_PREVIOUS] == "1" and tags[reg.TAG_ACTION] == "promoted"
    assert tags[reg.TAG_REASON] == "sharper" and tags[reg.TAG_BY] == "alice"
    assert tags[reg.TAG_MANIFEST] == SHARDS_A
    assert (tags[reg.TAG_CANDIDATE_RUN], tags[reg.TAG_CHAMPION_RUN]) == (run2, run1)
    assert datetime.fromisoformat(tags[reg.TAG_AT]).utcoffset().total_seconds() == 0
    gates = {(g["metric"], g["scale"]): g for g in json.loads(tags[reg.TAG_GATES])}
    assert gates[("psnr", 4)]["status"] == "passed"
    assert (gates[("psnr", 4)]["candidate"], gates[("psnr", 4)]["champion"]) == (24.3, 24.0)
    assert gates[("lpips", 4)]["status"] == "skipped"
    # every gate's result is printed as a table row
    for metric in ("psnr", "ssim", "lpips", "text_gain_psnr"):
        assert any(line.startswith(metric + " ") for line in out.splitlines()), metric
    assert promote_tags(client, model, "1") == tags1  # the old champion is untouched


def _make_champion(server, client, model, capsys, version="1", metrics=GOOD) -> None:
    evaluate(client, model, version, metrics)
    assert promote(server, capsys, "--model", model, "--version", version)[0] == 0


def test_worse_candidate_is_refused_and_nothing_changes(mlflow_server, client, model, capsys):
    _make_champion(mlflow_server, client, model, capsys)
    evaluate(client, model, "3", WORSE)
    before = promote_tags(client, model, "3"), promote_tags(client, model, "1")
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "3")
    assert code == 1
    assert f"REFUSED: {model}@champion stays version 1" in out
    assert "gate psnr max_drop: x4/psnr 23.8000 is below 23.9500 (champion 24.0000 - 0.05)" in out
    assert alias(client, model) == "1"
    assert (promote_tags(client, model, "3"), promote_tags(client, model, "1")) == before
    res = run_promote(PromoteConfig(model=model, version="3", tracking_uri=mlflow_server.uri))
    assert isinstance(res, PromoteResult) and res.action == "refused" and res.exit_code == 1
    assert {g.metric: g.status for g in res.gates}["psnr"] == "failed"


def test_dry_run_changes_nothing(mlflow_server, client, model, capsys):
    _make_champion(mlflow_server, client, model, capsys)
    evaluate(client, model, "2", BETTER)
    evaluate(client, model, "3", WORSE)
    before = {v: promote_tags(client, model, v) for v in "123"}
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "2", "--dry-run")
    assert code == 0, out
    assert "DRY RUN, nothing changed; would be PROMOTED" in out
    assert f"version 2  {reg.TAG_PREVIOUS} = 1" in out  # the tags it would write
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "3", "--dry-run")
    assert code == 1 and "would be REFUSED" in out and "x4/psnr 23.8000" in out
    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback", "--dry-run")
    assert code == 1 and "first champion" in out
    assert alias(client, model) == "1"
    assert {v: promote_tags(client, model, v) for v in "123"} == before


def test_rollback_restores_the_previous_champion(mlflow_server, client, model, capsys):
    _make_champion(mlflow_server, client, model, capsys)
    _make_champion(mlflow_server, client, model, capsys, "2", BETTER)
    before = {v: promote_tags(client, model, v) for v in "12"}
    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback", "--dry-run")
    assert code == 0 and "would be ROLLED BACK" in out, out
    assert (
        alias(client, model) == "2" and {v: promote_tags(client, model, v) for v in "12"} == before
    )

    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback")
    assert code == 0, out
    assert f"ROLLED BACK: {model}@champion -> version 1 (was version 2)" in out
    assert alias(client, model) == "1"
    restored, demoted = promote_tags(client, model, "1"), promote_tags(client, model, "2")
    assert restored[reg.TAG_RB_FROM] == "2" and demoted[reg.TAG_RB_TO] == "1"
    assert restored[reg.TAG_RB_AT] == demoted[reg.TAG_RB_AT]
    assert (
        restored[reg.TAG_RB_BY] == "alice" and "from version 2 to 1" in restored[reg.TAG_RB_REASON]
    )
    assert restored[reg.TAG_PREVIOUS] == "none"  # its own promotion record is kept

    # version 1 was the first champion: nothing further back
    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback")
    assert code == 1 and "first champion" in out and "delete_registered_model_alias" in out
    assert alias(client, model) == "1"


def test_promoting_the_champion_again_is_a_noop(mlflow_server, client, model, capsys):
    _make_champion(mlflow_server, client, model, capsys)
    tags = client.get_model_version(model, "1").tags
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "1")
    assert code == 0 and "NOTHING TO DO: version 1 already is" in out
    assert client.get_model_version(model, "1").tags == tags and alias(client, model) == "1"


def test_rollback_without_audit_trail_and_concurrent_alias_move_are_refused(
    mlflow_server, client, model, capsys
):
    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback")
    assert code == 1 and "@champion is not set: there is nothing to roll back" in out
    client.set_registered_model_alias(model, "champion", "2")  # set by hand, no audit tags
    code, out = promote(mlflow_server, capsys, "--model", model, "--rollback")
    assert code == 1 and f"version 2 has no {reg.TAG_PREVIOUS} tag" in out
    assert alias(client, model) == "2"
    # the alias moved by someone else between the gates and the move: refused, tags put back
    client.set_model_version_tag(model, "3", reg.TAG_REASON, "old reason")
    with pytest.raises(RuntimeError, match="moved from 1 to 2 while promoting"):
        new = {reg.TAG_REASON: "new", reg.TAG_BY: "x"}
        reg.move_alias(client, model, "champion", "3", "1", new)
    assert promote_tags(client, model, "3") == {reg.TAG_REASON: "old reason"}
    assert alias(client, model) == "2"
    res = run_promote(PromoteConfig(model=model, version=2, tracking_uri=mlflow_server.uri))
    assert res.action == "noop" and res.exit_code == 0  # an int version works from Python


def test_missing_or_mismatched_evaluations_are_refused_with_the_command(
    mlflow_server, client, model, capsys
):
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "1")
    assert code == 1 and "version 1 has no finished evaluation" in out
    assert f"clipsr evaluate --model models:/{model}/1 --shards" in out
    assert alias(client, model) is None

    _make_champion(mlflow_server, client, model, capsys)  # evaluated on SHARDS_A
    run2 = evaluate(client, model, "2", BETTER, manifest=SHARDS_B)
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "2")
    assert code == 1, out
    assert "champion version 1 has no evaluation on the candidate's test shards" in out
    assert SHARDS_B in out and run2 in out and f"is on shards {SHARDS_A}" in out
    assert f"clipsr evaluate --model models:/{model}/1 --shards s3://data/shards-bbbb" in out
    assert alias(client, model) == "1" and not promote_tags(client, model, "2")

    # pinning the shards both were evaluated on makes them comparable
    evaluate(client, model, "2", BETTER, manifest=SHARDS_A)
    evaluate(client, model, "2", BETTER, manifest=SHARDS_B)  # the latest is on B again
    code, out = promote(
        mlflow_server, capsys, "--model", model, "--version", "2", "--manifest-sha256", "c" * 64
    )
    assert code == 1 and "no finished evaluation on the test shards with manifest" in out
    code, out = promote(
        mlflow_server, capsys, "--model", model, "--version", "2", "--manifest-sha256", SHARDS_A
    )
    assert code == 0, out
    assert promote_tags(client, model, "2")[reg.TAG_MANIFEST] == SHARDS_A


def test_scales_and_missing_required_metrics(mlflow_server, client, model, capsys):
    _make_champion(mlflow_server, client, model, capsys, metrics={**GOOD, "lpips": 0.3})
    evaluate(client, model, "2", BETTER, scale=16)
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "2")
    assert code == 1 and "champion was evaluated at x4 but the candidate was not" in out
    evaluate(client, model, "2", BETTER)  # x4, no lpips
    required = "gates=[{metric: lpips, rule: max_rise, value: 0.01}]"
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "2", required)
    assert code == 1 and "x4/lpips not computed for the candidate" in out
    assert "--lpips-backbone-weights" in out and alias(client, model) == "1"


def test_unknown_model_version_or_tracking_server_exit_2(
    mlflow_server, client, model, capsys, monkeypatch
):
    code, out = promote(mlflow_server, capsys, "--model", model + "-nope", "--version", "1")
    assert code == 2 and "no registered model named" in out
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "7")
    assert code == 2 and f"model {model!r} has no version 7 (versions: 1, 2, 3)" in out
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--model", model, "--version", "1"]) == 2
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert (
        main(
            [
                "--model",
                model,
                "--version",
                "1",
                "--tracking-uri",
                f"http://127.0.0.1:{free_port()}",
            ]
        )
        == 2
    )
    assert "is not reachable" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # the environment works too
    evaluate(client, model, "1", GOOD)
    assert main(["--model", model, "--version", "1"]) == 0
    assert main(["--model", model]) == 2 and "--version N" in capsys.readouterr().err


def _s3_keys(server: MlflowServer, model_id: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=server.s3.endpoint_url, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=server.s3.bucket)
    return [o["Key"] for p in pages for o in p.get("Contents", []) if model_id in o["Key"]]


def test_corrupt_or_missing_artifact_is_refused(mlflow_server, client, tiny_clip, tmp_path, capsys):
    name = f"clipsr-broken-{uuid.uuid4().hex[:8]}"
    checkpoint = text_sensitive_checkpoint(tiny_clip, tmp_path / "ck")
    mlflow.set_tracking_uri(mlflow_server.uri)
    with mlflow.start_run(experiment_id=_experiment(mlflow_server.uri, "clipsr-promote")):
        model_uri, version = log_generator_model(checkpoint, name, {})
    mlflow.set_tracking_uri(None)
    evaluate(client, name, version, GOOD)
    model_id = model_uri.removeprefix("models:/")
    (weights,) = [
        k for k in _s3_keys(mlflow_server, model_id) if k.endswith("/generator.safetensors")
    ]
    s3 = boto3.client("s3", endpoint_url=mlflow_server.s3.endpoint_url, region_name="us-east-1")
    s3.put_object(Bucket=mlflow_server.s3.bucket, Key=weights, Body=b"not safetensors")
    code, out = promote(mlflow_server, capsys, "--model", name, "--version", version)
    assert code == 1 and f"models:/{name}/{version}: generator.safetensors: sha256 mismatch" in out
    assert alias(client, name) is None and not promote_tags(client, name, version)
    s3.delete_object(Bucket=mlflow_server.s3.bucket, Key=weights)
    code, out = promote(mlflow_server, capsys, "--model", name, "--version", version, "--dry-run")
    assert code == 1 and "generator weights file generator.safetensors is missing" in out
    assert alias(client, name) is None and not promote_tags(client, name, version)
    assert not any(Path(tmp_path / "tmp").glob("clipsr-promote-*"))  # downloads cleaned up


def test_a_barely_trained_first_candidate_is_refused(mlflow_server, client, model, capsys):
    """The default gates: a first champion must beat bicubic PSNR on the evaluation set."""
    evaluate(client, model, "1", BARELY_TRAINED)
    code, out = promote(mlflow_server, capsys, "--model", model, "--version", "1")
    assert code == 1 and "REFUSED" in out and alias(client, model) is None
    assert "gate psnr over_bicubic: x4/psnr 23.4000 is below 23.5000 (bicubic 23.5000 + 0)" in out
