"""Seedable Real-ESRGAN second-order degradation on numpy arrays (CPU, per sample).

A port of the synthesis in Real-ESRGAN ``realesrgan/models/realesrgan_model.py:feed_data`` and
``realesrgan/data/realesrgan_dataset.py``, with the kernel formulas of BasicSR
``basicsr/data/degradations.py`` (bivariate Gaussian, generalized Gaussian, plateau and the
circular low-pass "sinc" kernel). Differences from the original, all deliberate:

* every random draw comes from one ``np.random.Generator`` passed in (the original uses the
  global ``random``/``np.random``/torch RNGs), so a (image, scale, config, seed) tuple always
  gives the same bytes;
* all parameters are drawn first into a JSON-serialisable *plan*, then applied;
* JPEG is libjpeg through ``albumentations.ImageCompression`` on uint8 with an integer quality
  (the original uses DiffJPEG on float tensors), and resizes are ``cv2.resize``
  (area/bilinear/bicubic) instead of ``F.interpolate``;
* the GT is not USM-sharpened before degradation (Real-ESRGAN degrades ``gt_usm``).

Sizes follow Real-ESRGAN: the stage-1 resize is relative to the HR size, the stage-2 resize
is relative to the target LR size (``int(H / scale * s)``), the final resize hits the target.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from clipsr.degradations import KERNEL_TYPES

if TYPE_CHECKING:
    from clipsr.degradations import RealESRGANConfig

__all__ = [
    "apply_plan",
    "degrade",
    "kernel_from_params",
    "mixed_kernel",
    "sample_plan",
    "sinc_kernel",
]

RESIZE_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


# ------------------------------------------------------------------ kernels (BasicSR math)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``g^T S^-1 g`` on a centred ``size x size`` grid, ``S = U diag(sx^2, sy^2) U^T``."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[cos, -sin], [sin, cos]])
    inv = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def mixed_kernel(
    kind: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float | None
) -> np.ndarray:
    """Normalised Gaussian / generalized Gaussian / plateau kernel (BasicSR formulas)."""
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    if kind.endswith("_iso") or kind == "iso":
        sigma_y, theta = sigma_x, 0.0
    quad = _quadratic_form(size, sigma_x, sigma_y, theta)
    if kind in ("iso", "aniso"):
        kernel = np.exp(-0.5 * quad)
    elif kind.startswith("generalized"):
        kernel = np.exp(-0.5 * np.power(quad, beta))
    elif kind.startswith("plateau"):
        kernel = np.reciprocal(np.power(quad, beta) + 1.0)
    else:
        raise ValueError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")
    return kernel / kernel.sum()


def sinc_kernel(cutoff: float, size: int) -> np.ndarray:
    """2-D circular low-pass (sinc) kernel, BasicSR ``circular_lowpass_kernel``, normalised."""
    from scipy import special

    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = np.sqrt((xx - centre) ** 2 + (yy - centre) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * special.j1(cutoff * radius) / (2 * np.pi * radius)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    return kernel / kernel.sum()


def kernel_from_params(params: dict[str, Any]) -> np.ndarray:
    """Rebuild a kernel from a plan entry (``{"type", "size", ...}``)."""
    if params["type"] == "sinc":
        return sinc_kernel(params["omega_c"], params["size"])
    return mixed_kernel(
        params["type"],
        params["size"],
        params["sigma_x"],
        params["sigma_y"],
        params["angle"],
        params["beta"],
    )


# ------------------------------------------------------------------ sampling the plan


def _choice(rng: np.random.Generator, weights: list[float]) -> int:
    """Index drawn with probability proportional to ``weights`` (like ``random.choices``)."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(cum) - 1))


def _kernel_sizes(cfg: RealESRGANConfig) -> list[int]:
    lo, hi = cfg.kernel_size_range
    return list(range(lo, hi + 1, 2))


def _sample_blur(
    rng: np.random.Generator,
    cfg: RealESRGANConfig,
    kinds: list[str],
    probs: list[float],
    sigma: list[float],
    betag: list[float],
    betap: list[float],
    sinc_prob: float,
) -> dict[str, Any]:
    """One blur kernel's parameters, drawn as in ``RealESRGANDataset.__getitem__``."""
    sizes = _kernel_sizes(cfg)
    size = sizes[int(rng.integers(len(sizes)))]
    if rng.random() < sinc_prob:
        low = math.pi / 3 if size < 13 else math.pi / 5
        return {"type": "sinc", "size": size, "omega_c": float(rng.uniform(low, math.pi))}
    kind = kinds[_choice(rng, probs)]
    sigma_x = float(rng.uniform(*sigma))
    sigma_y, angle = sigma_x, 0.0
    if not (kind == "iso" or kind.endswith("_iso")):
        sigma_y = float(rng.uniform(*sigma))
        angle = float(rng.uniform(-math.pi, math.pi))
    beta = None
    if kind.startswith(("generalized", "plateau")):
        lo, hi = betag if kind.startswith("generalized") else betap
        beta = float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))
    return {
        "type": kind,
        "size": size,
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "angle": angle,
        "beta": beta,
    }


def _sample_resize(
    rng: np.random.Generator, probs: list[float], scale_range: list[float], base_hw: tuple[int, int]
) -> dict[str, Any]:
    direction = ("up", "down", "keep")[_choice(rng, probs)]
    if direction == "up":
        factor = float(rng.uniform(1.0, scale_range[1]))
    elif direction == "down":
        factor = float(rng.uniform(scale_range[0], 1.0))
    else:
        factor = 1.0
    mode = sorted(RESIZE_MODES)[int(rng.integers(len(RESIZE_MODES)))]
    size = [max(1, int(base_hw[0] * factor)), max(1, int(base_hw[1] * factor))]
    return {"direction": direction, "scale": factor, "mode": mode, "size": size}


