import random

import numpy as np
import torch

from clipsr.inference import SuperResolver
from clipsr.train_state import load_training_checkpoint, save_training_checkpoint
from clipsr.training import EMA, Precision, build_models, build_optimizers, train_step
from tests.conftest import tiny_config


def _setup(tiny_clip):
    cfg = tiny_config(4)
    models = build_models(cfg, clip=tiny_clip)
    return cfg, models, build_optimizers(models, cfg.optim), EMA(models.generator, 0.9)


def _steps(cfg, models, opts, ema, tiny_clip, first: int, count: int) -> list[dict]:
    out = []
    for step in range(first, first + count):
        gen = torch.Generator().manual_seed(step)  # the batch of a step depends on the step only
        hr = torch.rand(2, 3, 128, 128, generator=gen) * 2 - 1
        lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
        text = tiny_clip.encode_text([f"caption {step}", f"other {step}"])
        # consume the global RNGs too, so that their restore is checked
        noise = torch.rand(()).item() + np.random.rand() + random.random()
        out.append(train_step(models, opts, lr + 1e-3 * noise, hr, text, cfg.loss.weights))
        ema.update(models.generator)
    return out


def test_resumed_training_equals_uninterrupted(tiny_clip, tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    cfg, models, opts, ema = _setup(tiny_clip)
    straight = _steps(cfg, models, opts, ema, tiny_clip, 0, 6)
    reference = {k: v.clone() for k, v in ema.model.state_dict().items()}
    live = {k: v.clone() for k, v in models.discriminator.state_dict().items()}

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    cfg, models, opts, ema = _setup(tiny_clip)
    first = _steps(cfg, models, opts, ema, tiny_clip, 0, 3)
    save_training_checkpoint(tmp_path / "ck", cfg, models, opts, ema, Precision(), step=3)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # a new process would differ
    cfg, models, opts, ema = _setup(tiny_clip)
    step = load_training_checkpoint(tmp_path / "ck", models, opts, ema, Precision())
    assert step == 3
    second = _steps(cfg, models, opts, ema, tiny_clip, 3, 3)
    assert first + second == straight  # identical losses, step for step
    assert all(torch.equal(reference[k], v) for k, v in ema.model.state_dict().items())
    assert all(torch.equal(live[k], v) for k, v in models.discriminator.state_dict().items())


def test_training_checkpoint_is_an_inference_checkpoint_of_the_ema(tiny_clip, tmp_path):
    cfg, models, opts, ema = _setup(tiny_clip)
    _steps(cfg, models, opts, ema, tiny_clip, 0, 2)
    save_training_checkpoint(tmp_path / "ck", cfg, models, opts, ema, Precision(), step=2)
    resolver = SuperResolver.from_checkpoint(tmp_path / "ck", device="cpu")
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = ema.model(lr, tiny_clip.encode_text(["x"]), tiny_clip).clamp(-1, 1)
    assert torch.equal(resolver.upscale_tensor(lr, ["x"]), expected)


def test_the_inference_checkpoint_keeps_only_what_inference_needs(tiny_clip, tmp_path):
    from clipsr.checkpoint import inference_files, read_manifest, write_inference_checkpoint

    cfg, models, opts, ema = _setup(tiny_clip)
    _steps(cfg, models, opts, ema, tiny_clip, 0, 2)
    save_training_checkpoint(tmp_path / "ck", cfg, models, opts, ema, Precision(), step=2)
    training = read_manifest(tmp_path / "ck")
    assert inference_files(training) == [
        "checkpoint.json", "config.yaml", "clip.safetensors", "generator.safetensors"
    ]  # fmt: skip
    out = write_inference_checkpoint(tmp_path / "ck", tmp_path / "inference")
    manifest = read_manifest(out)
    assert sorted(manifest["parts"]) == ["clip", "generator"]
    assert manifest["parts"]["generator"] == training["parts"]["generator"]  # same sha256
    assert "training_state" not in manifest and manifest["exported_from_step"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(inference_files(training))
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    full = SuperResolver.from_checkpoint(tmp_path / "ck", device="cpu")
    small = SuperResolver.from_checkpoint(out, device="cpu")
    assert torch.equal(small.upscale_tensor(lr, ["x"]), full.upscale_tensor(lr, ["x"]))
    generator = tmp_path / "ck" / "generator.safetensors"
    generator.write_bytes(generator.read_bytes()[:-1] + b"\0")
    import pytest

    from clipsr.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not match its sha256"):
        write_inference_checkpoint(tmp_path / "ck", tmp_path / "again")
