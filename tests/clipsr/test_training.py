import math

import pytest
import torch

from clipsr.training import (
    LOSS_NAMES,
    build_models,
    build_optimizers,
    count_parameters,
    train_step,
)
from tests.conftest import tiny_config


def _batch(clip, scale=4, n=3):
    gen = torch.Generator().manual_seed(5)
    hr = torch.rand(n, 3, 128, 128, generator=gen) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / scale, mode="area")
    text = clip.encode_text(["a red square", "a blue circle", "a green cat"][:n])
    return lr, hr, text


def _full_losses_cfg(*extra):
    # every loss term on: random VGG16 perceptual net chosen explicitly
    return tiny_config(4, "loss.perceptual=vgg16", "loss.vgg16_weights=random", *extra)


def test_step_returns_finite_losses_and_updates_both_nets(tiny_clip):
    cfg = _full_losses_cfg()
    with pytest.warns(UserWarning, match="RANDOM VGG16"):
        models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    before_g = {k: v.clone() for k, v in models.generator.state_dict().items()}
    before_d = {k: v.clone() for k, v in models.discriminator.state_dict().items()}
    losses = train_step(models, opts, *_batch(tiny_clip), cfg.loss.weights)
    assert list(losses) == list(LOSS_NAMES)
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["g_perceptual"] > 0 and losses["d_gradient_penalty"] > 0
    assert any(not torch.equal(before_g[k], v) for k, v in models.generator.state_dict().items())
    assert any(
        not torch.equal(before_d[k], v) for k, v in models.discriminator.state_dict().items()
    )
    # CLIP and VGG stay frozen
    assert all(p.grad is None for p in tiny_clip.parameters())
    assert all(p.grad is None for p in models.perceptual.parameters())


def test_one_clip_pass_per_image_and_channels_last(tiny_clip, monkeypatch):
    """The fake's CLIP features are computed once (shared by the D and G steps), the real's tap
    maps once; G and the VGG16 train in channels_last, the EMA copy is contiguous."""
    from clipsr.training import EMA

    with pytest.warns(UserWarning):
        models = build_models(_full_losses_cfg(), clip=tiny_clip)
    calls = []
    for name in ("image_features", "image_taps"):
        method = getattr(tiny_clip, name)
        monkeypatch.setattr(
            tiny_clip, name, lambda x, _m=method, _n=name: calls.append(_n) or _m(x)
        )
    train_step(
        models,
        build_optimizers(models, tiny_config().optim),
        *_batch(tiny_clip),
        tiny_config().loss.weights,
    )
    assert sorted(calls) == ["image_features", "image_taps"]
    conv = models.generator.head.to_rgb.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert models.perceptual.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert EMA(models.generator, 0.9).model.head.to_rgb.weight.is_contiguous()


def test_paper_wiring_every_trainable_parameter_gets_a_gradient(tiny_clip):
    """The reference release trains a dead branch; in paper wiring nothing is dead.

    Zero-initialised pieces (identity affines, D's gamma/beta) pass no gradient to what sits
    behind them on the very first step, so the check is made on the second step's gradients.
    """
    cfg = _full_losses_cfg("model.generator.lr_residual=none")  # as the paper (base presets)
    with pytest.warns(UserWarning):
        models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    batch = _batch(tiny_clip)
    train_step(models, opts, *batch, cfg.loss.weights)
    train_step(models, opts, *batch, cfg.loss.weights)
    dead = [
        f"{prefix}.{name}"
        for prefix, module in (("G", models.generator), ("D", models.discriminator))
        for name, p in module.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().max() == 0)
    ]
    assert dead == []
    assert any(n.startswith("text_head.") for n, _ in models.discriminator.named_parameters())


def test_release_wiring_leaves_the_clip_branch_without_gradient(tiny_clip):
    cfg = tiny_config(4, "model.generator.wiring=release")
    models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    train_step(models, opts, *_batch(tiny_clip), cfg.loss.weights)
    assert all(p.grad is None for p in models.generator.clip_fusion.parameters())


def test_perceptual_loss_has_no_graph_through_the_real_branch(tiny_clip):
    with pytest.warns(UserWarning):
        models = build_models(_full_losses_cfg(), clip=tiny_clip)
    sr = torch.rand(1, 3, 64, 64, requires_grad=True)
    hr = torch.rand(1, 3, 64, 64, requires_grad=True)
    models.perceptual(sr, hr).backward()
    assert sr.grad is not None and hr.grad is None


def test_parameter_counts(tiny_clip):
    models = build_models(tiny_config(4), clip=tiny_clip)
    total, trainable = count_parameters(models.generator)
    assert total == trainable > 0
    clip_total, clip_trainable = count_parameters(models.clip)
    assert clip_trainable == 0 and clip_total > 0


def test_a_non_finite_loss_raises_before_the_generator_update(tiny_clip):
    from clipsr.training import NonFiniteLossError

    cfg = tiny_config(4, "loss.weights.gradient_penalty=.nan")
    models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    before = {k: v.clone() for k, v in models.generator.state_dict().items()}
    checks = []
    with pytest.raises(NonFiniteLossError, match="discriminator loss is nan"):
        train_step(
            models,
            opts,
            *_batch(tiny_clip),
            cfg.loss.weights,
            all_finite=lambda t: checks.append(t.tolist()) or bool(torch.isfinite(t).all()),
        )
    assert len(checks) == 1 and len(checks[0]) == 2  # one check per step, of both losses
    assert all(torch.equal(before[k], v) for k, v in models.generator.state_dict().items())
