"""``clipsr pretrain-clip`` end to end: real shards, Ray Train, an embedded MLflow store; the
weights it writes load as ``model.clip.checkpoint`` and are registered."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from clipsr.clip_backbone import ClipBackbone
from clipsr.config import ClipConfig
from jobs.pretrain_clip import main, run_pretrain_clip
from jobs.pretrain_clip_config import load_pretrain_clip_config


@pytest.fixture(scope="module")
def shape_shards(ray_session, tmp_path_factory):
    from pipelines.bundled_corpus import write_shapes
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    root = tmp_path_factory.mktemp("clip")
    write_shapes(root / "corpus", train=64, test=16)
    overrides = [
        f"source.path={root / 'corpus'}",
        f"output={root / 'shards'}",
        "source.folder_split_dirs=true",
        "hr_size=128",
        "scales=[16]",
        "degradation.kind=box",
    ]
    run_preprocess(load_preprocess_config(None, overrides), progress=False)
    return root / "shards"


@pytest.fixture(autouse=True)
def _no_global_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def test_trains_writes_registers_and_the_weights_load(shape_shards, tmp_path):
    cfg = load_pretrain_clip_config(
        "configs/pretrain_clip/tiny.yaml",
        [
            f"data.shards={shape_shards}",
            "data.batch_size=16",
            "data.loader_workers=0",
            "run.steps=20",
            "run.eval_every=20",
            "run.log_every=10",
            "run.checkpoint_every=20",
            f"run.storage_path={tmp_path / 'runs'}",
            f"output={tmp_path / 'clip.safetensors'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.system_metrics=false",
        ],
    )
    result = run_pretrain_clip(cfg)
    assert result.output == str(tmp_path / "clip.safetensors")
    for key in ("clip/zero_shot_shape", "clip/zero_shot_colour", "clip/image_to_text_r1"):
        assert 0 <= result.metrics[key] <= 1
    assert json.loads((tmp_path / "clip.json").read_text())["arch"] == "clipsr-tiny"
    # the file is what model.clip.checkpoint takes
    backbone = ClipBackbone(
        ClipConfig(arch="clipsr-tiny", checkpoint=result.output, image_taps=[1, 2, 3])
    )
    assert backbone.weights_source == result.output
    assert torch.isfinite(backbone.encode_text(["red circles on a grey background"])).all()
    # registered: the version's artifacts are the weights
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.registered == "models:/clipsr-clip-tiny/1"
    version = client.get_model_version("clipsr-clip-tiny", "1")
    assert version.run_id == result.run_id and "zero_shot_shape" in version.description
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "clip/zero_shot_shape" in run.data.metrics


def test_bad_config_is_one_line_before_any_work(tmp_path, capsys):
    code = main(["configs/pretrain_clip/tiny.yaml", "data.shards=", "run.steps=5"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipsr pretrain-clip:") and "data.shards" in err and "\n" not in err
    code = main(["configs/pretrain_clip/tiny.yaml", f"data.shards={tmp_path}/none"])
    assert code == 2 and "clipsr preprocess" in capsys.readouterr().err
