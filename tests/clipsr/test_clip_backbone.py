import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clipsr.clip_backbone import ClipBackbone, ClipWeightsError, RandomClipWeightsWarning
from clipsr.config import ClipConfig
from tests.conftest import tiny_config

TINY_JSON = Path(__file__).parents[2] / "clipsr" / "model_configs" / "clipsr-tiny.json"


def _tiny_cfg(**kw) -> ClipConfig:
    return replace(tiny_config().model.clip, **kw)


def _same_weights(a: ClipBackbone, b: ClipBackbone) -> bool:
    sa, sb = a.weights_state_dict(), b.weights_state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_no_weights_warns_naming_the_config_keys():
    with pytest.warns(RandomClipWeightsWarning) as record:
        clip = ClipBackbone(_tiny_cfg())
    message = str(record[0].message)
    assert "RANDOMLY INITIALISED" in message
    assert "model.clip.pretrained" in message and "model.clip.checkpoint" in message
    assert clip.weights_source == "random"


def test_random_init_is_reproducible_from_the_seed(tiny_clip):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        again = ClipBackbone(_tiny_cfg())
        other = ClipBackbone(_tiny_cfg(init_seed=1))
    assert _same_weights(tiny_clip, again)
    assert not _same_weights(tiny_clip, other)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_loads_a_local_checkpoint_file(tmp_path, tiny_clip, suffix):
    path = tmp_path / f"clip{suffix}"
    state = {k: v.clone() for k, v in tiny_clip.weights_state_dict().items()}
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomClipWeightsWarning)  # must not warn
        loaded = ClipBackbone(_tiny_cfg(checkpoint=str(path), init_seed=7))
    assert loaded.weights_source == str(path)
    assert _same_weights(tiny_clip, loaded)


