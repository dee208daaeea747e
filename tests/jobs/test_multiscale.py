"""One model for 4x, 8x and 16x through the whole pipeline, on real services: shards at three
scales, one Ray Train fit (2 workers, a scale drawn per batch), the registered version's tags,
``clipsr evaluate`` at every scale, ``clipsr promote`` gating every scale, ``clipsr upscale
--scale``. The cheap parts (single-file upscale) run on a checkpoint saved here."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from clipsr.checkpoint import read_manifest
from clipsr.inference import save_generator_checkpoint
from clipsr.training import build_generator
from jobs.evaluate import main as evaluate
from jobs.promote import main as promote
from jobs.train_config import load_train_config
from jobs.upscale import main as upscale
from tests.conftest import tiny_config
from tests.jobs.conftest import shapes_shards

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CFG = ROOT / "configs" / "train" / "tiny-multiscale.yaml"


@pytest.fixture(autouse=True)
def _no_global_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def _lr_image(path: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(path)
    return path


def test_upscale_picks_a_scale_of_a_multi_scale_checkpoint(tiny_clip, tmp_path, capsys):
    cfg = tiny_config(4, "model.scales=[4,8,16]")
    ck = save_generator_checkpoint(tmp_path / "ck", cfg, build_generator(cfg, tiny_clip), tiny_clip)
    assert read_manifest(ck)["scales"] == [4, 8, 16] and read_manifest(ck)["scale"] == 4
    lr = _lr_image(tmp_path / "lr.png", 8)
    base = ["--checkpoint", str(ck), "--prompt", "red squares", "--device", "cpu"]
    assert upscale([*base, "--scale", "16", str(lr), "--out", str(tmp_path / "sr")]) == 0
    assert Image.open(tmp_path / "sr" / "lr_x16.png").size == (128, 128)
    assert upscale([*base, "--scale", "2", str(lr), "--out", str(tmp_path / "sr")]) == 2
    err = capsys.readouterr().err
    assert "--scale 2 but" in err and "is a 4x/8x/16x model; pass --scale 4 or 8 or 16" in err


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory) -> Path:
    return shapes_shards(tmp_path_factory, 8, 4, "[4,8,16]", 4)


@pytest.mark.integration
def test_train_register_evaluate_promote_one_model_for_every_scale(
    shards, mlflow_server, mlflow_tmpdir, tmp_path, capsys
):
    from jobs.train import run_train

    uri, name = mlflow_server.uri, f"clipsr-multi-{uuid.uuid4().hex[:8]}"
    cfg = load_train_config(
        TRAIN_CFG,
        [
            f"data.shards={shards}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=multi",
            "data.batch_size=2",
            "data.loader_workers=1",
            "run.steps=4",
            "run.log_every=2",
            "run.checkpoint_every=4",
            "run.validate_every=4",
            "run.val_samples=2",
            f"tracking.tracking_uri={uri}",
            f"tracking.registered_model={name}",
            "tracking.system_metrics=false",
        ],
    )
    result = run_train(cfg)
    for scale in (4, 8, 16):
        assert f"val/psnr_x{scale}" in result.metrics
    assert result.metrics["val/psnr"] == result.metrics["val/psnr_x4"]  # the default scale
    client = mlflow.MlflowClient(uri)
    registered = client.get_model_version(name, result.model_version)
    assert registered.tags["scales"] == "4,8,16"
    assert registered.description.startswith("4x/8x/16x CLIP-SR generator")
    assert read_manifest(result.checkpoint)["scales"] == [4, 8, 16]
    mlflow.set_tracking_uri(None)

    out = tmp_path / "eval"
    args = ["--model", f"models:/{name}/1", "--shards", str(shards), "--tracking-uri", uri]
    assert evaluate([*args, "--out", str(out)]) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    assert sorted(doc["metrics"]) == ["x16", "x4", "x8"]
    assert doc["settings"]["crop_border"] == {"x4": 4, "x8": 8, "x16": 16}
    assert "crop border 4 at 4x, 8 at 8x, 16 at 16x." in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert all(f"{s}x, 4 samples" in printed for s in (4, 8, 16))

    gates = "gates=[{metric: psnr, rule: min, value: 0}, {metric: ssim, rule: max_drop, value: 1}]"
    assert promote(["--model", name, "--version", "1", "--tracking-uri", uri, gates]) == 0
    table = capsys.readouterr().out
    for scale in ("x4", "x8", "x16"):
        assert any(line.startswith("psnr") and f" {scale} " in line for line in table.splitlines())

    lr = _lr_image(tmp_path / "lr.png", 16)
    base = ["--model", f"models:/{name}@champion", "--tracking-uri", uri, "--prompt", "a shape"]
    assert upscale([*base, "--scale", "8", str(lr), "--out", str(tmp_path / "sr")]) == 0
    assert Image.open(tmp_path / "sr" / "lr_x8.png").size == (128, 128)
