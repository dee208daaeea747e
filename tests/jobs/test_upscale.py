import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipsr.inference import SuperResolver
from tests.conftest import text_sensitive_checkpoint

CLIPSR = str(Path(sys.executable).with_name("clipsr"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLIPSR, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tiny_clip, tmp_path_factory):
    return text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "m")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (scikit-image ships them), downscaled to LR sizes that fit 4x."""
    d = tmp_path_factory.mktemp("lr")
    Image.fromarray(data.astronaut()).resize((48, 48), Image.BICUBIC).save(d / "astronaut.png")
    Image.fromarray(data.chelsea()).resize((64, 40), Image.BICUBIC).save(d / "chelsea.jpg")
    Image.fromarray(data.coffee()).resize((30, 30), Image.BICUBIC).save(d / "odd.png")
    (d / "notes.png").write_text("not an image")
    return d


def test_single_prompt_writes_sr_images(checkpoint, photos, tmp_path):
    res = run(
        "upscale",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "a person in a space suit",
        "--scale",
        "4",
        str(photos / "astronaut.png"),
        str(photos / "chelsea.jpg"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "astronaut_x4.png").size == (192, 192)
    assert Image.open(tmp_path / "chelsea_x4.png").size == (256, 160)
    report = json.loads((tmp_path / "astronaut_x4.json").read_text())
    assert report["results"][0]["prompt"] == "a person in a space suit"
    assert report["clip_weights"].startswith("random")  # the fixture's CLIP is a random init


def test_several_prompts_give_a_grid(checkpoint, photos, tmp_path):
    res = run(
        "upscale",
        "--checkpoint",
        str(checkpoint),
        "--scale",
        "4",
        "--prompt",
        "an orange cat",
        "--prompt",
        "a grey cat",
        str(photos / "chelsea.jpg"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    grid = Image.open(tmp_path / "chelsea_x4_prompts.png")
    assert grid.size[0] == 3 * 256 and grid.size[1] > 160 + 2 * 14  # prompt + CLIP-score lines
    a = np.asarray(Image.open(tmp_path / "chelsea_x4_p0-an-orange-cat.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "chelsea_x4_p1-a-grey-cat.png"), dtype=int)
    assert np.abs(a - b).max() > 0  # the prompt changes the result


def test_clear_errors(checkpoint, photos, tmp_path):
    res = run(
        "upscale",
        "--checkpoint",
        str(tmp_path / "missing"),
        "--prompt",
        "x",
        "--scale",
        "4",
        str(photos / "astronaut.png"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 2 and "checkpoint directory not found" in res.stderr
    res = run(
        "upscale",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "x",
        "--scale",
        "8",
        str(photos / "astronaut.png"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 2 and "is a 4x model" in res.stderr
    res = run(
        "upscale",
        "--checkpoint",
        str(checkpoint),
        "--scale",
        "4",
        str(photos / "astronaut.png"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 2 and "--prompt" in res.stderr
    res = run(
        "upscale",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "x",
        "--scale",
        "4",
        str(photos / "odd.png"),
        str(photos / "notes.png"),
        str(photos / "astronaut.png"),
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 1
    assert "odd.png: LR size 30x30 does not fit this 4x model" in res.stderr
    assert "notes.png" in res.stderr and "2 of 3 inputs skipped" in res.stderr
    assert (tmp_path / "astronaut_x4.png").is_file()  # the good input is still done


def test_cli_lists_commands_and_rejects_unknown():
    res = run("--help")
    assert res.returncode == 0 and "upscale" in res.stdout
    res = run("nonsense")
    assert res.returncode == 2 and "unknown command 'nonsense'" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "jobs.upscale", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--checkpoint" in res.stdout


# -- the model from the MLflow registry (a real `mlflow server`, artifacts on S3) ---------------
@pytest.fixture(scope="module")
def champion(mlflow_server, checkpoint) -> str:
    """The tiny checkpoint registered from a run as version 1 of a new model, @champion."""
    import mlflow

    from jobs.tracking import RunTracker, log_generator_model

    tracker = RunTracker(mlflow_server.uri)
    tracker.start("clipsr-upscale", "train-x4", {"scale": 4}, None, system_metrics=False)
    name = f"clipsr-upscale-{uuid.uuid4().hex[:8]}"
    try:
        _, version = log_generator_model(checkpoint, name, {"scales": "4"})
    finally:
        tracker.end()
        mlflow.set_tracking_uri(None)
    mlflow.MlflowClient(mlflow_server.uri).set_registered_model_alias(name, "champion", version)
    return name


def test_model_from_the_registry_champion(champion, mlflow_server, mlflow_tmpdir, checkpoint,
                                          photos, tmp_path):  # fmt: skip
    lr = Image.open(photos / "astronaut.png").convert("RGB")
    resolver = SuperResolver.from_checkpoint(checkpoint, device="cpu")
    expected = np.asarray(resolver.upscale(lr, "an astronaut"))
    uri = f"models:/{champion}@champion"
    args = ["--model", uri, "--prompt", "an astronaut", str(photos / "astronaut.png")]
    res = run("upscale", *args, "--tracking-uri", mlflow_server.uri, "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr  # no --scale: the model's
    assert np.array_equal(np.asarray(Image.open(tmp_path / "astronaut_x4.png")), expected)
    # the same from MLFLOW_TRACKING_URI, and a version instead of the alias
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    args[1] = f"models:/{champion}/1"
    res = subprocess.run(
        [CLIPSR, "upscale", *args, "--out", str(tmp_path / "v1")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "v1" / "astronaut_x4.png")), expected)


def test_batch_from_the_registry_on_ray(champion, mlflow_server, mlflow_tmpdir, ray_session,
                                        checkpoint, photos, tmp_path):  # fmt: skip
    """The actors load models:/NAME@champion (pinned to its version) and give the same images."""
    from jobs.upscale import main

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photos / "chelsea.jpg", folder)
    (folder / "chelsea.txt").write_text("a tabby cat\n")
    out = tmp_path / "out"
    uri = f"models:/{champion}@champion"
    args = ["--model", uri, "--tracking-uri", mlflow_server.uri, "--input-dir", str(folder)]
    assert main([*args, "--out", str(out)]) == 0
    lr = Image.open(folder / "chelsea.jpg").convert("RGB")
    expected = SuperResolver.from_checkpoint(checkpoint, device="cpu").upscale(lr, "a tabby cat")
    got = np.asarray(Image.open(out / "chelsea_x4.png"), dtype=int)
    assert np.abs(got - np.asarray(expected, dtype=int)).max() <= 1  # other thread counts
    record = json.loads((out / "upscaled.jsonl").read_text())
    assert record["caption"] == "a tabby cat" and (out / "skipped.jsonl").read_text() == ""


def test_bad_model_and_mode_are_config_errors(champion, mlflow_server, mlflow_tmpdir, photos,
                                              tmp_path, capsys):  # fmt: skip
    from jobs.upscale import main

    common = ["--tracking-uri", mlflow_server.uri, "--out", str(tmp_path), "--prompt", "x"]
    image = str(photos / "astronaut.png")
    assert main(["--model", f"models:/{champion}@nope", *common, image]) == 2
    assert f"models:/{champion}@nope" in capsys.readouterr().err
    assert main(["--model", f"models:/{champion}@nope", *common, "--input-dir", str(photos)]) == 2
    assert "cannot resolve" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "a", "--checkpoint", "b", *common, image])
    assert exit_.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "a", *common, image, "--input-dir", str(photos)])
    assert exit_.value.code == 2 and "not both" in capsys.readouterr().err
