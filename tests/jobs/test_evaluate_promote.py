"""Issue 5 end to end on a real ``mlflow server``: ``clipsr evaluate`` three registered versions
on the same test shards, then ``clipsr promote``: the first becomes champion, the better one is
promoted, the worse one refused (alias unchanged, reasons printed, exit 1), a dry run changes
nothing, and a rollback restores the previous champion."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pytest
import torch

from clipsr.inference import save_generator_checkpoint
from clipsr.training import build_generator
from jobs.evaluate import main as evaluate
from jobs.promote import main as promote
from jobs.tracking import RunTracker, log_generator_model
from tests.conftest import tiny_config
from tests.jobs.conftest import shapes_shards

pytestmark = pytest.mark.integration
GATES = (
    "gates=[{metric: psnr, rule: max_drop, value: 0.05},"
    " {metric: ssim, rule: max_drop, value: 0.01}]"
)


def _checkpoint(clip, directory: Path, noise: float) -> Path:
    """A tiny 4x generator: its zero-initialised output conv (SR = bicubic exactly) moved by
    ``noise``; more noise, lower PSNR."""
    cfg = tiny_config(4)
    gen = build_generator(cfg, clip)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if "to_rgb" in name:
                p.add_(noise * torch.randn_like(p))
    return save_generator_checkpoint(directory, cfg, gen, clip)


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory) -> Path:
    return shapes_shards(tmp_path_factory, 2, 6, "[4]", 3)


@pytest.fixture(autouse=True)
def _no_global_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def test_evaluate_then_promote_the_better_and_refuse_the_worse(
    shards, tiny_clip, mlflow_server, mlflow_tmpdir, tmp_path, capsys
):
    uri = mlflow_server.uri
    name = f"clipsr-gated-{uuid.uuid4().hex[:8]}"
    tracker = RunTracker(uri)
    tracker.start("clipsr-registry", name, {"scale": 4}, None, system_metrics=False)
    for noise in (0.02, 0.0, 0.3):  # versions 1 (fair), 2 (best: bicubic), 3 (worst)
        ck = _checkpoint(tiny_clip, tmp_path / f"ck-{noise}", noise)
        log_generator_model(ck, name, {"scales": "4"})
    tracker.end()
    mlflow.set_tracking_uri(None)
    psnr = {}
    for version in ("1", "2", "3"):
        out = tmp_path / f"eval-{version}"
        args = ["--model", f"models:/{name}/{version}", "--shards", str(shards)]
        assert evaluate([*args, "--out", str(out), "--tracking-uri", uri]) == 0
        psnr[version] = json.loads((out / "evaluation.json").read_text())["metrics"]["x4"]["psnr"]
    assert psnr["2"] > psnr["1"] + 0.1 > psnr["3"] + 0.2  # the premise: 2 best, 3 worst
    client = mlflow.MlflowClient(uri)

    def champion() -> str:
        return client.get_model_version_by_alias(name, "champion").version

    base = ["--model", name, "--tracking-uri", uri, GATES]
    assert promote([*base, "--version", "1"]) == 0  # no champion yet: the first becomes it
    assert champion() == "1"
    assert promote([*base, "--version", "2"]) == 0  # better: promoted
    assert champion() == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["clipsr.promote.previous_champion"] == "1"
    capsys.readouterr()

    assert promote([*base, "--version", "3"]) == 1  # worse: refused, nothing moves
    printed = capsys.readouterr()
    assert champion() == "2" and "psnr" in (printed.out + printed.err).lower()
    assert "FAILED" in printed.out or "REFUSED" in printed.out
    assert "clipsr.promote.previous_champion" not in client.get_model_version(name, "3").tags

    before = client.get_model_version(name, "1").tags
    assert promote([*base, "--version", "1", "--dry-run"]) == 1  # worse than 2: would refuse
    assert champion() == "2" and client.get_model_version(name, "1").tags == before

    assert promote([*base, "--rollback"]) == 0
    assert champion() == "1"
