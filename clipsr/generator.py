"""The CLIP-SR generator: E_I, prompt predictor, CLIP-ViT fusion path, iterative refinement, head.

Data flow (paper Fig. 2a, ``wiring='paper'``)::

    LR -> ImageEncoder -> R1, R2, R3, R4 (= F_I)
    F_T -> PromptPredictor -> prompt tokens
    ClipFusionPath: TIFBlock(F_I, F_T) -> frozen CLIP-ViT (+ prompts) -> F_U
    IterativeRefinement: 4 x [resize, TIFBlock, TIFBlock] on F_U, + R4, R3, R2, R1 skips -> F_U'
    ReconstructionHead: F_U' (+ a global LR skip) -> pixel-shuffle x (scale / pre-upsample) -> SR
    (optionally + the interpolated LR, ``lr_residual``; not in the reference)

``wiring='release'`` reproduces the reference code, whose first refinement stage reads R4 instead
of F_U, so the CLIP branch has no effect (it is skipped; its weights keep the same keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipsr.clip_backbone import ClipBackbone
from clipsr.config import ModelConfig
from clipsr.fusion import FusionResBlock, TextImageFusionBlock


class ImageEncoder(nn.Module):
    """E_I: conv3x3 -> [PReLU -> conv3x3 stride 2] x 3, returning R1..R4 (pre-activation)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.conv1 = nn.Conv2d(3, c1, 3, 1, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.conv3 = nn.Conv2d(c2, c3, 3, 2, 1)
        self.conv4 = nn.Conv2d(c3, c4, 3, 2, 1)
        self.act = nn.PReLU()  # one shared parameter, as in the reference

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        r1 = self.conv1(x)
        r2 = self.conv2(self.act(r1))
        r3 = self.conv3(self.act(r2))
        r4 = self.conv4(self.act(r3))
        return [r1, r2, r3, r4]


class PromptPredictor(nn.Module):
    """P: the sentence embedding to ``num_prompts`` tokens for the frozen ViT (one Linear)."""

    def __init__(self, text_dim: int, num_prompts: int, width: int):
        super().__init__()
        self.num_prompts, self.width = num_prompts, width
        self.proj = nn.Linear(text_dim, num_prompts * width)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.proj(text).view(text.shape[0], self.num_prompts, self.width)


def _grid_conv(in_ch: int, out_ch: int, size: int, grid: tuple[int, int]) -> nn.Conv2d:
    """F_I (size x size) to the ViT's width; a valid conv lands exactly on the ViT grid when
    it is a little smaller (the reference: 2x2 from 8x8 to ViT-B/32's 7x7), else a 3x3 conv
    whose output is resized to the grid."""
    kernel = size - grid[0] + 1
    if grid[0] == grid[1] and 2 <= kernel <= 5:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, 0)
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


