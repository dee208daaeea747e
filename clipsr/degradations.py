"""Image degradations used to synthesise low-resolution training/eval inputs.

For now this module holds the MATLAB-compatible bicubic resize, the SR field's standard
downsampler (PSNR/SSIM computed on LR images made with it are comparable with published
numbers). It ports the logic of BasicSR ``basicsr/utils/matlab_functions.py:imresize`` and
KAIR ``utils_image.imresize``:

* cubic kernel with ``a = -0.5`` (Keys), support ``[-2, 2]``;
* when downscaling with antialiasing, the kernel is widened by ``1 / scale``;
* MATLAB's coordinate mapping ``u = x / scale + 0.5 * (1 - 1 / scale)`` (1-based);
* symmetric (mirror, edge repeated) padding at the borders;
* weights normalised to sum to one per output pixel, all-zero weight columns trimmed.

The resize is separable: one dense ``(out, in)`` weight matrix per axis (mirror padding
folded in), applied with matrix multiplications, so the numpy and torch versions share the
same weights and the torch version runs on GPU and inside data loaders.

:func:`make_lr` is the one LR generator used by preprocessing, training and evaluation:
``bicubic`` (the MATLAB resize above) or ``realesrgan`` (the seedable second-order pipeline in
:mod:`clipsr.realesrgan`, imported lazily together with albumentations). Seeds per sample come
from :func:`derive_seed`, so an LR never depends on worker, order or process.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "KERNEL_TYPES",
    "box_downsample",
    "DegradationConfig",
    "RealESRGANConfig",
    "derive_seed",
    "imresize",
    "imresize_torch",
    "make_lr",
    "resize_weights",
]

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    inner = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return inner + outer


@lru_cache(maxsize=128)
def resize_weights(in_length: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    """Dense ``(out_length, in_length)`` float64 bicubic weight matrix, MATLAB semantics.

    Row ``k`` holds the weights of output pixel ``k``; mirror padding is folded in, so
    ``out = W @ signal``. The returned array is cached and read-only.
    """
    antialias = antialiasing and scale < 1
    kernel_width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if antialias else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Symmetric padding, MATLAB style: mirror the index into [1, in_length] (edge repeated).
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    cols = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]

    keep = np.any(weights != 0, axis=0)  # trim all-zero weight columns
    weights, cols = weights[:, keep], cols[:, keep]

    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], cols.shape)
    np.add.at(matrix, (rows, cols), weights)
    matrix.setflags(write=False)
    return matrix


def _plan(
    in_hw: tuple[int, int],
    scale: float | None,
    output_shape: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Validate arguments; return the output size and the per-axis scale factors."""
    if in_hw[0] <= 0 or in_hw[1] <= 0:
        raise ValueError(f"input image must have positive height and width, got {in_hw}")
    if (scale is None) == (output_shape is None):
        raise ValueError("pass exactly one of `scale` or `output_shape`")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"`scale` must be a real number, got {scale!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"`scale` must be a positive finite number, got {scale!r}")
        # MATLAB uses ceil(scale * size); the epsilon keeps e.g. 768 * (1/3) at 256.
        out_hw = (
            max(1, math.ceil(in_hw[0] * scale - 1e-9)),
            max(1, math.ceil(in_hw[1] * scale - 1e-9)),
        )
        return out_hw, (float(scale), float(scale))
    try:
        out_h, out_w = (operator.index(v) for v in output_shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"`output_shape` must be a pair of ints (height, width), got {output_shape!r}"
        ) from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"`output_shape` must be positive, got {output_shape!r}")
    return (out_h, out_w), (out_h / in_hw[0], out_w / in_hw[1])


