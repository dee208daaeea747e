"""The configuration schema of the model library.

Defaults are the paper's setting (ViT-B/32, the reference implementation's widths, the loss
weights of the spec). Presets under ``configs/`` change only what differs. Load with
:func:`load_clipsr_config` (YAML + ``a.b=value`` overrides); every field is type-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipsr.config_loader import ConfigError, load_config

SUPPORTED_SCALES = (2, 4, 8, 16)


@dataclass
class ClipConfig:
    # open_clip architecture: a built-in name (ViT-B-32), the bundled test config clipsr-tiny,
    # 'hf-hub:org/repo' (config + weights from an HF cache) or 'local-dir:/path'.
    arch: str = "ViT-B-32"
    # Weights: an open_clip pretrained tag (e.g. openai) ...
    pretrained: str = ""
    # ... or a local weights file (.pt/.pth/.bin/.safetensors). Never both.
    checkpoint: str = ""
    # HF cache directory where tags / hf-hub repos are looked up (offline clusters pre-seed it).
    cache_dir: str = ""
    # QuickGELU: null = automatic (on for OpenAI weights, as they were trained with it).
    quick_gelu: bool | None = None
    # ViT blocks (0-based) whose patch-token maps feed the discriminator.
    image_taps: list[int] = field(default_factory=lambda: [1, 4, 8])
    # How images are resized to CLIP's input size.
    image_resize: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    # The reference (GALIP) maps [-1,1] -> [0,1] twice before CLIP normalisation; compat only.
    compat_double_shift: bool = False
    # Seed of the random init used when no weights are configured (then saved with checkpoints).
    init_seed: int = 0

    @property
    def uses_quick_gelu(self) -> bool:
        """``quick_gelu``, or when null: on for OpenAI weights and ``*-quickgelu`` archs."""
        if self.quick_gelu is not None:
            return self.quick_gelu
        return self.pretrained == "openai" or self.arch.endswith("-quickgelu")

    @property
    def has_weights(self) -> bool:
        return bool(self.pretrained or self.checkpoint) or self.arch.startswith(
            ("hf-hub:", "local-dir:")
        )


@dataclass
class GeneratorConfig:
    # paper: the CLIP-ViT fusion branch feeds the first refinement stage (as the paper describes);
    # release: the reference code's behaviour, where that stage bypasses it (branch unused).
    wiring: Literal["paper", "release"] = "paper"
    # Channels of the image encoder E_I stages R1..R4 (R2..R4 at 1/2, 1/4, 1/8 of the body size).
    encoder_channels: list[int] = field(default_factory=lambda: [256, 512, 512, 512])
    # Width of the reconstruction head (pixel-shuffle upsampler).
    head_channels: int = 64
    # Bottleneck width of the fusion block applied to F_I before the CLIP-ViT.
    fusion_mid_channels: int = 32
    # ViT blocks (0-based) that receive one predicted prompt token each.
    prompt_blocks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    # Softmax over the text feature before the fusion MLPs (drawn in the paper's Fig. 2b; the
    # reference code never trained with it).
    text_softmax: bool = False
    # Text-image fusion on the encoder skips before they are added (paper Fig. 2a), paper wiring.
    skip_fusion: bool = False
    # Weight of the ViT output added to its input (GALIP/CLIP-SR use 0.1).
    clip_residual_scale: float = 0.1
    # How F_U (the CLIP-ViT output, on the ViT's grid: 7x7 for ViT-B/32) is resized to F_I's
    # size (8x8), paper wiring. The reference's no_clip.py resizes by nearest (its first
    # refinement stage's resize); bilinear is clipsr's default (checkpoints trained with it).
    clip_output_resize: Literal["bilinear", "nearest"] = "bilinear"
    # LR is nearest-upsampled by this factor before the encoder (the reference runs 8x/16x
    # by upsampling LR to 64 px: 2 and 4); the head then upsamples by scale / lr_pre_upsample.
    lr_pre_upsample: int = 1
    # Extension (not in the paper): a text-image fusion block after each of the head's first N
    # pixel-shuffle stages, where the caption can shape the inside of an LR pixel (see README).
    head_text_stages: int = 0
    # Add an interpolated LR to the head's output (the head learns a residual, zero at init).
    # Not in the reference (none); it makes small CPU models beat bicubic within minutes.
    lr_residual: Literal["none", "bilinear", "bicubic"] = "none"


@dataclass
class DiscriminatorConfig:
    # Channels of the last discriminator block (the map the text head reads).
    out_channels: int = 512
    # Hidden channels of the text-conditioned head.
    head_channels: int = 128


@dataclass
class ModelConfig:
    scale: int = 4
    hr_size: int = 256
    clip: ClipConfig = field(default_factory=ClipConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    @property
    def lr_size(self) -> int:
        return self.hr_size // self.scale

    def validate(self) -> None:
        g = self.generator
        if self.scale not in SUPPORTED_SCALES:
            raise ConfigError(f"model.scale: must be one of {SUPPORTED_SCALES}, got {self.scale}")
        if self.hr_size % self.scale:
            raise ConfigError(
                f"model.scale: {self.scale} does not divide model.hr_size {self.hr_size}"
            )
        pre = g.lr_pre_upsample
        if pre < 1 or self.scale % pre or (self.scale // pre) & (self.scale // pre - 1):
            raise ConfigError(
                "model.generator.lr_pre_upsample: must be a power of two dividing model.scale, "
                f"got {pre} for scale {self.scale}"
            )
        if (self.lr_size * pre) % 8:
            raise ConfigError(
                f"model.hr_size/model.scale: the LR size {self.lr_size} (x{pre} pre-upsample) "
                "must be a multiple of 8 (the image encoder halves it three times)"
            )
        if len(g.encoder_channels) != 4 or min(g.encoder_channels) < 1:
            raise ConfigError("model.generator.encoder_channels: expected 4 positive integers")
        if not self.clip.image_taps or min(self.clip.image_taps) < 0:
            raise ConfigError("model.clip.image_taps: expected block indices >= 0")
        if sorted(set(self.clip.image_taps)) != list(self.clip.image_taps):
            raise ConfigError("model.clip.image_taps: must be increasing and distinct")
        if len(set(g.prompt_blocks)) != len(g.prompt_blocks) or min(g.prompt_blocks, default=0) < 0:
            raise ConfigError("model.generator.prompt_blocks: expected distinct indices >= 0")
        if self.clip.pretrained and self.clip.checkpoint:
            raise ConfigError(
                "model.clip: set either model.clip.pretrained (a tag) or model.clip.checkpoint "
                "(a file), not both"
            )
        if self.clip.checkpoint and not Path(self.clip.checkpoint).expanduser().is_file():
            raise ConfigError(f"model.clip.checkpoint: file not found: {self.clip.checkpoint}")


@dataclass
class LossWeights:
    reconstruction: float = 1.0
    perceptual: float = 1.0
    adversarial: float = 0.01
    clip_similarity: float = 0.04
    # MA-GP: weight * mean(||grad||^power) on the CLIP features and sentence embedding.
    gradient_penalty: float = 2.0
    gradient_penalty_power: float = 6.0


@dataclass
class LossConfig:
    weights: LossWeights = field(default_factory=LossWeights)
    # Perceptual network: VGG16 through pool5 (the reference), or none.
    perceptual: Literal["none", "vgg16"] = "vgg16"
    # torchvision VGG16 state dict (.pth/.safetensors); 'random' = random init (benchmarks only).
    vgg16_weights: str = ""


@dataclass
class OptimConfig:
    generator_lr: float = 1e-4
    discriminator_lr: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)


@dataclass
class MetricsConfig:
    # Pixels shaved from each border before PSNR/SSIM (BasicSR uses the scale; the reference 0).
    crop_border: int = 0
    # PSNR/SSIM on the Y channel (MATLAB rgb2ycbcr) instead of RGB.
    test_y_channel: bool = False
    # LPIPS (VGG) is computed only when both files are set.
    lpips_backbone_weights: str = ""
    lpips_linear_weights: str = ""


@dataclass
class CLIPSRConfig:
    seed: int = 100
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        self.model.validate()


def load_clipsr_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> CLIPSRConfig:
    """Load a model/training config preset (``configs/*.yaml``) with ``a.b=value`` overrides."""
    return load_config(CLIPSRConfig, path, overrides, validate)
