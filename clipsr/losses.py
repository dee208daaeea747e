"""Generator losses: L1 reconstruction, VGG16 perceptual, adversarial, CLIP text-image cosine.

L_G = w_rec * L1(SR, HR) + w_per * MSE(VGG(SR), VGG(HR)) + w_adv * (-C(D(SR), s))
      - w_clip * cos(CLIP(SR), s)

with the spec's weights 1 / 1 / 0.01 / 0.04 by default (``loss.weights``). The VGG16 is built
once, frozen, from a configured weights file, and the HR branch runs without a graph.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipsr.config import LossConfig
from clipsr.vgg import vgg16_features

log = logging.getLogger(__name__)


class VGGPerceptualLoss(nn.Module):
    """MSE between VGG16 features through pool5 (``features[:31]``) of SR and HR.

    Inputs are the [-1, 1] images as they are (the reference feeds them without ImageNet
    normalisation; kept so that loss magnitudes match the spec's weights).
    """

    def __init__(self, weights: str):
        super().__init__()
        if weights == "random":
            msg = "loss.vgg16_weights=random: the perceptual loss uses a RANDOM VGG16"
            warnings.warn(msg, UserWarning, stacklevel=2)
            log.warning(msg)
        features = vgg16_features(None if weights == "random" else weights, "loss.vgg16_weights")
        self.features = features[:31].eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(hr)
        return F.mse_loss(self.features(sr), target)


def check_perceptual_config(cfg: LossConfig) -> bool:
    """Whether a perceptual net is configured; raises naming ``loss.vgg16_weights`` when its
    weights are not set or the file is missing (so jobs can fail before any work)."""
    if cfg.perceptual == "none" or cfg.weights.perceptual == 0:
        return False
    if not cfg.vgg16_weights:
        raise ValueError(
            "loss.vgg16_weights: loss.perceptual is vgg16 but no weights file is set; point it "
            "at a torchvision VGG16 state dict (.pth/.safetensors) or set loss.perceptual=none"
        )
    if cfg.vgg16_weights != "random" and not Path(cfg.vgg16_weights).expanduser().is_file():
        raise FileNotFoundError(f"loss.vgg16_weights: file not found: {cfg.vgg16_weights}")
    return True


def build_perceptual_loss(cfg: LossConfig) -> VGGPerceptualLoss | None:
    """The configured perceptual loss, or None (``loss.perceptual=none`` or weight 0)."""
    return VGGPerceptualLoss(cfg.vgg16_weights) if check_perceptual_config(cfg) else None


def clip_text_similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between CLIP image and sentence embeddings."""
    return F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1).mean()
