"""Text-Image Fusion: the paper's TIFBlock and the residual block built from two of them.

``Affine`` is the channel-wise modulation AFF(F | F_T) = gamma(F_T) * F + beta(F_T), with gamma and
beta from two MLPs of the text feature, initialised to the identity (gamma = 1, beta = 0) as in
DF-GAN/GALIP and the CLIP-SR reference. The activations are LeakyReLU(0.2) as in the reference
code (the paper's figure draws ReLU); the figure's softmax over F_T is optional.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Affine(nn.Module):
    """gamma(c) * x + beta(c), channel-wise; identity at initialisation."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Sequential(
            nn.Linear(cond_dim, channels), nn.ReLU(), nn.Linear(channels, channels)
        )
        self.beta = nn.Sequential(
            nn.Linear(cond_dim, channels), nn.ReLU(), nn.Linear(channels, channels)
        )
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight)
        nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.gamma(cond)[:, :, None, None] * x + self.beta(cond)[:, :, None, None]


class TextImageFusionBlock(nn.Module):
    """TIFBlock: Affine -> LReLU -> Affine -> LReLU -> Conv3x3, conditioned on the text feature."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, text_softmax: bool = False):
        super().__init__()
        self.text_softmax = text_softmax
        self.affine1 = Affine(cond_dim, in_ch)
        self.affine2 = Affine(cond_dim, in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cond = torch.softmax(text, dim=-1) if self.text_softmax else text
        h = F.leaky_relu(self.affine1(x, cond), 0.2)
        h = F.leaky_relu(self.affine2(h, cond), 0.2)
        return self.conv(h)


class FusionResBlock(nn.Module):
    """Shortcut + [TIFBlock(in -> mid) -> TIFBlock(mid -> out)], after an optional nearest resize.

    One refinement stage of the iterative refinement module (the reference's G_Block); with a
    narrow ``mid_ch`` it is the text-image fusion applied to F_I before the CLIP-ViT.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cond_dim: int,
        mid_ch: int | None = None,
        text_softmax: bool = False,
    ):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.fuse1 = TextImageFusionBlock(in_ch, mid_ch, cond_dim, text_softmax)
        self.fuse2 = TextImageFusionBlock(mid_ch, out_ch, cond_dim, text_softmax)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="nearest")
        return self.shortcut(x) + self.fuse2(self.fuse1(x, text), text)
