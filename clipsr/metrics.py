"""Image-quality metrics matching the SR field's reference implementations.

PSNR and SSIM follow BasicSR ``basicsr/metrics/psnr_ssim.py`` (float64, optional border
crop, optional MATLAB-style Y channel), but take RGB (not BGR) uint8 images. LPIPS is the
v0.1 VGG16 variant of Zhang et al. (2018), re-implemented here so that the ``lpips`` package
is not needed at runtime; weights are loaded from local files only. ``clip_score`` follows
the usual CLIPScore convention on precomputed embeddings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipsr.degradations import imresize
from clipsr.vgg import load_state_dict_file, vgg16_features

__all__ = [
    "LPIPS",
    "bicubic_upscale",
    "clip_score",
    "psnr",
    "rgb_to_y",
    "ssim",
    "tensor_to_uint8",
]

_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` luma of an RGB image in [0, 255]; float64 in [16, 235].

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B in [0, 255].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {img.shape}")
    return img.astype(np.float64) @ _Y_COEFFS / 255.0 + 16.0


def _prepare(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of uint8 images; crop, optionally convert to Y; return float64."""
    img1, img2 = np.asarray(img1), np.asarray(img2)
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if img1.dtype != np.uint8 or img2.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {img1.dtype} and {img2.dtype}")
    if img1.ndim not in (2, 3) or (img1.ndim == 3 and img1.shape[-1] not in (1, 3)):
        raise ValueError(f"images must be HxW or HxWx3 (or HxWx1), got shape {img1.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if 2 * crop_border >= min(img1.shape[:2]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {img1.shape[:2]} image")
    if crop_border:
        img1 = img1[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and img1.ndim == 3 and img1.shape[-1] == 3:
        return rgb_to_y(img1), rgb_to_y(img2)
    return img1.astype(np.float64), img2.astype(np.float64)


def psnr(
    img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False
) -> float:
    """PSNR in dB between two uint8 images (peak 255); ``inf`` for identical images."""
    a, b = _prepare(img1, img2, crop_border, test_y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """BasicSR/MATLAB SSIM of one float64 channel: 11x11 Gaussian (sigma 1.5), valid region."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu1, mu2 = blur(a), blur(b)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = blur(a**2) - mu1_sq
    sigma2_sq = blur(b**2) - mu2_sq
    sigma12 = blur(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(ssim_map.mean())


def ssim(
    img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False
) -> float:
    """SSIM between two uint8 images (BasicSR convention), averaged over channels."""
    a, b = _prepare(img1, img2, crop_border, test_y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    if a.ndim == 2:
        return _ssim_channel(a, b)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C,H,W) or (B,C,H,W) tensor in [-1, 1] -> HxWxC or BxHxWxC uint8 (clamped, rounded)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (C,H,W) or (B,C,H,W) tensor, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


def bicubic_upscale(lr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic baseline: MATLAB-style ``imresize`` of a uint8 image up by ``scale``."""
    if not isinstance(lr_uint8, np.ndarray) or lr_uint8.dtype != np.uint8:
        raise ValueError("bicubic_upscale expects a uint8 numpy image")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    return imresize(lr_uint8, scale=scale)


_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


class LPIPS(nn.Module):
    """LPIPS v0.1 (VGG16 backbone); ``forward(x, y)`` takes [-1, 1] (B,3,H,W), returns (B,).

    ``backbone_weights``: torchvision VGG16 state dict (``features.N.weight|bias``; other keys
    such as ``classifier.*`` are ignored). ``linear_weights``: the lpips package's
    ``weights/v0.1/vgg.pth`` (``lin{0..4}.model.1.weight``). Either as .pth or .safetensors.
    """

    def __init__(self, backbone_weights: str | Path, linear_weights: str | Path) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        features = vgg16_features(backbone_weights, "VGG16 backbone")
        self.slices = nn.ModuleList(features[a:b] for a, b in _VGG_SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self._load_linear(linear_weights)
        self.requires_grad_(False)
        self.eval()

    def _load_linear(self, path: str | Path) -> None:
        state = load_state_dict_file(path, "LPIPS linear-layer")
        for i, (lin, channels) in enumerate(zip(self.lins, _LPIPS_CHANNELS, strict=True)):
            key = f"lin{i}.model.1.weight"
            if key not in state:
                raise ValueError(
                    f"LPIPS linear-layer file {path} lacks key '{key}' "
                    "(expected lpips v0.1 vgg.pth keys lin0..lin4.model.1.weight)"
                )
            if tuple(state[key].shape) != (1, channels, 1, 1):
                raise ValueError(
                    f"LPIPS linear-layer file {path}: '{key}' has shape "
                    f"{tuple(state[key].shape)}, expected (1, {channels}, 1, 1)"
                )
            with torch.no_grad():
                lin.weight.copy_(state[key])

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode (frozen metric network)."""
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        feats = []
        for block in self.slices:
            h = block(h)
            feats.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per sample, shape (B,)."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B,3,H,W) tensors of equal shape, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        dtype = self.shift.dtype
        fx, fy = self._features(x.to(dtype)), self._features(y.to(dtype))
        total = x.new_zeros(x.shape[0], dtype=dtype)
        for lin, a, b in zip(self.lins, fx, fy, strict=True):
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """CLIPScore: ``100 * max(cos(image_emb, text_emb), 0)`` per sample, shape (B,)."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected two (B, D) embeddings of equal shape, got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    cos = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return 100.0 * cos.clamp(min=0.0)
