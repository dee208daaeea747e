"""run.init_from: a run starts from a checkpoint's weights (not its training state)."""

import pytest
import torch

from clipsr.checkpoint import CheckpointError
from clipsr.inference import save_generator_checkpoint
from clipsr.initial_weights import check_init_checkpoint, initial_clip, load_initial_weights
from clipsr.train_state import save_training_checkpoint
from clipsr.training import EMA, Precision, build_models, build_optimizers, train_step
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    """A tiny training checkpoint after two steps (live G != EMA G, D moved): its directory,
    config, models and EMA."""
    tmp_path = tmp_path_factory.mktemp("init")
    cfg = tiny_config(4)
    models = build_models(cfg, clip=tiny_clip)
    opts, ema = build_optimizers(models, cfg.optim), EMA(models.generator, 0.5)
    for step in range(2):
        hr = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(step)) * 2 - 1
        lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
        train_step(models, opts, lr, hr, tiny_clip.encode_text(["a", "b"]), cfg.loss.weights)
        ema.update(models.generator)
    save_training_checkpoint(tmp_path / "ck", cfg, models, opts, ema, Precision(), step=2)
    return tmp_path / "ck", cfg, models, ema


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_of_a_training_checkpoint_start_a_new_run(trained, tiny_clip):
    ck, cfg, trained, trained_ema = trained
    assert check_init_checkpoint(ck, cfg) == [
        "generator",
        "generator_live",
        "discriminator",
        "clip",
    ]
    clip = initial_clip(cfg, ck)
    assert _equal(clip.weights_state_dict(), tiny_clip.weights_state_dict())
    fresh = build_models(cfg, clip=clip)
    ema = EMA(fresh.generator, 0.5)
    assert not _equal(fresh.generator.state_dict(), trained.generator.state_dict())
    loaded = load_initial_weights(ck, fresh, ema)
    assert loaded == ["generator_live", "generator (EMA)", "discriminator"]
    assert _equal(fresh.generator.state_dict(), trained.generator.state_dict())
    assert _equal(ema.model.state_dict(), trained_ema.model.state_dict())
    assert _equal(fresh.discriminator.state_dict(), trained.discriminator.state_dict())


def test_an_inference_checkpoint_gives_g_and_ema_and_leaves_d(trained, tiny_clip, tmp_path):
    _, cfg, trained, _ = trained
    save_generator_checkpoint(tmp_path / "inf", cfg, trained.generator, tiny_clip)
    fresh = build_models(cfg, clip=tiny_clip)
    disc = {k: v.clone() for k, v in fresh.discriminator.state_dict().items()}
    ema = EMA(fresh.generator, 0.5)
    assert load_initial_weights(tmp_path / "inf", fresh, ema) == ["generator (also EMA)"]
    assert _equal(fresh.generator.state_dict(), trained.generator.state_dict())
    assert _equal(ema.model.state_dict(), trained.generator.state_dict())
    assert _equal(fresh.discriminator.state_dict(), disc)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.generator.encoder_channels=[16,32,32,64]", "generator weights in"),
        ("model.discriminator.head_channels=8", "discriminator weights in"),
        ("model.clip.quick_gelu=true", "QuickGELU"),
    ],
)
def test_a_checkpoint_of_another_model_is_refused(trained, override, needle):
    with pytest.raises(CheckpointError, match=needle):
        check_init_checkpoint(trained[0], tiny_config(4, override))
