"""``clipsr demo`` end to end against real services: shards and checkpoints on S3 (moto),
tracking and registry over HTTP (``mlflow server``), Ray Data and Ray Train on the local Ray.

A few steps only: this checks that every stage runs, hands its outputs to the next, and is
reused on a second run. The demo's quality claims (4x beats bicubic, the true caption beats a
mismatched one at 16x) are checked at full length by CI (``scripts/demo.sh --check``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from jobs.demo import SUMMARY, Demo, format_summary
from jobs.demo_config import load_demo_config
from jobs.evaluation_record import find_evaluation
from pipelines import storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_stage_on_services_and_reuses_them(
    ray_session, mlflow_server, s3_server, s3_prefix, mlflow_tmpdir, tmp_path
):
    overrides = [
        f"workdir={tmp_path / 'demo'}",
        f"storage={s3_prefix}",
        f"endpoint_url={s3_server.endpoint_url}",
        f"tracking_uri={mlflow_server.uri}",
        "num_workers=1",
        "shapes_train=24",
        "shapes_test=6",
        "photo_stride=128",
        "photos.steps=4",
        "shapes.steps=4",
        "eval_limit=6",
    ]
    cfg = load_demo_config(None, overrides)
    results = Demo(cfg).run()
    opts = s3_server.options
    for corpus in ("photos", "shapes"):
        assert storage.exists(f"{s3_prefix}/shards/{corpus}/manifest.json", opts)
    assert results["photos"]["train"]["checkpoint"].startswith(s3_prefix + "/runs/")

    client = mlflow.MlflowClient(mlflow_server.uri)
    for corpus, scale in (("photos", 4), ("shapes", 16)):
        name = f"clipsr-demo-x{scale}"
        version = results[corpus]["train"]["version"]
        assert client.get_model_version_by_alias(name, "champion").version == version
        record = find_evaluation(client, name, version)
        assert record is not None and f"x{scale}/text_gain_psnr" in record.metrics
        upscaled = results[corpus]["upscale"]
        assert upscaled["written"] == 6 if corpus == "shapes" else upscaled["written"] > 0
        assert (tmp_path / "demo" / "outputs").is_dir()
        assert json.loads(Path(results[corpus]["evaluate"]["json"]).read_text())
    summary = json.loads((tmp_path / "demo" / SUMMARY).read_text())
    assert set(summary["checks"]) == set(results["checks"])
    text = format_summary(results, tmp_path / "demo")
    assert "16x" in text and "text gain" in text and mlflow_server.uri in text

    versions = {n: len(client.search_model_versions(f"name='{n}'")) for n in ("clipsr-demo-x4",)}
    again = Demo(load_demo_config(None, overrides)).run()  # a second run reuses every stage
    assert set(again["seconds"].values()) == {0.0}
    assert again["shapes"]["train"] == results["shapes"]["train"]
    assert {n: len(client.search_model_versions(f"name='{n}'")) for n in versions} == versions
