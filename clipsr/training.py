"""The CLIP-SR GAN training step: plain torch over (models, optimizers, batch), no Ray.

One step, as the reference (GALIP) loop orders it:

1. SR = G(LR, s) once, with its graph; the CLIP features of SR (tap maps and global embedding)
   once, with their graph (CLIP is frozen, so the D update below does not change them; the
   reference shares them between its two steps the same way); the tap maps of HR without a
   graph, stopping after the last tapped block.
2. D step: HR's maps (requiring grad, for MA-GP) and SR's maps detached go through D+C in one
   batched pass; matching-aware hinge (real, fake, mismatched caption: the batch's captions
   rolled by one, skipping repeats of the true caption; see ``mismatched_rows``) + MA-GP; Adam
   step.
3. G step on the same SR: L1 + perceptual + adversarial (SR's maps through the updated D, called
   without its DDP wrapper and with frozen parameters, so no D gradients are computed or
   synchronised) - CLIP text-image cosine; Adam step.

G and the perceptual VGG run in ``channels_last`` (faster convolutions on CPUs with oneDNN and
on GPUs; :func:`use_channels_last`). Distributed training wraps ``generator`` and
``discriminator`` in DDP separately; this function works with either plain or wrapped modules.
"""

from __future__ import annotations

from collections.abc import Callable
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
    mismatch_hinge,
    mismatched_rows,
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
    """CLIP (from ``model.clip``), G and D+C (initialised from ``seed``), the perceptual net;
    G and the perceptual net in ``channels_last`` (:func:`use_channels_last`)."""
    clip = clip if clip is not None else ClipBackbone(cfg.model.clip)
    models = CLIPSRModels(
        clip=clip,
        generator=build_generator(cfg, clip),
        discriminator=build_discriminator(cfg, clip),
        perceptual=build_perceptual_loss(cfg.loss),
    )
    return use_channels_last(models)


