import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

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
    assert report[0]["prompt"] == "a person in a space suit"


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
    assert grid.size == (3 * 256, 160 + 36)
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