class ClipFusionPath(nn.Module):
    """TIFBlock(F_I, F_T) -> CLIP-ViT with predicted prompts -> F_U (at F_I's size).

    Two differences from the reference's live-branch variant (``no_clip.py``), both only in the
    ``paper`` wiring (in ``release`` this path does not run):

    - the image-fusion block applies the paper's TIFBlock order, modulation before convolution:
      [Affine(512) -> LReLU -> Affine(512) -> LReLU -> conv 512->32] -> [Affine(32) -> ... ->
      conv 32->512], plus the identity shortcut; the reference's ``TBlocks`` (GALIP's M_Block)
      convolves first: conv 512->32 -> DFBLK(32) -> conv 32->512 -> DFBLK(512). The parameters
      have the same shapes (a converted checkpoint places them by shape), the function differs.
    - F_U (7x7 for ViT-B/32) is resized to F_I's 8x8 by ``model.generator.clip_output_resize``:
      bilinear by default, where the reference's first refinement stage resizes by nearest
      (``clip_output_resize: nearest`` reproduces it).
    """

    def __init__(self, cfg: ModelConfig, text_dim: int, vit_width: int, grid_size: tuple[int, int]):
        super().__init__()
        g = cfg.generator
        c4 = g.encoder_channels[3]
        self.prompt_blocks = list(g.prompt_blocks)
        self.residual_scale = g.clip_residual_scale
        self.output_resize = g.clip_output_resize
        self.image_fusion = FusionResBlock(c4, c4, text_dim, g.fusion_mid_channels, g.text_softmax)
        self.prompt_predictor = PromptPredictor(text_dim, len(self.prompt_blocks), vit_width)
        self.to_vit = _grid_conv(c4, vit_width, cfg.lr_size * g.lr_pre_upsample // 8, grid_size)
        self.from_vit = nn.Conv2d(vit_width, c4, 5, 1, 2)

    def forward(self, f_i: torch.Tensor, text: torch.Tensor, clip: ClipBackbone) -> torch.Tensor:
        if max(self.prompt_blocks, default=-1) >= clip.num_layers:
            raise ValueError(
                f"model.generator.prompt_blocks {self.prompt_blocks} reach past the "
                f"{clip.num_layers} ViT blocks"
            )
        size = f_i.shape[-2:]
        fused = self.to_vit(self.image_fusion(f_i, text))
        if tuple(fused.shape[-2:]) != clip.grid_size:
            fused = F.interpolate(fused, size=clip.grid_size, mode="bilinear", align_corners=False)
        vit = clip.run_trunk(fused, self.prompt_predictor(text), self.prompt_blocks)
        f_u = self.from_vit(fused + self.residual_scale * vit)
        if tuple(f_u.shape[-2:]) != tuple(size):
            extra = {} if self.output_resize == "nearest" else {"align_corners": False}
            f_u = F.interpolate(f_u, size=size, mode=self.output_resize, **extra)
        return f_u


class IterativeRefinement(nn.Module):
    """R: four text-conditioned stages from 1/8 to full body size, each followed by a skip."""

    def __init__(self, cfg: ModelConfig, text_dim: int):
        super().__init__()
        g = cfg.generator
        c1, c2, c3, c4 = g.encoder_channels
        plan = [(c4, c4), (c4, c3), (c3, c2), (c2, c1)]
        self.stages = nn.ModuleList(
            FusionResBlock(i, o, text_dim, text_softmax=g.text_softmax) for i, o in plan
        )
        self.skip_fusion = (
            nn.ModuleList(
                TextImageFusionBlock(c, c, text_dim, g.text_softmax) for c in (c4, c3, c2, c1)
            )
            if g.skip_fusion
            else None
        )

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], text: torch.Tensor
    ) -> torch.Tensor:
        """``skips`` = [R4, R3, R2, R1]."""
        for k, (stage, skip) in enumerate(zip(self.stages, skips)):
            if self.skip_fusion is not None:
                skip = skip + self.skip_fusion[k](skip, text)
            x = stage(x, text, size=skip.shape[-2:]) + skip
        return x


