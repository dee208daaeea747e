"""clipsr convert-reference on a file of exactly the reference's keys and shapes (random values).

Full size (178 M values: G with its CLIP trunk, D, the text head), as the release's files: the
CLIP trunk in fp16 (the reference loads CLIP in fp16 on GPUs), the rest fp32, with DDP's
``module.`` prefixes. The CLIP text tower is a random ViT-B/32 (model.clip.pretrained= empty),
as no CLIP weights can be downloaded here.
"""

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr.checkpoint import load_part, read_manifest
from jobs.cli import main as cli
from tests.clipsr.test_reference_weights import KEYS, NEVER_RUN

RANDOM_CLIP = "model.clip.pretrained="


def _random_reference() -> dict:
    gen = torch.Generator().manual_seed(0)
    layout = json.loads(KEYS.read_text())
    model = {}
    for part, keys in layout.items():
        model[part] = {}
        for key, shape in keys.items():
            fp16 = key.startswith("mapping.CLIP_ViT.")
            value = torch.randn(shape, generator=gen) * 0.02
            model[part][f"module.{key}"] = value.half() if fp16 else value
    return {"model": model, "optimizers": {}, "epoch": 220}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    state = _random_reference()
    path = tmp_path_factory.mktemp("reference") / "state_epoch_220.pth"
    torch.save(state, path)
    return path, {
        f"{p}.{k.removeprefix('module.')}": v
        for p, keys in state["model"].items()
        for k, v in keys.items()
    }


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The converted checkpoint directory and the converter's printed summary."""
    out = tmp_path_factory.mktemp("converted") / "checkpoint"
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        code = cli(["convert-reference", str(reference[0]), str(out), RANDOM_CLIP])
    assert code == 0
    return out, printed.getvalue()


def _sources(tensors: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """For each clipsr tensor, the reference keys holding exactly its values."""
    index: dict[tuple, list[str]] = {}
    for name, value in reference.items():
        first = float(value.flatten()[0])
        index.setdefault((tuple(value.shape), first), []).append(name)
    out = {}
    for key, value in tensors.items():
        candidates = index.get((tuple(value.shape), float(value.flatten()[0])), [])
        out[key] = [c for c in candidates if torch.equal(reference[c].float(), value.float())]
    return out


def test_convert_prints_a_summary(converted):
    summary = converted[1]
    print(summary)  # for the README
    assert "(epoch 220, 'module.' prefixes stripped)" in summary
    assert "read      netG 586, netD 17, netC 2 keys" in summary
    assert "placed    377 tensors" in summary and "unplaced  none" in summary
    assert "dropped   228 keys" in summary


def test_every_parameter_comes_from_a_mapped_key_and_upscale_runs(reference, converted, tmp_path):
    _, ref = reference
    out = converted[0]
    manifest = read_manifest(out)
    assert manifest["converted_from"]["epoch"] == 220
    assert manifest["wiring"] == "release" and sorted(manifest["parts"]) == [
        "clip",
        "discriminator",
        "generator",
    ]
    clip_state = load_part(out, "clip")
    trunk = {
        k: v
        for k, v in clip_state.items()
        if k.startswith("visual.")
        and k not in ("visual.proj", "visual.ln_post.weight", "visual.ln_post.bias")
    }
    tensors = {
        **{f"G {k}": v for k, v in load_part(out, "generator").items()},
        **{f"D {k}": v for k, v in load_part(out, "discriminator").items()},
        **{f"CLIP {k}": v for k, v in trunk.items()},
    }
    sources = _sources(tensors, ref)
    assert [k for k, s in sources.items() if len(s) != 1] == []  # each from one reference key
    used = [s[0] for s in sources.values()]
    assert len(set(used)) == len(used) == 377
    assert set(used) == {k for k in ref if not NEVER_RUN.match(k)}
    assert sources["G image_encoder.conv1.weight"] == ["netG.c1.weight"]
    assert sources["D text_head.net.0.weight"] == ["netC.joint_conv.0.weight"]

    # clipsr upscale loads it strictly (SuperResolver.from_checkpoint) and runs it
    lr = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(lr)
    args = ["upscale", "--checkpoint", str(out), "--prompt", "a bird", str(lr)]
    assert cli([*args, "--out", str(tmp_path / "sr"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "sr" / "lr_x4.png").size == (256, 256)


def test_a_missing_and_a_misshaped_key_are_refused_in_one_line(reference, tmp_path, capsys):
    pth, ref = reference
    state = torch.load(pth, weights_only=True)
    del state["model"]["netG"]["module.c2.bias"]
    state["model"]["netD"]["module.main.conv_s.weight"] = torch.zeros(512, 700, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli(["convert-reference", str(bad), str(tmp_path / "out"), RANDOM_CLIP])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "1 key(s) missing (netG.c2.bias)" in err
    assert "netD.main.conv_s.weight is [512, 700, 1, 1]" in err
    assert not (tmp_path / "out" / "checkpoint.json").exists()


def test_bad_files_and_an_occupied_output_exit_2(tmp_path, capsys):
    (tmp_path / "x.pth").write_bytes(b"nonsense")
    out = tmp_path / "out"
    assert cli(["convert-reference", str(tmp_path / "missing.pth"), str(out)]) == 2
    assert "missing.pth: no such file" in capsys.readouterr().err
    assert cli(["convert-reference", str(tmp_path / "x.pth"), str(out)]) == 2
    assert "cannot be read with torch.load(weights_only=True)" in capsys.readouterr().err
    out.mkdir()
    (out / "file").write_text("x")
    assert cli(["convert-reference", str(tmp_path / "x.pth"), str(out)]) == 2
    assert "not an empty directory (or pass --force)" in capsys.readouterr().err
    assert (
        cli(["convert-reference", str(tmp_path / "x.pth"), str(tmp_path / "o"), "model.x=1"]) == 2
    )
    assert "model.x" in capsys.readouterr().err


def test_train_accepts_it_as_a_starting_point(converted):
    """run.init_from: the run's model must fit the converted weights (checked before Ray)."""
    from clipsr.checkpoint import CheckpointError
    from clipsr.initial_weights import check_init_checkpoint
    from clipsr.reference_weights import reference_config

    out = converted[0]
    parts = check_init_checkpoint(out, reference_config(4, [RANDOM_CLIP]))
    assert parts == ["generator", "discriminator", "clip"]
    with pytest.raises(CheckpointError, match=r"4 missing \(e\.g\. head\.upsample\.4"):
        check_init_checkpoint(
            out, reference_config(16, [RANDOM_CLIP, "model.generator.lr_pre_upsample=1"])
        )
    with pytest.raises(CheckpointError, match="QuickGELU"):
        check_init_checkpoint(
            out, reference_config(4, [RANDOM_CLIP, "model.clip.quick_gelu=false"])
        )
