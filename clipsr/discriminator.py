"""GALIP's CLIP-based discriminator with its text-conditioned head, and its losses.

The discriminator reads the frozen CLIP's patch-token maps after ``model.clip.image_taps``
(stacked (B, T, width, g, g)); each block after the first mixes in the next CLIP map with a
learnable scalar that starts at zero. The text head tiles the sentence embedding over the map
and decides real/fake *for that caption* (matching-aware).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipsr.config import ModelConfig


class DiscriminatorBlock(nn.Module):
    """x' + gamma * res(x) [+ beta * clip_map]; gamma, beta learnable scalars, zero at init."""

    def __init__(self, in_ch: int, out_ch: int, mixes_clip_map: bool):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1)) if mixes_clip_map else None

    def forward(self, x: torch.Tensor, clip_map: torch.Tensor | None = None) -> torch.Tensor:
        out = self.shortcut(x) + self.gamma * self.residual(x)
        if self.beta is not None:
            out = out + self.beta * clip_map
        return out


class TextConditionedHead(nn.Module):
    """NetC: concat(D map, tiled sentence) -> conv4x4 -> LReLU -> conv4x4 -> mean -> logit."""

    def __init__(self, in_ch: int, text_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch + text_dim, hidden, 4, 1, 0, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 1, 4, 1, 0, bias=False),
        )

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        tiled = text[:, :, None, None].expand(-1, -1, *h.shape[-2:])
        return self.net(torch.cat([h, tiled], dim=1)).mean(dim=(1, 2, 3))


class CLIPDiscriminator(nn.Module):
    """D (blocks over CLIP maps) and the text head C in one module: one DDP wrapper for both."""

    def __init__(self, cfg: ModelConfig, vit_width: int, text_dim: int, grid_size: tuple[int, int]):
        super().__init__()
        if min(grid_size) < 7:
            raise ValueError(
                f"the text head's two 4x4 valid convolutions need a CLIP grid of at least 7x7, "
                f"got {grid_size}"
            )
        d = cfg.discriminator
        num_taps = len(cfg.clip.image_taps)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(vit_width, vit_width, True) for _ in range(num_taps - 1)
        )
        self.final_block = DiscriminatorBlock(vit_width, d.out_channels, False)
        self.text_head = TextConditionedHead(d.out_channels, text_dim, d.head_channels)

    def forward(
        self,
        clip_maps: torch.Tensor,
        text: torch.Tensor,
        mismatched_text: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) for (image, caption); with ``mismatched_text`` also (image, wrong caption),
        sharing one pass of the blocks."""
        h = clip_maps[:, 0]
        for k, block in enumerate(self.blocks):
            h = block(h, clip_maps[:, k + 1])
        h = self.final_block(h)
        logits = self.text_head(h, text)
        if mismatched_text is None:
            return logits
        return logits, self.text_head(h, mismatched_text)


def mismatched_rows(text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row ``i`` of the sentence embeddings (B, D), the row of a *different* caption.

    As the reference, row ``i - 1`` (the batch rolled by one); when that caption equals caption
    ``i`` (a repeated caption), the nearest earlier row (cyclically) whose caption differs, as
    the evaluation's caption ablation does. Returns ``(index (B,), valid (B,) bool)``; ``valid``
    is False where every caption of the batch equals caption ``i`` (a batch of one, or all
    captions equal): there is no mismatched caption for that row, and its index is ``i``.
    """
    n = text.shape[0]
    rows = torch.arange(n, device=text.device)
    if n < 2:
        return rows, torch.zeros(n, dtype=torch.bool, device=text.device)
    offsets = torch.arange(1, n, device=text.device)
    candidates = (rows[:, None] - offsets[None, :]) % n  # (B, B-1): i-1, i-2, ... cyclically
    flat = text.detach().flatten(1)
    differs = (flat[candidates] != flat[:, None]).any(dim=-1)  # (B, B-1)
    valid = differs.any(dim=1)
    first = differs.int().argmax(dim=1)  # the first differing candidate (0 when none)
    index = torch.where(valid, candidates.gather(1, first[:, None]).squeeze(1), rows)
    return index, valid


def mismatch_hinge(mismatched: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """mean(relu(1 + mismatched)) over the rows that have a mismatched caption (0 if none)."""
    term = F.relu(1 + mismatched)
    if valid is None:
        return term.mean()
    return (term * valid.to(term.dtype)).sum() / valid.sum().clamp(min=1)


def discriminator_hinge_loss(
    real: torch.Tensor,
    fake: torch.Tensor,
    mismatched: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matching-aware hinge: relu(1 - real) + (relu(1 + fake) + relu(1 + mismatched)) / 2.

    ``valid`` (from :func:`mismatched_rows`) leaves out of the mismatch term the rows that have
    no mismatched caption (their "mismatched" caption would be the true one)."""
    mis = mismatch_hinge(mismatched, valid)
    return F.relu(1 - real).mean() + 0.5 * (F.relu(1 + fake).mean() + mis)


def generator_adversarial_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def matching_aware_gradient_penalty(
    real_logits: torch.Tensor,
    clip_maps: torch.Tensor,
    text: torch.Tensor,
    weight: float = 2.0,
    power: float = 6.0,
) -> torch.Tensor:
    """MA-GP: weight * mean(||[dC/d clip_maps, dC/d text]||_2 ** power), per sample.

    Computed out of place with ``torch.autograd.grad(create_graph=True)`` (not a second
    ``backward``), so the penalty's own backward goes through DDP's single reducer pass.
    ``clip_maps`` and ``text`` must require grad and be inputs of ``real_logits``.
    """
    grad_maps, grad_text = torch.autograd.grad(
        outputs=real_logits.sum(),
        inputs=(clip_maps, text),
        create_graph=True,
    )
    grad = torch.cat([grad_maps.flatten(1), grad_text.flatten(1)], dim=1)
    # ||g||^p as (||g||^2)^(p/2): the same value, without sqrt's infinite slope at zero.
    return weight * grad.pow(2).sum(dim=1).pow(power / 2).mean()