def _matrices(
    in_hw: tuple[int, int],
    scale: float | None,
    output_shape: tuple[int, int] | None,
    antialiasing: bool,
) -> tuple[np.ndarray, np.ndarray]:
    (out_h, out_w), (scale_h, scale_w) = _plan(in_hw, scale, output_shape)
    w_h = resize_weights(in_hw[0], out_h, scale_h, bool(antialiasing))
    w_w = resize_weights(in_hw[1], out_w, scale_w, bool(antialiasing))
    return w_h, w_w


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """MATLAB ``imresize(img, scale | [h w], 'bicubic')`` for HxW or HxWxC arrays.

    Values can be in any range. Computation is float64; float inputs come back in their own
    dtype, uint8 comes back rounded (half away from zero) and clipped to [0, 255] like MATLAB.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {img.shape}")
    if img.dtype == np.uint8:
        out_dtype = np.dtype(np.uint8)
    elif np.issubdtype(img.dtype, np.floating):
        out_dtype = img.dtype
    else:
        raise TypeError(f"expected a float or uint8 array, got dtype {img.dtype}")
    w_h, w_w = _matrices(img.shape[:2], scale, output_shape, antialiasing)

    data = img.astype(np.float64)
    if data.ndim == 2:
        out = w_h @ data @ w_w.T
    else:
        out = np.moveaxis(w_h @ np.moveaxis(data, -1, 0) @ w_w.T, 0, -1)
    if out_dtype == np.uint8:
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out, dtype=out_dtype)


def imresize_torch(
    x: torch.Tensor,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> torch.Tensor:
    """Torch version of :func:`imresize` for (C,H,W) or (B,C,H,W) float tensors.

    Uses the same weight matrices (cast to the tensor's dtype and device), so it works on
    GPU and is differentiable. The output keeps the input dtype and device.
    """
    import torch  # lazily: the preprocessing workers never need it

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (C,H,W) or (B,C,H,W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point tensor, got dtype {x.dtype}")
    w_h, w_w = _matrices((x.shape[-2], x.shape[-1]), scale, output_shape, antialiasing)
    w_h_t = torch.from_numpy(np.array(w_h)).to(device=x.device, dtype=x.dtype)
    w_w_t = torch.from_numpy(np.array(w_w)).to(device=x.device, dtype=x.dtype)
    return torch.matmul(torch.matmul(w_h_t, x), w_w_t.T)


def box_downsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Area downsampling of an HxWxC uint8 image: each output pixel is the mean of its
    ``scale`` x ``scale`` block, rounded half up. Blocks never overlap."""
    h, w, c = img.shape
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not divisible by scale {scale}")
    blocks = img.reshape(h // scale, scale, w // scale, scale, c).astype(np.int64)
    total = blocks.sum(axis=(1, 3))
    n = scale * scale
    return ((2 * total + n) // (2 * n)).astype(np.uint8)


# ------------------------------------------------------------------ LR generation


KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)


def _pair(name: str, value: list[float], low: float | None = None) -> None:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{name} must be a [low, high] pair with low <= high, got {value!r}")
    if low is not None and value[0] < low:
        raise ValueError(f"{name} must not go below {low:g}, got {value!r}")


def _around_one(name: str, value: list[float]) -> None:
    """The sampler draws uniform(low, 1) or uniform(1, high): [low, high] must hold 1."""
    if not value[0] <= 1.0 <= value[1]:
        raise ValueError(
            f"{name} must hold 1 ([low <= 1 <= high]: the sampler draws from [low, 1] and "
            f"[1, high]), got {value!r}"
        )


@dataclass
class RealESRGANConfig:
    """Real-ESRGAN second-order degradation settings; defaults = ``train_realesrgan_x4plus``.

    Fields without a ``2`` are the first stage, with a ``2`` the second stage. Kernel sizes are
    the odd numbers in ``kernel_size_range``. Ranges are ``[low, high]``; probabilities lie in
    [0, 1]; ``resize_range``s and the ``beta`` ranges must hold 1 (the sampler draws below and
    above 1 from them). The stage-1 resize is relative to the HR size, the stage-2 resize to the
    target LR size (``hr / scale``); the defaults are Real-ESRGAN's for 4x (see README).
    """

    kernel_size_range: list[int] = field(default_factory=lambda: [7, 21])
    kernel_list: list[str] = field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 3.0])
    betag_range: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range: list[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob: list[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: list[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5
    noise_range: list[float] = field(default_factory=lambda: [1.0, 30.0])
    poisson_scale_range: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_range: list[int] = field(default_factory=lambda: [30, 95])

    second_blur_prob: float = 0.8
    kernel_list2: list[str] = field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob2: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob2: float = 0.1
    blur_sigma2: list[float] = field(default_factory=lambda: [0.2, 1.5])
    betag_range2: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range2: list[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob2: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: list[float] = field(default_factory=lambda: [0.3, 1.2])
    gaussian_noise_prob2: float = 0.5
    noise_range2: list[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale_range2: list[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_range2: list[int] = field(default_factory=lambda: [30, 95])
    final_sinc_prob: float = 0.8

    def __post_init__(self) -> None:
        if len(self.kernel_size_range) != 2:
            raise ValueError(f"kernel_size_range must be [low, high], got {self.kernel_size_range}")
        lo, hi = self.kernel_size_range
        if lo % 2 != 1 or hi % 2 != 1 or not 1 <= lo <= hi:
            raise ValueError(f"kernel_size_range must be odd [low, high], got {[lo, hi]}")
        for name in ("kernel_list", "kernel_list2"):
            kinds = getattr(self, name)
            if not kinds or len(set(kinds)) != len(kinds):
                raise ValueError(f"{name} must list distinct kernel types, got {kinds!r}")
            for kind in kinds:
                if kind not in KERNEL_TYPES:
                    raise ValueError(f"unknown kernel type {kind!r} in {name} ({KERNEL_TYPES})")
        for name in ("kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"):
            probs = getattr(self, name)
            kernels = {"kernel_prob": "kernel_list", "kernel_prob2": "kernel_list2"}.get(name)
            want = len(getattr(self, kernels)) if kernels else 3
            if len(probs) != want or min(probs) < 0 or sum(probs) <= 0:
                what = f"one per {kernels} entry" if kernels else "up, down, keep"
                raise ValueError(
                    f"{name} must be {want} non-negative weights ({what}), got {probs!r}"
                )
        for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            for key in (name, f"{name}2"):
                _probability(key, getattr(self, key))
        _probability("second_blur_prob", self.second_blur_prob)
        _probability("final_sinc_prob", self.final_sinc_prob)
        lows = {"blur_sigma": 1e-6, "resize_range": 1e-6, "noise_range": 0.0,
                "poisson_scale_range": 0.0, "betag_range": 1e-6, "betap_range": 1e-6}  # fmt: skip
        for name in (*lows, "jpeg_range"):
            for key in (name, f"{name}2"):
                _pair(key, getattr(self, key), lows.get(name))
        for name in ("resize_range", "betag_range", "betap_range"):
            for key in (name, f"{name}2"):
                _around_one(key, getattr(self, key))
        for name in ("jpeg_range", "jpeg_range2"):
            jpeg = getattr(self, name)
            if not 1 <= jpeg[0] <= jpeg[1] <= 100:
                raise ValueError(f"{name}: JPEG quality must lie in [1, 100], got {jpeg!r}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {value!r}")


@dataclass
class DegradationConfig:
    """Which LR generator :func:`make_lr` runs, and its settings."""

    # bicubic: MATLAB bicubic with antialiasing (the field's standard; the default);
    # box: each LR pixel is the mean of its scale x scale HR block (area downsampling; nothing
    # crosses a block, which leak-free benchmarks need); realesrgan: the second-order model.
    kind: Literal["bicubic", "box", "realesrgan"] = "bicubic"
    realesrgan: RealESRGANConfig = field(default_factory=RealESRGANConfig)


def derive_seed(global_seed: int, key: str, scale: int) -> int:
    """Stable 63-bit per-sample seed: sha256 of ``[global_seed, key, scale]`` (process-proof)."""
    payload = json.dumps([int(global_seed), str(key), int(scale)], separators=(",", ":"))
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_lr(
    hr: np.ndarray, scale: int, cfg: DegradationConfig, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Synthesise the uint8 LR (H/scale, W/scale, 3) of an HxWx3 uint8 RGB ``hr``.

    Returns the LR and a JSON-serialisable record of every parameter used. Deterministic in
    ``(hr, scale, cfg, seed)``: all randomness comes from one ``PCG64(seed)`` generator.
    """
    hr = np.asarray(hr)
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"hr must be an HxWx3 uint8 array, got {hr.dtype} {hr.shape}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    scale = int(scale)
    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"HR size {hr.shape[:2]} is not divisible by scale {scale}")
    record: dict[str, Any] = {"kind": cfg.kind, "seed": int(seed), "scale": scale}
    if cfg.kind == "bicubic":
        return imresize(hr, 1.0 / scale), record
    if cfg.kind == "box":
        return box_downsample(hr, scale), record
    if cfg.kind == "realesrgan":
        from clipsr import realesrgan

        rng = np.random.Generator(np.random.PCG64(int(seed)))
        lr, plan = realesrgan.degrade(hr, scale, cfg.realesrgan, rng)
        return lr, {**record, **plan}
    raise ValueError(f"unknown degradation kind {cfg.kind!r}")