def test_loads_from_an_hf_cache_directory(tmp_path, tiny_clip):
    """'hf-hub:org/repo' resolved offline from a pre-seeded HF cache (model.clip.cache_dir)."""
    repo = tmp_path / "models--clipsr-test--tiny-clip"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = {"model_cfg": json.loads(TINY_JSON.read_text()), "preprocess_cfg": {}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file(dict(tiny_clip.weights_state_dict()), str(snapshot / "open_clip_model.safetensors"))
    cfg = _tiny_cfg(arch="hf-hub:clipsr-test/tiny-clip", cache_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomClipWeightsWarning)
        loaded = ClipBackbone(cfg)
    assert _same_weights(tiny_clip, loaded)


def test_unreachable_pretrained_tag_fails_clearly(tmp_path):
    cfg = ClipConfig(arch="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    with pytest.raises(ClipWeightsError) as err:
        ClipBackbone(cfg)
    assert "model.clip.pretrained" in str(err.value) and "openai" in str(err.value)
    assert "cache_dir" in str(err.value)


def test_missing_checkpoint_file_and_unknown_arch_fail_clearly(tmp_path):
    with pytest.raises(ClipWeightsError, match="model.clip.checkpoint: file not found"):
        ClipBackbone(_tiny_cfg(checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ClipWeightsError, match="model.clip.arch: unknown open_clip architecture"):
        ClipBackbone(_tiny_cfg(arch="ViT-Nope"))
    with pytest.raises(ClipWeightsError, match="model.clip.image_taps"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        ClipBackbone(_tiny_cfg(image_taps=[1, 9]))


def test_quick_gelu_follows_openai_weights(tmp_path):
    from open_clip.transformer import QuickGELU

    def acts(clip):
        return {type(m) for m in clip.visual.modules() if "GELU" in type(m).__name__}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        assert QuickGELU not in acts(ClipBackbone(_tiny_cfg()))
        assert QuickGELU in acts(ClipBackbone(_tiny_cfg(quick_gelu=True)))


def test_preprocess_maps_minus_one_one_to_clip_normalisation(tiny_clip):
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    out = tiny_clip.preprocess(x)
    expected = (torch.tensor([0.0, 0.5, 1.0]) - tiny_clip.mean.flatten()) / tiny_clip.std.flatten()
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-6)
    compat = ClipBackbone.__new__(ClipBackbone)
    compat.__dict__.update(tiny_clip.__dict__)
    compat.cfg = replace(tiny_clip.cfg, compat_double_shift=True)
    shifted = (torch.tensor([0.5, 0.75, 1.0]) - tiny_clip.mean.flatten()) / tiny_clip.std.flatten()
    assert torch.allclose(compat.preprocess(x)[0, :, 0, 0], shifted, atol=1e-6)


def test_text_and_image_features(tiny_clip):
    text = tiny_clip.encode_text(["a red bird", "a blue car", "a red bird"])
    assert text.shape == (3, tiny_clip.embed_dim)
    assert torch.equal(text[0], text[2]) and not torch.equal(text[0], text[1])
    # the sentence embedding is the projected EOT token, not normalised
    assert not torch.allclose(text.norm(dim=-1), torch.ones(3))
    images = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    maps, emb = tiny_clip.image_features(images)
    assert maps.shape == (2, 3, tiny_clip.width, 8, 8)
    assert emb.shape == (2, tiny_clip.embed_dim)
    (maps.square().mean() + emb.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_clip.parameters())
    assert torch.allclose(emb, tiny_clip.image_embedding(images), atol=1e-5)


def test_image_taps_stop_after_the_last_tapped_block(tiny_clip):
    clip = ClipBackbone.__new__(ClipBackbone)  # the tiny ViT (4 blocks) tapped after 0 and 1
    clip.__dict__.update(tiny_clip.__dict__)
    clip.cfg = replace(tiny_clip.cfg, image_taps=[0, 1])
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    ran = []
    hooks = [
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
        for i, block in enumerate(clip.visual.transformer.resblocks)
    ]
    try:
        with torch.no_grad():
            taps = clip.image_taps(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == [0, 1]
    assert torch.equal(taps, clip.image_features(images)[0])


def test_trunk_without_prompts_equals_the_vit(tiny_clip):
    """run_trunk on the patch embedding grid with no prompts reproduces the ViT's last block."""
    x = tiny_clip.preprocess(torch.rand(2, 3, 64, 64) * 2 - 1)
    grid = tiny_clip.visual.conv1(x)
    ours = tiny_clip.run_trunk(grid, torch.zeros(2, 0, tiny_clip.width), [])
    ref = tiny_clip.visual.forward_intermediates(x, indices=[tiny_clip.num_layers - 1])
    assert torch.allclose(ours, ref["image_intermediates"][0], atol=1e-5)
    prompts = torch.randn(2, 2, tiny_clip.width)
    with_prompts = tiny_clip.run_trunk(grid, prompts, [1, 2])
    assert with_prompts.shape == ours.shape and not torch.allclose(with_prompts, ours)


def test_weights_from_a_checkpoint_keep_the_quick_gelu_of_their_source(tiny_clip):
    """A config naming OpenAI weights (QuickGELU) rebuilt from saved weights stays QuickGELU."""
    from dataclasses import replace

    from open_clip.transformer import QuickGELU

    from clipsr.clip_backbone import ClipBackbone

    cfg = replace(tiny_clip.cfg, pretrained="openai")
    clip = ClipBackbone(cfg, state_dict=tiny_clip.weights_state_dict())
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(tiny_clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_a_checkpoint_says_whether_its_clip_is_random(tmp_path, tiny_clip, caplog):
    """A model trained on a random CLIP carries it and is warned about as such (not as "no
    weights are configured"); one whose CLIP weights came from a file is not warned about;
    open_clip's own "initialized randomly" notice, wrong for both, is not logged."""
    from clipsr.inference import SuperResolver, save_generator_checkpoint
    from clipsr.training import build_generator

    cfg = tiny_config(4)
    generator = build_generator(cfg, tiny_clip)
    save_generator_checkpoint(tmp_path / "random", cfg, generator, tiny_clip)
    with pytest.warns(RandomClipWeightsWarning, match="saved in its checkpoint") as record:
        resolver = SuperResolver.from_checkpoint(tmp_path / "random", "cpu")
    assert not any("no weights are configured" in str(w.message) for w in record)
    assert resolver.clip.weights_description.startswith("random (no pretrained weights")
    assert "No pretrained weights loaded" not in caplog.text

    weights = tmp_path / "clip.safetensors"
    save_file({k: v.clone() for k, v in tiny_clip.weights_state_dict().items()}, str(weights))
    real = replace(cfg, model=replace(cfg.model, clip=_tiny_cfg(checkpoint=str(weights))))
    save_generator_checkpoint(tmp_path / "real", real, generator, ClipBackbone(real.model.clip))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomClipWeightsWarning)  # must not warn
        loaded = SuperResolver.from_checkpoint(tmp_path / "real", "cpu")
    assert loaded.clip.weights_description == f"{weights} (clipsr-tiny)"