def _sample_noise(
    rng: np.random.Generator,
    gauss_prob: float,
    sigma: list[float],
    poisson: list[float],
    gray: float,
) -> dict[str, Any]:
    if rng.random() < gauss_prob:
        params = {"type": "gaussian", "sigma": float(rng.uniform(*sigma))}
    else:
        params = {"type": "poisson", "scale": float(rng.uniform(*poisson))}
    params["gray"] = bool(rng.random() < gray)
    return params


def _quality(rng: np.random.Generator, quality_range: list[int]) -> int:
    return int(rng.integers(quality_range[0], quality_range[1] + 1))


def sample_plan(
    rng: np.random.Generator, cfg: RealESRGANConfig, hr_hw: tuple[int, int], scale: int
) -> dict[str, Any]:
    """Draw every parameter of the two-stage pipeline for an ``hr_hw`` image at ``scale``."""
    c = cfg
    target = (hr_hw[0] // scale, hr_hw[1] // scale)
    stage1 = {
        "blur": _sample_blur(
            rng,
            c,
            c.kernel_list,
            c.kernel_prob,
            c.blur_sigma,
            c.betag_range,
            c.betap_range,
            c.sinc_prob,
        ),
        "resize": _sample_resize(rng, c.resize_prob, c.resize_range, hr_hw),
        "noise": _sample_noise(
            rng, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob
        ),
        "jpeg_quality": _quality(rng, c.jpeg_range),
    }
    blur2 = None
    if rng.random() < c.second_blur_prob:
        blur2 = _sample_blur(
            rng,
            c,
            c.kernel_list2,
            c.kernel_prob2,
            c.blur_sigma2,
            c.betag_range2,
            c.betap_range2,
            c.sinc_prob2,
        )
    stage2 = {
        "blur": blur2,
        "resize": _sample_resize(rng, c.resize_prob2, c.resize_range2, target),
        "noise": _sample_noise(
            rng, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2, c.gray_noise_prob2
        ),
    }
    order = "resize_sinc_jpeg" if rng.random() < 0.5 else "jpeg_resize_sinc"
    sinc = None
    if rng.random() < c.final_sinc_prob:
        sizes = _kernel_sizes(c)
        size = sizes[int(rng.integers(len(sizes)))]
        sinc = {"type": "sinc", "size": size, "omega_c": float(rng.uniform(math.pi / 3, math.pi))}
    final = {
        "order": order,
        "resize_mode": sorted(RESIZE_MODES)[int(rng.integers(len(RESIZE_MODES)))],
        "size": [target[0], target[1]],
        "sinc": sinc,
        "jpeg_quality": _quality(rng, c.jpeg_range2),
    }
    return {"stage1": stage1, "stage2": stage2, "final": final}


# ------------------------------------------------------------------ applying the plan


def _blur(img: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
    if params is None:
        return img
    kernel = kernel_from_params(params)
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _resize(img: np.ndarray, size: list[int], mode: str) -> np.ndarray:
    if img.shape[0] == size[0] and img.shape[1] == size[1]:
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=RESIZE_MODES[mode])


def _add_noise(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Gaussian or Poisson noise (BasicSR ``generate_*_noise``), clipped to [0, 1]."""
    h, w = img.shape[:2]
    if params["type"] == "gaussian":
        shape = (h, w, 1) if params["gray"] else (h, w, 3)
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(params["sigma"] / 255.0)
    else:
        src = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None] if params["gray"] else img
        levels = np.clip(np.round(src * 255.0), 0, 255).astype(np.uint8)
        distinct = int(np.count_nonzero(np.bincount(levels.ravel(), minlength=256)))
        vals = 2 ** math.ceil(math.log2(distinct))
        src = levels / 255.0
        noise = (rng.poisson(src * vals) / vals - src) * params["scale"]
    return np.clip(img + noise, 0.0, 1.0).astype(np.float32)


@lru_cache(maxsize=1)
def _jpeg_transform() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.ImageCompression(compression_type="jpeg", quality_range=(1, 100), p=1.0)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at ``quality`` (RGB in/out; libjpeg expects BGR channel order)."""
    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(u8[..., ::-1])
    out = _jpeg_transform().apply(bgr, quality=quality, image_type=".jpg")
    return out[..., ::-1].astype(np.float32) / 255.0


def apply_plan(hr: np.ndarray, plan: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Run a plan from :func:`sample_plan` on uint8 RGB ``hr``; noise is drawn from ``rng``."""
    out = hr.astype(np.float32) / 255.0
    s1, s2, fin = plan["stage1"], plan["stage2"], plan["final"]
    out = _blur(out, s1["blur"])
    out = _resize(out, s1["resize"]["size"], s1["resize"]["mode"])
    out = _add_noise(out, s1["noise"], rng)
    out = _jpeg(out, s1["jpeg_quality"])
    out = _blur(out, s2["blur"])
    out = _resize(out, s2["resize"]["size"], s2["resize"]["mode"])
    out = _add_noise(out, s2["noise"], rng)
    if fin["order"] == "resize_sinc_jpeg":
        out = _blur(_resize(out, fin["size"], fin["resize_mode"]), fin["sinc"])
        out = _jpeg(out, fin["jpeg_quality"])
    else:
        out = _jpeg(out, fin["jpeg_quality"])
        out = _blur(_resize(out, fin["size"], fin["resize_mode"]), fin["sinc"])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def degrade(
    hr: np.ndarray, scale: int, cfg: RealESRGANConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Sample a plan, then apply it; returns the uint8 LR and the plan."""
    plan = sample_plan(rng, cfg, (hr.shape[0], hr.shape[1]), scale)
    return apply_plan(hr, plan, rng), plan