class ReconstructionHead(nn.Module):
    """G: body refinement + global LR skip, then pixel-shuffle x2 stages and a conv to RGB.

    ``text_stages`` > 0 (an extension, not in the paper or the reference) adds a residual
    text-image fusion block after each of the first ``text_stages`` pixel-shuffle stages:
    channel-wise modulation where every sub-pixel position has its own features, so the caption
    can shape what is drawn inside an LR pixel (at LR resolution it can only scale whole pixels).
    """

    def __init__(
        self,
        body_ch: int,
        head_ch: int,
        upscale: int,
        text_dim: int = 0,
        text_stages: int = 0,
        text_softmax: bool = False,
    ):
        super().__init__()
        self.lr_skip = nn.Conv2d(3, body_ch, 3, 1, 1)
        self.body = nn.Sequential(
            nn.Conv2d(body_ch, head_ch, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(head_ch, head_ch, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(head_ch, body_ch, 3, 1, 1),
        )
        self.before_upsample = nn.Sequential(
            nn.Conv2d(body_ch, head_ch, 3, 1, 1), nn.LeakyReLU(0.01)
        )
        steps = int(math.log2(upscale))
        if not 0 <= text_stages <= steps:
            raise ValueError(
                f"model.generator.head_text_stages: {text_stages} is not in 0..{steps} "
                f"(the head has {steps} pixel-shuffle stages)"
            )
        self.upsample = nn.Sequential(
            *[
                layer
                for _ in range(steps)
                for layer in (nn.Conv2d(head_ch, 4 * head_ch, 3, 1, 1), nn.PixelShuffle(2))
            ]
        )
        self.text_fusion = (
            nn.ModuleList(
                TextImageFusionBlock(head_ch, head_ch, text_dim, text_softmax)
                for _ in range(text_stages)
            )
            if text_stages
            else None
        )
        self.to_rgb = nn.Conv2d(head_ch, 3, 3, 1, 1)

    def forward(
        self, body: torch.Tensor, lr: torch.Tensor, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.before_upsample(self.body(body) + self.lr_skip(lr))
        if self.text_fusion is None:
            return self.to_rgb(self.upsample(x))
        for i, layer in enumerate(self.upsample):
            x = layer(x)
            stage = i // 2
            if i % 2 and stage < len(self.text_fusion):
                x = x + self.text_fusion[stage](x, text)
        return self.to_rgb(x)


class CLIPSRGenerator(nn.Module):
    """G(LR, F_T) -> SR for one scale. Images are in [-1, 1]; the output is not clamped."""

    def __init__(self, cfg: ModelConfig, text_dim: int, vit_width: int, grid_size: tuple[int, int]):
        super().__init__()
        g = cfg.generator
        self.scale = cfg.scale
        self.wiring = g.wiring
        self.lr_pre_upsample = g.lr_pre_upsample
        self.image_encoder = ImageEncoder(g.encoder_channels)
        self.clip_fusion = ClipFusionPath(cfg, text_dim, vit_width, grid_size)
        if self.wiring == "release":  # kept for its keys, never run: frozen, so that DDP does
            self.clip_fusion.requires_grad_(False)  # not wait for gradients it never gets
        self.refinement = IterativeRefinement(cfg, text_dim)
        self.head = ReconstructionHead(
            g.encoder_channels[0],
            g.head_channels,
            cfg.scale // g.lr_pre_upsample,
            text_dim,
            g.head_text_stages,
            g.text_softmax,
        )
        self.lr_residual = g.lr_residual
        if self.lr_residual != "none":  # start from the interpolated LR exactly
            nn.init.zeros_(self.head.to_rgb.weight)
            nn.init.zeros_(self.head.to_rgb.bias)

    def check_input(self, lr: torch.Tensor) -> None:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected LR images (B, 3, H, W), got {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        m = 8 // math.gcd(8, self.lr_pre_upsample)
        if h % m or w % m:
            raise ValueError(
                f"LR size {h}x{w} does not fit this {self.scale}x model: height and width must "
                f"be multiples of {m} (crop or pad the image)"
            )

    def forward(
        self, lr: torch.Tensor, text: torch.Tensor, clip: ClipBackbone | None = None
    ) -> torch.Tensor:
        self.check_input(lr)
        x = lr
        if self.lr_pre_upsample > 1:
            x = F.interpolate(x, scale_factor=self.lr_pre_upsample, mode="nearest")
        r1, r2, r3, r4 = self.image_encoder(x)
        if self.wiring == "paper":
            if clip is None:
                raise ValueError("the paper wiring needs the CLIP backbone: G(lr, text, clip)")
            start = self.clip_fusion(r4, text, clip)
        else:  # release: the reference's GBlock(R4, c); the CLIP branch has no effect
            start = r4
        body = self.refinement(start, [r4, r3, r2, r1], text)
        out = self.head(body, x, text)
        if self.lr_residual != "none":
            out = out + F.interpolate(
                lr, size=out.shape[-2:], mode=self.lr_residual, align_corners=False
            )
        return out
