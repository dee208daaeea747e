"""The reference implementation's training step, rebuilt on our modules, for same-run baselines.

This is the computation of CLIP-SR's released loop (``Code/lib/modules.py:train`` with
``perceptual_loss`` from ``Code/lib/utils.py`` and ``CLIP_IMG_ENCODER`` from ``net.py``; see
clipsr-spec.md sections 2-3), written from the spec, with our G, D+C and CLIP modules (the same
layers, so the same arithmetic per layer). What makes it the reference's and not ours:

- ``real`` and the sentence embedding are leaves that require grad, so the real image's CLIP pass
  (all 12 blocks, taps 1/4/8 and the global embedding) builds a graph, and the D step's backward
  runs through CLIP down to the pixels;
- D is called separately on real, fake and (in the G step) fake again; C three times in the D step;
- the fake's CLIP pass (all blocks, with its graph) runs once and serves both steps, as in the
  reference (its D step detaches the maps);
- MA-GP through ``autograd.grad(retain_graph=True, create_graph=True)`` with the sqrt norm;
- the G step's backward also computes D+C's parameter gradients (not frozen there);
- perceptual loss: VGG16 ``features[:34]`` with trainable parameters on [-1, 1] images, so SR and
  HR both build graphs and the backward computes VGG weight gradients and HR pixel gradients;
  ``vgg="released"`` rebuilds the whole torchvision VGG16 (with its classifier) and reloads the
  weights file on every step, ``vgg="once"`` builds ``features`` once;
- the sentence embeddings are recomputed from the tokens every step (``prepare_data``).

Everything in fp32 (the reference's CPU path; on GPU it runs CLIP in fp16).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from clipsr.clip_backbone import ClipBackbone
from clipsr.training import CLIPSRModels, CLIPSROptimizers
from clipsr.vgg import vgg16_features

# Spec section 3: L_G = L1 + MSE(VGG) + a * (-C(D(f_SR), s) - sim_w * cos(e_SR, s))
ADVERSARIAL_A = 0.01
SIM_W = 4.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def reference_clip_image(clip: ClipBackbone, img: torch.Tensor, taps: list[int]):
    """CLIP_IMG_ENCODER: x*0.5+0.5, nearest resize, the double shift, every ViT block, the taps
    stacked (B, T, width, g, g) and ln_post(CLS) @ proj."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = F.interpolate(img * 0.5 + 0.5, size=clip.image_size)
    x = ((x + 1) * 0.5 - mean) / std
    v = clip.visual
    x = v._embeds(x)
    maps = []
    grid = clip.grid_size
    for i, block in enumerate(v.transformer.resblocks):
        x = block(x)
        if i in taps:
            maps.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid).contiguous())
    pooled, _ = v._pool(x)
    return torch.stack(maps, dim=1), pooled @ v.proj


def _d_features(disc: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """NetD: the blocks over the CLIP maps (our CLIPDiscriminator without its text head)."""
    h = maps[:, 0]
    for k, block in enumerate(disc.blocks):
        h = block(h, maps[:, k + 1])
    return disc.final_block(h)


def _magp(real_logits, real_maps, sent) -> torch.Tensor:
    """MA_GP_FP32: 2 * mean(||[dC/dmaps, dC/ds]||_2 ** 6), the norm through sqrt."""
    grads = torch.autograd.grad(
        outputs=real_logits,
        inputs=(real_maps, sent),
        grad_outputs=torch.ones_like(real_logits),
        retain_graph=True,
        create_graph=True,
    )
    grad = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
    return 2.0 * torch.mean(torch.sqrt(torch.sum(grad**2, dim=1)) ** 6)


class ReferencePerceptual:
    """``perceptual_loss``: VGG16 features[:34] (all 31 layers, through pool5), parameters
    trainable, MSE on the [-1, 1] images. ``released``: the whole VGG16 rebuilt and its weights
    reloaded from ``weights_file`` on every call, as the release does; else built once."""

    def __init__(self, weights_file: str, released: bool):
        self.weights_file, self.released = weights_file, released
        self.once = None if released else vgg16_features(weights_file)[:34]

    def _extractor(self) -> nn.Module:
        if self.once is not None:
            for p in self.once.parameters():  # a fresh module each step has no .grad
                p.grad = None
            return self.once
        vgg = torchvision.models.vgg16(weights=None)
        vgg.load_state_dict(torch.load(self.weights_file, map_location="cpu", weights_only=True))
        return nn.Sequential(*list(vgg.features.children())[:34])

    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        vgg = self._extractor()
        return F.mse_loss(vgg(sr), vgg(hr))


def save_full_vgg16(path: str) -> None:
    """A torchvision VGG16 state dict (features and classifier, random init) for ``released``."""
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)


def reference_train_step(
    models: CLIPSRModels,
    opts: CLIPSROptimizers,
    lr: torch.Tensor,
    hr: torch.Tensor,
    captions: list[str],
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[float, float]:
    """One D and one G update as the reference's ``train`` does them; returns (errD, errG)."""
    clip, netG, disc = models.clip, models.generator, models.discriminator
    netC = disc.text_head
    taps = list(clip.cfg.image_taps)
    # ---- D
    opts.discriminator.zero_grad()
    with torch.no_grad():
        sent = clip.model.encode_text(clip.tokenizer(captions), normalize=False).float()
    real = hr.clone().requires_grad_()
    # a view of the leaf (no copy, the same arithmetic): torch's FlopCounterMode cannot count a
    # step where autograd.grad differentiates against a leaf that a module received
    sent = sent.requires_grad_().view_as(sent)
    clip_real, _ = reference_clip_image(clip, real, taps)
    real_feats = _d_features(disc, clip_real)
    pred_real = netC(real_feats, sent)
    err_real = F.relu(1.0 - pred_real).mean()
    mis = torch.cat((sent[1:], sent[0:1]), dim=0).detach()
    err_mis = F.relu(1.0 + netC(real_feats, mis)).mean()
    fake = netG(lr, sent, clip)
    clip_fake, fake_emb = reference_clip_image(clip, fake, taps)
    err_fake = F.relu(1.0 + netC(_d_features(disc, clip_fake.detach()), sent)).mean()
    err_d = err_real + (err_fake + err_mis) / 2.0 + _magp(pred_real, clip_real, sent)
    err_d.backward()
    opts.discriminator.step()
    # ---- G
    opts.generator.zero_grad()
    output = netC(_d_features(disc, clip_fake), sent)
    similarity = torch.cosine_similarity(fake_emb, sent).mean()
    g_adv = -output.mean() - SIM_W * similarity
    err_g = F.l1_loss(fake, real) + ADVERSARIAL_A * g_adv + perceptual(fake, real)
    err_g.backward()
    opts.generator.step()
    return err_d.item(), err_g.item()
