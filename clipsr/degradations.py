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

The Real-ESRGAN-style second-order degradation pipeline (blur, noise, JPEG, resize, twice)
will live here too; it is a later issue and is deliberately not implemented yet.
"""

from __future__ import annotations

import math
import numbers
import operator
from functools import lru_cache

import numpy as np
import torch

__all__ = ["imresize", "imresize_torch", "resize_weights"]

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
