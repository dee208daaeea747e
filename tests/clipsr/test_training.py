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


def test_ema_warmup_follows_young_weights_then_reaches_its_decay():
    from torch import nn

    from clipsr.training import EMA

    live = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        live.weight.zero_()
    plain, warm = EMA(live, 0.999), EMA(live, 0.999, warmup=True)
    with torch.no_grad():
        live.weight.fill_(1.0)
    for step in range(1000):
        plain.update(live, step)
        warm.update(live, step)
    # without warm-up 0.999**1000 = 37% of the initial weights remain; with it, about 1%
    assert abs(float(plain.model.weight[0, 0]) - (1 - 0.999**1000)) < 1e-4
    assert float(warm.model.weight[0, 0]) > 0.98
    assert warm.decay_at(0) == 0.1 and warm.decay_at(10**6) == 0.999


def test_caption_dropout_is_seeded_and_drops_about_its_share():
    from clipsr.training import drop_captions

    captions = [f"caption {i}" for i in range(2000)]
    a = drop_captions(captions, 0.25, torch.Generator().manual_seed(3))
    b = drop_captions(captions, 0.25, torch.Generator().manual_seed(3))
    assert a == b and 0.2 < a.count("") / len(a) < 0.3
    assert all(x in ("", c) for x, c in zip(a, captions))
    assert drop_captions(captions, 0.0, torch.Generator()) == captions


def _d_inputs(clip, captions):
    """(HR maps, SR maps, text): the CLIP tap maps discriminator_loss takes."""
    gen = torch.Generator().manual_seed(9)
    n = len(captions)
    hr = torch.rand(n, 3, 128, 128, generator=gen) * 2 - 1
    fake = torch.rand(n, 3, 128, 128, generator=gen) * 2 - 1
    with torch.no_grad():
        real_maps, _ = clip.image_features(hr)
        fake_maps, _ = clip.image_features(fake)
    return real_maps, fake_maps, clip.encode_text(captions)


def _discriminator(cfg, clip):
    from clipsr.training import build_discriminator

    disc = build_discriminator(cfg, clip)
    # its text head is randomly initialised: logits depend on the caption and are > -1, so
    # that every hinge term is active
    return disc


def test_a_batch_of_one_has_no_mismatch_term(tiny_clip):
    """Per-rank batch 1: the reference's roll(1) makes the "mismatched" caption the true one."""
    from clipsr.training import discriminator_loss

    cfg = tiny_config(4)
    disc = _discriminator(cfg, tiny_clip)
    real_maps, fake_maps, text = _d_inputs(tiny_clip, ["a red square"])
    loss, parts = discriminator_loss(disc, real_maps, fake_maps, text, cfg.loss.weights)
    assert parts["d_real"].item() > 0 and parts["d_fake"].item() > 0  # terms are active
    assert parts["d_mismatch"].item() == 0
    expected = parts["d_real"] + 0.5 * parts["d_fake"] + parts["d_gradient_penalty"]
    torch.testing.assert_close(loss, expected)


def test_repeated_captions_get_a_caption_that_differs(tiny_clip):
    from clipsr.training import discriminator_loss

    cfg = tiny_config(4)
    disc = _discriminator(cfg, tiny_clip)
    captions = ["a red square", "a red square", "a blue circle"]
    real_maps, fake_maps, text = _d_inputs(tiny_clip, captions)
    _, parts = discriminator_loss(disc, real_maps, fake_maps, text, cfg.loss.weights)
    assert parts["d_mismatch"].item() > 0
    # rolled by one, skipping repeats of the true caption: 0 <- 2, 1 <- 2 (not 0), 2 <- 1
    with torch.no_grad():
        _, mis = disc(real_maps, text, text[[2, 2, 1]])
    torch.testing.assert_close(parts["d_mismatch"], torch.relu(1 + mis).mean())


def test_mismatched_rows():
    from clipsr.discriminator import mismatched_rows

    a, b, c = torch.eye(3)
    index, valid = mismatched_rows(torch.stack([a, b, c]))
    assert index.tolist() == [2, 0, 1] and valid.all()  # distinct: roll(1), as the reference
    index, valid = mismatched_rows(torch.stack([a, a, b, a]))
    assert index.tolist() == [2, 2, 1, 2] and valid.all()
    index, valid = mismatched_rows(torch.stack([a, a]))
    assert index.tolist() == [0, 1] and not valid.any()
    index, valid = mismatched_rows(a[None])
    assert index.tolist() == [0] and not valid.any()


def test_discriminator_runs_in_fp32_in_both_steps_under_autocast(tiny_clip):
    """The Precision contract: G and CLIP under autocast (bf16 here, on the CPU), D+C in fp32."""
    from clipsr.training import Precision

    cfg = tiny_config(4)
    models = build_models(cfg, clip=tiny_clip)
    opts = build_optimizers(models, cfg.optim)
    seen = []
    hook = models.discriminator.text_head.register_forward_hook(
        lambda module, args, out: seen.append((args[0].dtype, out.dtype))
    )
    g_dtypes = []
    g_hook = models.generator.head.register_forward_hook(
        lambda module, args, out: g_dtypes.append(out.dtype)
    )
    try:
        precision = Precision.create("bf16", torch.device("cpu"))
        losses = train_step(models, opts, *_batch(tiny_clip), cfg.loss.weights, precision)
    finally:
        hook.remove()
        g_hook.remove()
    assert all(math.isfinite(v) for v in losses.values())
    assert g_dtypes == [torch.bfloat16]  # G ran under autocast
    assert len(seen) == 3  # D step: true and mismatched caption; G step: one call
    assert all(d == (torch.float32, torch.float32) for d in seen), seen


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