def use_channels_last(models: CLIPSRModels) -> CLIPSRModels:
    """G and the VGG16 in ``channels_last`` (in place): oneDNN (CPU) and cuDNN (GPU) convolve
    NHWC without reordering every activation; on a 2-core CPU it took the VGG's forward and
    backward to about 0.8x. D+C stays NCHW: it convolves 7x7 CLIP maps, where NHWC was slower
    (about 1.3x), and CLIP's only convolution is its patch embedding. Values do not change
    beyond float rounding; checkpoints are written contiguous."""
    for module in (models.generator, models.perceptual):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    return models


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
    disc: nn.Module,
    real_maps: torch.Tensor,
    fake_maps: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Matching-aware hinge + MA-GP; real, fake and mismatched caption in one batched D pass.

    ``real_maps``/``fake_maps`` are the CLIP tap maps (B, T, width, g, g) of HR and SR; neither
    may carry a graph into CLIP or G (pass SR's detached).

    The mismatched caption of a sample is another sample's caption that differs from its own
    (:func:`~clipsr.discriminator.mismatched_rows`); a sample with none (a per-rank batch of one,
    or a batch of identical captions) is left out of the mismatch term, which is 0 when no
    sample has one. The reference's ``roll(1)`` would pair such a sample with its true caption
    and train D to reject a matching pair."""
    batch = real_maps.shape[0]
    real_maps = real_maps.detach().float().requires_grad_(True)
    fake_maps = fake_maps.detach().float()
    text_d = text.detach().clone().requires_grad_(True)
    mis_index, mis_valid = mismatched_rows(text)
    mismatched = text.detach()[mis_index]
    logits, logits_mis = disc(
        torch.cat([real_maps, fake_maps]),
        torch.cat([text_d, text.detach()]),
        torch.cat([mismatched, mismatched]),
    )
    real, fake_logits, mis = logits[:batch], logits[batch:], logits_mis[:batch]
    penalty = matching_aware_gradient_penalty(
        real, real_maps, text_d, weights.gradient_penalty, weights.gradient_penalty_power
    )
    loss = discriminator_hinge_loss(real, fake_logits, mis, mis_valid) + penalty
    parts = {
        "d_loss": loss,
        "d_real": torch.relu(1 - real).mean(),
        "d_fake": torch.relu(1 + fake_logits).mean(),
        "d_mismatch": mismatch_hinge(mis, mis_valid),
        "d_gradient_penalty": penalty,
    }
    return loss, parts


def generator_loss(
    models: CLIPSRModels,
    hr: torch.Tensor,
    fake: torch.Tensor,
    fake_features: tuple[torch.Tensor, torch.Tensor],
    text: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 + perceptual + adversarial - CLIP cosine, through D called without its DDP wrapper
    and with frozen parameters (no D gradients are computed or synchronised).

    ``fake_features`` = ``models.clip.image_features(fake)`` with its graph to ``fake``. Under an
    autocast context CLIP runs in low precision, but D+C runs in fp32 (autocast off, inputs cast
    up), as in the D step: G is scored by D at the precision D was trained in, at little cost
    (D reads the 7x7 CLIP maps; CLIP, not D, is the expensive part)."""
    fake_maps, fake_emb = fake_features
    plain_disc = _unwrap(models.discriminator)
    plain_disc.requires_grad_(False)
    try:
        with torch.autocast(fake.device.type, enabled=False):
            adversarial = generator_adversarial_loss(plain_disc(fake_maps.float(), text.float()))
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


@dataclass
class Precision:
    """Mixed precision for a step: autocast dtype (None = fp32) and the two GradScalers (fp16).

    G, CLIP's image passes (of SR and of HR alike, so that D compares maps of one precision) and
    the perceptual net run under autocast; D+C and MA-GP stay in fp32 (a gradient penalty in
    fp16 underflows): the D step runs outside autocast, and in the G step
    :func:`generator_loss` switches autocast off around D+C.
    """

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    generator_scaler: torch.amp.GradScaler | None = None
    discriminator_scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        fp16 = dtype is torch.float16
        scaler = (lambda: torch.amp.GradScaler(device.type, growth_interval=2000)) if fp16 else None
        return cls(device.type, dtype, scaler() if scaler else None, scaler() if scaler else None)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite."""


def _backward_step(loss, optimizer, scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def train_step(
    models: CLIPSRModels,
    optimizers: CLIPSROptimizers,
    lr: torch.Tensor,
    hr: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
    precision: Precision | None = None,
    all_finite: Callable[[torch.Tensor], bool] | None = None,
) -> dict[str, float]:
    """One D update and one G update on a batch; returns the loss terms as floats.

    ``lr``/``hr`` are [-1, 1] images, ``text`` the CLIP sentence embeddings (B, D). Raises
    :class:`NonFiniteLossError` when the D or the G loss is NaN or infinite, before G's update
    (D's update of that step has then been made, possibly from the non-finite loss; the caller
    stops and never keeps that step's weights). One check per step: ``all_finite`` gets both
    losses (distributed: one small collective over all ranks, so that every rank stops at the
    same step instead of one waiting in an all-reduce).
    """
    all_finite = all_finite or (lambda t: bool(torch.isfinite(t).all()))
    precision = precision or Precision()
    text = text.detach()
    with precision.autocast():
        fake = models.generator(lr, text, models.clip).float()
        fake_features = models.clip.image_features(fake)
        with torch.no_grad():
            real_maps = models.clip.image_taps(hr)

    d_loss, d_parts = discriminator_loss(
        models.discriminator, real_maps, fake_features[0], text, weights
    )
    _backward_step(d_loss, optimizers.discriminator, precision.discriminator_scaler)

    with precision.autocast():
        g_loss, g_parts = generator_loss(models, hr, fake, fake_features, text, weights)
    losses = torch.stack([d_loss.detach().float(), g_loss.detach().float()])
    if not all_finite(losses):
        d_value, g_value = losses.tolist()
        raise NonFiniteLossError(f"discriminator loss is {d_value}, generator loss is {g_value}")
    _backward_step(g_loss, optimizers.generator, precision.generator_scaler)

    parts = {**d_parts, **g_parts}
    values = torch.stack([parts[name].detach().float() for name in LOSS_NAMES]).cpu().tolist()
    return dict(zip(LOSS_NAMES, values))


class EMA:
    """Exponential moving average of the generator's weights (used for validation and export).

    With ``warmup`` the decay of update ``t`` (0-based) is ``min(decay, (1 + t) / (10 + t))``:
    the average follows the young weights closely and reaches ``decay`` later (without it, a
    0.999 average still holds 37% of the initial weights after 1,000 updates).
    """

    def __init__(self, generator: nn.Module, decay: float, warmup: bool = False):
        import copy

        self.decay, self.warmup = decay, warmup
        # contiguous (NCHW) like a generator loaded for inference, so that validation and export
        # compute exactly what the exported checkpoint computes
        model = copy.deepcopy(_unwrap(generator)).eval().requires_grad_(False)
        self.model = model.to(memory_format=torch.contiguous_format)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int = 0) -> None:
        """Blend in the live weights; ``step`` = the number of earlier updates (the warm-up)."""
        source = _unwrap(generator)
        decay = self.decay_at(step)
        for ema, live in zip(self.model.parameters(), source.parameters()):
            ema.lerp_(live.detach(), 1.0 - decay)
        for ema, live in zip(self.model.buffers(), source.buffers()):
            ema.copy_(live)


def drop_captions(captions: list[str], prob: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by "" with probability ``prob`` (caption dropout: the model also
    learns to upscale without text, and to tell what the text adds)."""
    if prob <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=generator) >= prob
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
