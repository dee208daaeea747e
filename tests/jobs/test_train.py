"""``clipsr train`` end to end on Ray Train (2 CPU workers, tiny preset, small shards)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from clipsr.checkpoint import load_part
from jobs.train_config import load_train_config
from pipelines.bundled_photos import bundled_photos

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CFG = ROOT / "configs" / "train" / "tiny-x4.yaml"


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory) -> Path:
    """Shards of 128 px crops of the bundled photographs, 4x LR."""
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    corpus = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    photos = bundled_photos("train") + bundled_photos("test")
    for i in range(32):
        photo = photos[i % len(photos)]
        h, w, _ = photo.image.shape
        side = int(rng.integers(160, min(h, w, 320)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        Image.fromarray(photo.image[y : y + side, x : x + side]).save(corpus / f"c{i:03d}.jpg")
        (corpus / f"c{i:03d}.txt").write_text(photo.caption + "\n")
    out = tmp_path_factory.mktemp("shards")
    cfg = load_preprocess_config(
        None,
        [
            f"source.path={corpus}",
            "source.kind=folder",
            f"output={out}",
            "hr_size=128",
            "scales=[4]",
            "samples_per_shard=6",
            "test_fraction=0.2",
        ],
    )
    run_preprocess(cfg, progress=False)
    return out


def _cfg(shards: Path, storage: str, name: str, *overrides: str):
    return load_train_config(
        TRAIN_CFG,
        [
            f"data.shards={shards}",
            f"run.storage_path={storage}",
            f"run.name={name}",
            "data.batch_size=2",
            "data.loader_workers=1",
            "run.log_every=1",
            "run.val_samples=4",
            "tracking.system_metrics=false",
            *overrides,
        ],
    )


def test_two_workers_against_mlflow_server_and_s3(
    shards, mlflow_server, s3_prefix, s3_server, tmp_path
):
    """Trains, validates, checkpoints to S3, logs over HTTP to a real `mlflow server` whose
    artifacts live on S3, and registers the EMA generator."""
    import mlflow

    from jobs.tracking import load_resolver
    from jobs.train import run_train
    from pipelines import storage

    cfg = _cfg(
        shards,
        f"{s3_prefix}/runs",
        "served",
        "run.steps=4",
        "run.checkpoint_every=2",
        "run.validate_every=2",
        f"tracking.tracking_uri={mlflow_server.uri}",
        "tracking.registered_model=clipsr-served",
        f"data.endpoint_url={s3_server.endpoint_url}",
    )
    result = run_train(cfg)
    assert result.metrics["step"] == 4 and result.model_version == "1"
    client = mlflow.MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(result.run_id, "loss/g_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(result.run_id, "val/psnr")) == 2
    assert client.get_metric_history(result.run_id, "val/psnr_bicubic")
    run = client.get_run(result.run_id)
    assert run.data.params["model.scale"] == "4" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert artifacts == {"samples/step_0000002.png", "samples/step_0000004.png"}
    version = client.get_model_version("clipsr-served", "1")
    assert version.tags["scales"] == "4" and len(version.tags["dataset_manifest_sha256"]) == 64
    # the complete record: datasets, descriptions, CLIP weights, the URI the other commands take
    assert result.model_uri == "models:/clipsr-served/1"
    assert version.tags["clipsr.clip_weights"].startswith("random")
    assert "4 steps" in version.description and "CLIP weights: random" in version.description
    assert client.get_registered_model("clipsr-served").description
    contexts = {
        d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
        for d in run.inputs.dataset_inputs
    }
    assert sorted(contexts.values()) == ["training", "validation"]
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {
        version.tags["dataset_manifest_sha256"][:36]
    }
    opts = storage.StorageOptions(endpoint_url=s3_server.endpoint_url)
    ckpts = storage.list_files(f"{s3_prefix}/runs/served", opts, suffixes=("checkpoint.json",))
    assert len(ckpts) == 2  # checkpoints at steps 2 and 4 (num_to_keep 2) on S3
    # registered: the inference checkpoint only; the training checkpoint is linked from the run
    assert run.data.tags["clipsr.training_checkpoint"] == result.checkpoint
    assert result.checkpoint.startswith(f"{s3_prefix}/runs/served/checkpoint_")
    in_run = storage.list_files(result.checkpoint, opts)
    assert any(p.endswith("discriminator.safetensors") for p in in_run)
    model = mlflow.artifacts.download_artifacts("models:/clipsr-served/1", dst_path=str(tmp_path))
    registered = {p.name for p in Path(model).rglob("*.safetensors")}
    assert registered == {"generator.safetensors", "clip.safetensors"}  # CLIP: random weights
    resolver = load_resolver("models:/clipsr-served/1")
    sr = resolver.upscale_tensor(torch.zeros(1, 3, 32, 32), ["a cat"])
    assert sr.shape == (1, 3, 128, 128)


def test_resume_equals_uninterrupted(shards, tmp_path, ray_session):
    """N steps, stop, resume for N more == 2N straight: same losses and weights."""
    from jobs.train import run_train

    straight = run_train(
        _cfg(
            shards,
            str(tmp_path),
            "straight",
            "run.steps=4",
            "run.checkpoint_every=2",
            "run.validate_every=100",
        )
    )
    first = run_train(
        _cfg(
            shards,
            str(tmp_path),
            "resumed",
            "run.steps=2",
            "run.checkpoint_every=2",
            "run.validate_every=100",
        )
    )
    second = run_train(
        _cfg(
            shards,
            str(tmp_path),
            "resumed",
            "run.steps=4",
            "run.checkpoint_every=2",
            "run.validate_every=100",
        )
    )
    assert second.run_id == first.run_id  # the same MLflow run continues
    losses = {k: v for k, v in straight.metrics.items() if k.startswith("loss/")}
    assert losses == {k: v for k, v in second.metrics.items() if k.startswith("loss/")}
    for part in ("generator", "generator_live", "discriminator", "optimizer_generator"):
        a = load_part(straight.checkpoint, part)
        b = load_part(second.checkpoint, part)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
    # a rerun that could not work is refused on the driver, before Ray Train retries it
    from clipsr.config_loader import ConfigError

    more = ("run.steps=6", "run.checkpoint_every=2", "run.validate_every=100")
    with pytest.raises(ConfigError, match=r"model\.clip\.init_seed: differs from the checkpoint"):
        run_train(_cfg(shards, str(tmp_path), "resumed", *more, "model.clip.init_seed=7"))
    damaged = Path(second.checkpoint) / "generator_live.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    with pytest.raises(ConfigError, match=r"resume from, .*, is damaged \(generator_live"):
        run_train(_cfg(shards, str(tmp_path), "resumed", *more))


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(shards, tmp_path):
    """Run as a user would, from their own directory with relative paths (Ray Train runs the
    workers elsewhere: the job must resolve them), and kill a worker mid-run."""
    cmd = [
        sys.executable,
        "-m",
        "jobs.train",
        str(TRAIN_CFG),
        f"data.shards={os.path.relpath(shards, tmp_path)}",
        "run.storage_path=runs",
        "run.name=killed",
        "run.steps=12",
        "run.checkpoint_every=3",
        "run.validate_every=100",
        "data.batch_size=2",
        "data.loader_workers=1",
        "run.max_failures=2",
        "tracking.system_metrics=false",
    ]
    # mlflow.set_tracking_uri() in earlier tests of this process exports MLFLOW_TRACKING_URI;
    # this run is about the embedded store, so the job must not inherit one.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    run_dir = tmp_path / "runs" / "killed"
    while time.time() < deadline and not list(run_dir.glob("checkpoint_*")):
        time.sleep(0.2)
    victims = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline())
    ]
    assert victims, "no Ray Train worker process found"
    # the process group's rendezvous store and gloo listen on the node address (127.0.0.1)
    pids = {p.pid for p in victims}
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening and all(ip.endswith("127.0.0.1") for ip in listening), listening
    victims[-1].kill()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "train done" in out
    assert "resumed from the checkpoint at step" in out
    # The workers logged into the embedded store of the storage root (shared by its runs), not
    # one in their cwd.
    import mlflow

    assert not (tmp_path / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)  # the store also holds MLflow's empty Default
    assert "loss/g_loss" in run.data.metrics, sorted(run.data.metrics)


def test_non_finite_loss_stops_with_the_step_named(shards, tmp_path, ray_session):
    from jobs.train import TrainingFailed, run_train

    cfg = _cfg(shards, str(tmp_path), "nan", "run.steps=3", "loss.weights.reconstruction=.nan")
    with pytest.raises(TrainingFailed, match=r"non-finite loss at step 1.*last good checkpoint"):
        run_train(cfg)


def test_local_paths_are_resolved_against_the_driver_directory(tmp_path, monkeypatch):
    from jobs.train import absolute_local_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(
        TRAIN_CFG,
        [
            "data.shards=shards",
            "run.storage_path=runs",
            "model.clip.checkpoint=",
            "model.clip.cache_dir=~/hf",
            "loss.vgg16_weights=random",
            "metrics.lpips_backbone_weights=w/vgg.pth",
        ],
    )
    absolute_local_paths(cfg)
    assert cfg.data.shards == str(tmp_path / "shards")
    assert cfg.run.storage_path == str(tmp_path / "runs")
    assert cfg.model.clip.cache_dir == str(Path.home() / "hf")
    assert cfg.metrics.lpips_backbone_weights == str(tmp_path / "w" / "vgg.pth")
    assert (cfg.model.clip.checkpoint, cfg.loss.vgg16_weights) == ("", "random")
    cfg = load_train_config(TRAIN_CFG, ["data.shards=s3://b/shards", "run.storage_path=s3://b/r"])
    absolute_local_paths(cfg)
    assert (cfg.data.shards, cfg.run.storage_path) == ("s3://b/shards", "s3://b/r")


def test_missing_shards_and_scale_fail_before_ray(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(TRAIN_CFG), f"data.shards={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "manifest.json missing" in res.stderr


def test_wrong_scale_and_unreachable_tracking_fail_before_ray(shards, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            str(ROOT / "configs/train/tiny-x8.yaml"),
            f"data.shards={shards}",
            f"run.storage_path={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "scale(s) [8]; available scales: [4]" in res.stderr
    start = time.time()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            str(TRAIN_CFG),
            f"data.shards={shards}",
            f"run.storage_path={tmp_path}",
            "tracking.tracking_uri=http://127.0.0.1:9",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "http://127.0.0.1:9" in res.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "tiny-x4").exists()  # nothing started
    res = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(TRAIN_CFG), f"data.shards={shards}",
         f"run.storage_path={tmp_path}", "model.clip.pretrained=openaii"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.clip.pretrained: 'openaii' is not a pretrained tag of 'clipsr-tiny'" in res.stderr
    assert not (tmp_path / "tiny-x4").exists()  # refused before Ray and MLflow


def test_init_from_a_checkpoint_of_another_model_fails_before_ray(
    shards, tiny_clip, tmp_path, capsys
):
    from clipsr.inference import save_generator_checkpoint
    from clipsr.training import build_generator
    from jobs.train import main
    from tests.conftest import tiny_config

    cfg8 = tiny_config(8)
    save_generator_checkpoint(tmp_path / "x8", cfg8, build_generator(cfg8, tiny_clip), tiny_clip)
    args = [str(TRAIN_CFG), f"data.shards={shards}", f"run.storage_path={tmp_path}"]
    assert main([*args, f"run.init_from={tmp_path / 'x8'}"]) == 2
    err = capsys.readouterr().err
    assert "run.init_from: the generator weights in" in err and "head.upsample.4" in err
    assert main([*args, f"run.init_from={tmp_path / 'none'}"]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
