import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipsr.clip_backbone import ClipBackbone, RandomClipWeightsWarning
from clipsr.discriminator import (
    discriminator_hinge_loss,
    generator_adversarial_loss,
    matching_aware_gradient_penalty,
)
from clipsr.training import build_discriminator, discriminator_loss
from tests.conftest import tiny_config


def test_logits_shape_and_shared_pass_with_mismatched_captions(tiny_clip):
    disc = build_discriminator(tiny_config(), tiny_clip)
    maps, _ = tiny_clip.image_features(torch.rand(3, 3, 128, 128) * 2 - 1)
    text = tiny_clip.encode_text(["a", "b", "c"])
    logits = disc(maps, text)
    both, mis = disc(maps, text, text.roll(1, 0))
    assert logits.shape == mis.shape == (3,)
    assert torch.allclose(logits, both)


def test_blocks_mix_clip_maps_from_zero(tiny_clip):
    disc = build_discriminator(tiny_config(), tiny_clip)
    assert len(disc.blocks) == len(tiny_config().model.clip.image_taps) - 1
    for block in disc.blocks:
        assert block.gamma.item() == 0 and block.beta.item() == 0
    assert disc.final_block.beta is None and disc.final_block.gamma.item() == 0


def test_hinge_losses_known_values():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.0])
    mis = torch.tensor([1.0, -1.0])
    # relu(1-real) = [0, .5] -> .25; relu(1+fake) = [0, 1] -> .5; relu(1+mis) = [2, 0] -> 1
    assert discriminator_hinge_loss(real, fake, mis).item() == pytest.approx(0.25 + 0.5 * 1.5)
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0)


def test_ma_gp_known_value_for_a_linear_critic():
    """C = <w, maps> + <v, text> has gradient (w, v): MA-GP = 2 * (|w|^2 + |v|^2)^3."""
    maps = torch.randn(4, 2, 3, 2, 2, requires_grad=True)
    text = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(2, 3, 2, 2, requires_grad=True)
    v = torch.randn(5, requires_grad=True)
    logits = (maps * w).flatten(1).sum(1) + text @ v
    gp = matching_aware_gradient_penalty(logits, maps, text, weight=2.0, power=6.0)
    expected = 2.0 * (w.square().sum() + v.square().sum()) ** 3
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)
    gp.backward()  # out of place: differentiable again (create_graph)
    norm2 = (w.square().sum() + v.square().sum()).detach()
    torch.testing.assert_close(w.grad, 12 * norm2**2 * w.detach(), rtol=1e-4, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _d_setup():
    """The same tiny CLIP, D (gammas moved off zero) and global batch on every process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        clip = ClipBackbone(tiny_config().model.clip)
    cfg = tiny_config()
    disc = build_discriminator(cfg, clip)
    with torch.no_grad():
        for block in [*disc.blocks, disc.final_block]:
            block.gamma.fill_(0.5)
            if block.beta is not None:
                block.beta.fill_(0.3)
    gen = torch.Generator().manual_seed(123)
    hr = torch.rand(4, 3, 128, 128, generator=gen) * 2 - 1
    fake = torch.rand(4, 3, 128, 128, generator=gen) * 2 - 1
    text = torch.randn(4, clip.embed_dim, generator=gen)
    return cfg, clip, disc, hr, fake, text


def _maps(clip, hr, fake, part):
    with torch.no_grad():
        return clip.image_taps(hr[part]), clip.image_taps(fake[part])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg, clip, disc, hr, fake, text = _d_setup()
        ddp = torch.nn.parallel.DistributedDataParallel(disc)
        part = slice(2 * rank, 2 * rank + 2)
        loss, _ = discriminator_loss(
            ddp, *_maps(clip, hr, fake, part), text[part], cfg.loss.weights
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in disc.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ma_gp_under_two_process_gloo_ddp(tmp_path):
    """D loss with MA-GP runs under DDP; the averaged gradients equal a single process's."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    cfg, clip, disc, hr, fake, text = _d_setup()
    total = 0
    for r in range(2):
        part = slice(2 * r, 2 * r + 2)
        loss, parts = discriminator_loss(
            disc, *_maps(clip, hr, fake, part), text[part], cfg.loss.weights
        )
        assert parts["d_gradient_penalty"].item() > 0
        total = total + loss / 2
    total.backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], p.grad, rtol=1e-4, atol=1e-6)
