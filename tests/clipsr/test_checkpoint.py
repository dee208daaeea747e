import copy
import json

import pytest
import torch
from PIL import Image

from clipsr.checkpoint import CheckpointError, load_part, read_manifest, save_checkpoint
from clipsr.inference import SuperResolver, image_to_tensor, save_generator_checkpoint
from clipsr.training import build_models, build_optimizers, train_step
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    """A tiny 4x model after two training steps, saved as a checkpoint directory."""
    cfg = tiny_config(4)
    models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    hr = torch.rand(2, 3, 128, 128) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
    text = tiny_clip.encode_text(["a red bird", "a grey cat"])
    for _ in range(2):
        train_step(models, opts, lr, hr, text, cfg.loss.weights)
    directory = save_generator_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "model", cfg, models.generator, tiny_clip
    )
    return cfg, models, directory


def test_round_trip_is_bit_exact(trained):
    cfg, models, directory = trained
    state = models.generator.state_dict()
    loaded = load_part(directory, "generator")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    manifest = read_manifest(directory)
    assert manifest["scale"] == 4 and manifest["wiring"] == "paper"
    assert manifest["clip_weights"] == "random"  # so CLIP's weights are saved too
    clip = load_part(directory, "clip")
    assert all(torch.equal(clip[k], v) for k, v in models.clip.weights_state_dict().items())
    assert not list(directory.glob("*.pt")) and not list(directory.glob("*.pkl"))


def test_super_resolver_reproduces_the_in_memory_model(trained):
    cfg, models, directory = trained
    resolver = SuperResolver.from_checkpoint(directory, device="cpu")
    assert resolver.cfg == cfg and resolver.scale == 4
    lr = torch.rand(2, 3, 32, 32) * 2 - 1
    prompts = ["a red bird", "a grey cat"]
    # a loaded generator is contiguous (NCHW), like the EMA copy that training exports; the
    # live one trains in channels_last, whose convolutions round differently
    generator = copy.deepcopy(models.generator).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        expected = generator(lr, models.clip.encode_text(prompts), models.clip).clamp(-1, 1)
    assert torch.equal(resolver.upscale_tensor(lr, prompts), expected)
    image = Image.fromarray((torch.rand(32, 40, 3) * 255).byte().numpy())
    out = resolver.upscale(image, "a red bird")
    assert out.size == (160, 128)
    results, scores = resolver.prompt_edit(image, ["a red bird", "a blue bird", ""])
    assert len(results) == 3 and all(r.size == (160, 128) for r in results)
    assert all(0 <= s <= 100 for s in scores)
    with pytest.raises(ValueError, match="image: LR size 30x40 does not fit"):
        resolver.upscale(image.resize((40, 30)), "x")
    with pytest.raises(ValueError, match="at least one prompt"):
        resolver.prompt_edit(image, [])
    assert image_to_tensor(image).min() >= -1


def test_corrupt_and_incomplete_checkpoints_are_refused(trained, tmp_path):
    cfg, models, directory = trained
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        SuperResolver.from_checkpoint(tmp_path / "nope")
    broken = tmp_path / "broken"
    save_checkpoint(broken, cfg, {"generator": models.generator.state_dict()})
    data = bytearray((broken / "generator.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (broken / "generator.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        SuperResolver.from_checkpoint(broken)
    (broken / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="checkpoint.json is missing"):
        SuperResolver.from_checkpoint(broken)
    other = tmp_path / "other"
    save_checkpoint(other, cfg, {"generator": models.generator.state_dict()})
    manifest = json.loads((other / "checkpoint.json").read_text())
    manifest["format_version"] = 99
    (other / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format 99"):
        read_manifest(other)
    mismatched = tmp_path / "mismatched"
    wide = tiny_config(4, "model.generator.head_channels=8")
    save_checkpoint(
        mismatched,
        wide,
        {"generator": models.generator.state_dict(), "clip": models.clip.weights_state_dict()},
    )
    with pytest.raises(CheckpointError, match="do not match its config.yaml"):
        SuperResolver.from_checkpoint(mismatched)
