"""Contrastive (re)training of an open_clip model on a captioned image set: a domain CLIP.

Pure torch and open_clip (the Ray Train wrapper is ``jobs/pretrain_clip.py``). A general CLIP
serves medical, satellite or product images poorly, and offline (no downloadable weights) a
random CLIP makes CLIP-SR's CLIP losses and CLIP discriminator reward nothing. Training the
CLIP on the corpus first gives both a meaning.

- The loss is open_clip's :class:`~open_clip.loss.ClipLoss` (symmetric InfoNCE, features
  gathered across ranks with gradients). A small caption vocabulary (a generated set has 72
  captions) needs nothing more: equal captions have equal text features, so the loss and its
  gradients equal those of soft targets spread over the equal captions (tested).
- :func:`degrade` optionally blurs part of each batch (and adds noise), so that the CLIP also
  recognises what a half-trained generator draws, not only sharp ground truth.
- :func:`zero_shot_accuracy` and :func:`retrieval_recall` are the model's own metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from clipsr.adherence import CaptionAttributes, ShapeAttributes


def contrastive_loss(rank: int = 0, world_size: int = 1) -> ClipLoss:
    """open_clip's loss in its recommended multi-process setting (each rank's rows against every
    rank's columns, gradients through the gathered features)."""
    return ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)


@dataclass(frozen=True)
class ClipInput:
    """How [-1, 1] images become the CLIP's input (as :class:`clipsr.clip_backbone.ClipBackbone`
    prepares them, so that the trained CLIP sees at SR time what it saw here)."""

    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "bilinear"

    @classmethod
    def of(cls, model: nn.Module, resize: str = "bilinear") -> ClipInput:
        import open_clip

        visual = model.visual
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        return cls(tuple(visual.image_size), tuple(mean), tuple(std), resize)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images + 1) * 0.5
        if tuple(x.shape[-2:]) != self.image_size:
            extra = {} if self.resize == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=self.image_size, mode=self.resize, **extra)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def degrade(
    images: torch.Tensor,
    generator: torch.Generator,
    prob: float = 0.5,
    sigma: tuple[float, float] = (0.5, 3.0),
    noise: float = 0.03,
) -> torch.Tensor:
    """Blur a random ``prob`` share of the batch (Gaussian, sigma drawn per image) and add a little
    noise to it; the rest is unchanged. Deterministic in ``generator``."""
    out = images.clone()
    chosen = torch.rand(images.shape[0], generator=generator) < prob
    sigmas = torch.empty(images.shape[0]).uniform_(*sigma, generator=generator)
    for i in torch.nonzero(chosen).flatten().tolist():
        k = _gaussian_kernel(float(sigmas[i]), images.device)
        x = images[i : i + 1]
        pad = len(k) // 2
        x = F.pad(x, (pad, pad, 0, 0), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        x = F.pad(x, (0, 0, pad, pad), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        jitter = torch.randn(x.shape, generator=generator).to(x.device) * noise
        out[i] = (x[0] + jitter).clamp(-1, 1)
    return out


def clip_loss_step(
    model: nn.Module,
    tokenizer,
    clip_input: ClipInput,
    loss_fn: ClipLoss,
    images: torch.Tensor,
    captions: Sequence[str],
) -> torch.Tensor:
    """The contrastive loss of one batch (backward and the optimizer step are the caller's).
    ``model`` may be DDP-wrapped: its forward (image, text) is what DDP synchronises."""
    tokens = tokenizer(list(captions)).to(images.device)
    out = model(clip_input(images), tokens)
    if isinstance(out, dict):
        image_features, text_features, scale = (
            out["image_features"],
            out["text_features"],
            out["logit_scale"],
        )
    else:
        image_features, text_features, scale = out[:3]
    return loss_fn(image_features, text_features, scale)


def clamp_logit_scale(model: nn.Module, max_scale: float = 100.0) -> None:
    """open_clip's training loop clamps the temperature to ln(100) after each step."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_scale))


@torch.no_grad()
def _text_features(model, tokenizer, captions: Sequence[str], device) -> torch.Tensor:
    return model.encode_text(tokenizer(list(captions)).to(device), normalize=True)


@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module,
    tokenizer,
    clip_input: ClipInput,
    attrs: ShapeAttributes,
    images: torch.Tensor,
    truth: Sequence[CaptionAttributes],
) -> dict[str, float]:
    """Each image against every caption the declared vocabulary can form; the best caption's
    shape / colour / background, compared with the truth: accuracy per attribute."""
    vocab = [
        CaptionAttributes(s, c, b)
        for s in attrs.shapes
        for c in attrs.colours
        for b in attrs.backgrounds
    ]
    text = _text_features(model, tokenizer, [attrs.caption(v) for v in vocab], images.device)
    image = model.encode_image(clip_input(images), normalize=True)
    best = (image @ text.T).argmax(dim=1).tolist()
    picks = [vocab[i] for i in best]
    n = len(truth)
    return {
        "shape": sum(p.shape == t.shape for p, t in zip(picks, truth)) / n,
        "colour": sum(p.colour == t.colour for p, t in zip(picks, truth)) / n,
        "background": sum(p.background == t.background for p, t in zip(picks, truth)) / n,
    }


@torch.no_grad()
def retrieval_recall(
    model: nn.Module,
    tokenizer,
    clip_input: ClipInput,
    images: torch.Tensor,
    captions: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Image -> text recall@k over the distinct captions (an image is right when its own caption
    is among the k best), and text -> image recall@k (one of the caption's images in the k best)."""
    distinct = sorted(set(captions))
    own = torch.tensor([distinct.index(c) for c in captions])
    text = _text_features(model, tokenizer, distinct, images.device)
    image = model.encode_image(clip_input(images), normalize=True)
    sims = (image @ text.T).cpu()  # images x distinct captions
    out = {}
    for k in ks:
        top = sims.topk(min(k, len(distinct)), dim=1).indices
        out[f"image_to_text_r{k}"] = float((top == own[:, None]).any(dim=1).float().mean())
        top_images = sims.T.topk(min(k, len(captions)), dim=1).indices  # captions x k
        hits = [(own[top_images[j]] == j).any() for j in range(len(distinct))]
        out[f"text_to_image_r{k}"] = float(torch.stack(hits).float().mean())
    return out
