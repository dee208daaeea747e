"""The CLIP-SR GAN training step: plain torch over (models, optimizers, batch), no Ray.

One step, as the reference (GALIP) loop orders it:

1. SR = G(LR, s) once, with its graph.
2. D step: CLIP maps of HR (requiring grad, for MA-GP) and of SR.detach() go through D+C in one
   batched pass; matching-aware hinge (real, fake, caption rolled by one) + MA-GP; Adam step.
3. G step on the same SR: L1 + perceptual + adversarial (through the updated D, called without
   its DDP wrapper and with frozen parameters, so no D gradients are computed or synchronised)
   - CLIP text-image cosine; Adam step.

Distributed training wraps ``generator`` and ``discriminator`` in DDP separately; this function
works with either plain or wrapped modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipsr.clip_backbone import ClipBackbone
from clipsr.config import CLIPSRConfig, LossWeights, OptimConfig
from clipsr.discriminator import (
    CLIPDiscriminator,
    discriminator_hinge_loss,
    generator_adversarial_loss,
    matching_aware_gradient_penalty,
)
from clipsr.generator import CLIPSRGenerator
from clipsr.losses import VGGPerceptualLoss, build_perceptual_loss, clip_text_similarity

LOSS_NAMES = (
    "d_loss",
    "d_real",
    "d_fake",
    "d_mismatch",
    "d_gradient_penalty",
    "g_loss",
    "g_reconstruction",
    "g_perceptual",
    "g_adversarial",
    "g_clip_similarity",
)


@dataclass
class CLIPSRModels:
    clip: ClipBackbone
    generator: nn.Module
    discriminator: nn.Module
    perceptual: VGGPerceptualLoss | None = None

    def to(self, device: torch.device | str) -> CLIPSRModels:
        for m in (self.clip, self.generator, self.discriminator, self.perceptual):
            if m is not None:
                m.to(device)
        return self


@dataclass
class CLIPSROptimizers:
    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer


def build_generator(cfg: CLIPSRConfig, clip: ClipBackbone) -> CLIPSRGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CLIPSRGenerator(cfg.model, clip.embed_dim, clip.width, clip.grid_size)


def build_discriminator(cfg: CLIPSRConfig, clip: ClipBackbone) -> CLIPDiscriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return CLIPDiscriminator(cfg.model, clip.width, clip.embed_dim, clip.grid_size)


def build_models(cfg: CLIPSRConfig, clip: ClipBackbone | None = None) -> CLIPSRModels:
    """CLIP (from ``model.clip``), G and D+C (initialised from ``seed``), the perceptual net."""
    clip = clip if clip is not None else ClipBackbone(cfg.model.clip)
    return CLIPSRModels(
        clip=clip,
        generator=build_generator(cfg, clip),
        discriminator=build_discriminator(cfg, clip),
        perceptual=build_perceptual_loss(cfg.loss),
    )


def build_optimizers(models: CLIPSRModels, cfg: OptimConfig) -> CLIPSROptimizers:
    """Adam for G and for D+C with the spec's settings (lr 1e-4 / 4e-4, betas (0, 0.9))."""
    return CLIPSROptimizers(
        generator=torch.optim.Adam(
            models.generator.parameters(), lr=cfg.generator_lr, betas=cfg.betas
        ),
        discriminator=torch.optim.Adam(
            models.discriminator.parameters(), lr=cfg.discriminator_lr, betas=cfg.betas
        ),
    )


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def discriminator_loss(
    clip: ClipBackbone,
    disc: nn.Module,
    hr: torch.Tensor,
    fake: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Matching-aware hinge + MA-GP; real, fake and mismatched caption in one batched D pass."""
    batch = hr.shape[0]
    with torch.no_grad():
        real_maps, _ = clip.image_features(hr)
        fake_maps, _ = clip.image_features(fake.detach())
    real_maps.requires_grad_(True)
    text_d = text.detach().clone().requires_grad_(True)
    mismatched = text.detach().roll(1, dims=0)
    logits, logits_mis = disc(
        torch.cat([real_maps, fake_maps]),
        torch.cat([text_d, text.detach()]),
        torch.cat([mismatched, mismatched]),
    )
    real, fake_logits, mis = logits[:batch], logits[batch:], logits_mis[:batch]
    penalty = matching_aware_gradient_penalty(
        real, real_maps, text_d, weights.gradient_penalty, weights.gradient_penalty_power
    )
    loss = discriminator_hinge_loss(real, fake_logits, mis) + penalty
    parts = {
        "d_loss": loss,
        "d_real": torch.relu(1 - real).mean(),
        "d_fake": torch.relu(1 + fake_logits).mean(),
        "d_mismatch": torch.relu(1 + mis).mean(),
        "d_gradient_penalty": penalty,
    }
    return loss, parts


def generator_loss(
    models: CLIPSRModels,
    hr: torch.Tensor,
    fake: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 + perceptual + adversarial - CLIP cosine, through D called without its DDP wrapper
    and with frozen parameters (no D gradients are computed or synchronised)."""
    plain_disc = _unwrap(models.discriminator)
    plain_disc.requires_grad_(False)
    try:
        fake_maps, fake_emb = models.clip.image_features(fake)
        adversarial = generator_adversarial_loss(plain_disc(fake_maps, text))
    finally:
        plain_disc.requires_grad_(True)
    reconstruction = torch.nn.functional.l1_loss(fake, hr)
    perceptual = (
        models.perceptual(fake, hr) if models.perceptual is not None else fake.new_zeros(())
    )
    similarity = clip_text_similarity(fake_emb, text)
    loss = (
        weights.reconstruction * reconstruction
        + weights.perceptual * perceptual
        + weights.adversarial * adversarial
        - weights.clip_similarity * similarity
    )
    parts = {
        "g_loss": loss,
        "g_reconstruction": reconstruction,
        "g_perceptual": perceptual,
        "g_adversarial": adversarial,
        "g_clip_similarity": similarity,
    }
    return loss, parts


def train_step(
    models: CLIPSRModels,
    optimizers: CLIPSROptimizers,
    lr: torch.Tensor,
    hr: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
) -> dict[str, float]:
    """One D update and one G update on a batch; returns the loss terms as floats.

    ``lr``/``hr`` are [-1, 1] images, ``text`` the CLIP sentence embeddings (B, D).
    """
    text = text.detach()
    fake = models.generator(lr, text, models.clip)

    d_loss, d_parts = discriminator_loss(models.clip, models.discriminator, hr, fake, text, weights)
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers.discriminator.step()

    g_loss, g_parts = generator_loss(models, hr, fake, text, weights)
    optimizers.generator.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizers.generator.step()

    parts = {**d_parts, **g_parts}
    values = torch.stack([parts[name].detach().float() for name in LOSS_NAMES]).cpu().tolist()
    return dict(zip(LOSS_NAMES, values))


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
