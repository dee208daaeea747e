"""Tests for the MATLAB-compatible bicubic resize in clipsr.degradations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from clipsr.degradations import imresize, imresize_torch


def _keys(t: float) -> float:
    """Keys cubic kernel, a = -0.5, written out from the formula."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _mirror(i: int, n: int) -> int:
    """0-based symmetric (edge-repeating) reflection of any integer index into [0, n)."""
    while not 0 <= i < n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def _resize_1d(signal: list[float], scale: float) -> list[float]:
    """Slow per-pixel reference: MATLAB bicubic resize of a 1-D signal."""
    n = len(signal)
    out_len = math.ceil(n * scale)
    k = scale if scale < 1 else 1.0  # antialiasing kernel stretch
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
        reach = 2 / k
        acc = norm = 0.0
        for j in range(math.floor(u - reach) - 1, math.ceil(u + reach) + 2):
            w = k * _keys((u - j) * k)
            acc += w * signal[_mirror(j - 1, n)]
            norm += w
        out.append(acc / norm)
    return out


def test_hand_computed_upscale_weights() -> None:
    # x2 upscale: output pixel x (1-based) sits at u = x/2 + 0.25. For the impulse at input 3
    # the distances 3 - u are 0.75, 0.25, -0.25, -0.75 for x = 4..7, so the output is
    # cubic(0.75) = 0.2265625 and cubic(0.25) = 0.8671875 there (rows already sum to 1).
    impulse = np.array([[0.0, 0.0, 1.0, 0.0]])
    out = imresize(impulse, output_shape=(1, 8))[0]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[3:7], [0.2265625, 0.8671875, 0.8671875, 0.2265625], atol=1e-12)
    # x = 1: u = 0.75, taps at inputs 3 (d=-2.25, zero) ... nothing reaches input 3 except
    # d = -2.25 -> weight 0.
    assert out[0] == pytest.approx(0.0, abs=1e-12)
    # x = 8: u = 4.25; input 3 contributes directly (d=1.25 -> -0.0703125) and through the
    # mirror of input 6 (d=-1.75 -> -0.0234375).
    assert out[7] == pytest.approx(-0.0703125 - 0.0234375, abs=1e-12)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 2.0, 3.0, 4.0, 0.7])
def test_matches_independent_1d_reference(scale: float) -> None:
    rng = np.random.default_rng(1)
    signal = rng.uniform(-1, 1, size=23)
    expected = _resize_1d(signal.tolist(), scale)
    got_rows = imresize(signal[None, :], scale=scale)  # resize along W
    got_cols = imresize(signal[:, None], scale=scale)  # resize along H
    assert got_rows.shape == (math.ceil(scale), len(expected))
    np.testing.assert_allclose(got_rows, np.tile(expected, (len(got_rows), 1)), atol=1e-12)
    np.testing.assert_allclose(got_cols[:, 0], expected, atol=1e-12)


def test_ramp_downscale_exact_interior_values() -> None:
    # Integer downscale factors put u on a (half-)integer grid, so the symmetric kernel
    # reproduces a linear ramp exactly away from the borders: out = u - 1 (0-based ramp).
    ramp = np.tile(np.arange(32, dtype=np.float64)[:, None], (1, 3))
    out = imresize(ramp, scale=0.25)
    assert out.shape == (8, 1)
    np.testing.assert_allclose(out[2:6, 0], [9.5, 13.5, 17.5, 21.5], atol=1e-12)
    assert out.min() >= 0 and out.max() <= 31
    np.testing.assert_allclose(out[:, 0], _resize_1d(list(range(32)), 0.25), atol=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0, 200.0, -0.6])
@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0, 4.0])
def test_constant_image_stays_constant(value: float, scale: float) -> None:
    img = np.full((20, 28, 3), value, dtype=np.float32)
    out = imresize(img, scale=scale)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, value, atol=1e-5)


@pytest.mark.parametrize(
    ("scale", "expected"), [(1 / 4, (64, 48)), (1 / 8, (32, 24)), (1 / 16, (16, 12))]
)
def test_downscale_shapes(scale: float, expected: tuple[int, int]) -> None:
    img = np.random.default_rng(0).random((256, 192, 3)).astype(np.float32)
    assert imresize(img, scale=scale).shape == (*expected, 3)
    assert imresize(img[..., 0], scale=scale).shape == expected


def test_upscale_shape_and_odd_sizes() -> None:
    img = np.zeros((17, 9), dtype=np.float32)
    assert imresize(img, scale=4).shape == (68, 36)
    assert imresize(img, scale=0.25).shape == (5, 3)  # MATLAB: ceil(17/4), ceil(9/4)
    assert imresize(np.zeros((768, 30)), scale=1 / 3).shape == (256, 10)
    assert imresize(img, output_shape=(5, 40)).shape == (5, 40)


def test_scale_one_is_identity() -> None:
    img = data.astronaut()[:64, :80].astype(np.float32) / 255
    np.testing.assert_array_equal(imresize(img, scale=1.0), img)
    u8 = data.astronaut()[:64, :80]
    np.testing.assert_array_equal(imresize(u8, scale=1), u8)


def test_uint8_in_uint8_out_rounded_and_clipped() -> None:
    img = data.chelsea()
    out = imresize(img, scale=0.25)
    assert out.dtype == np.uint8
    ref = imresize(img.astype(np.float64), scale=0.25)
    np.testing.assert_array_equal(out, np.clip(np.floor(ref + 0.5), 0, 255).astype(np.uint8))
    # Sharp edges overshoot when upscaling; uint8 output must clip instead of wrapping.
    edge = np.zeros((8, 8), dtype=np.uint8)
    edge[:, 4:] = 255
    up = imresize(edge, scale=4)
    assert up.dtype == np.uint8
    assert up[:, :12].max() == 0 and up[:, 20:].min() == 255
    assert imresize(edge.astype(np.float64), scale=4).max() > 255


def test_dtype_preserved() -> None:
    img = np.random.default_rng(0).random((16, 16)).astype(np.float16)
    assert imresize(img, scale=0.5).dtype == np.float16
    assert imresize(img.astype(np.float64), scale=0.5).dtype == np.float64


@pytest.mark.parametrize("scale", [0.25, 0.125, 0.5, 2.0, 4.0])
def test_torch_matches_numpy(scale: float) -> None:
    img = data.astronaut()[:128, :96].astype(np.float32) / 127.5 - 1
    ref = imresize(img, scale=scale)
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    out = imresize_torch(chw, scale=scale)
    assert out.dtype == torch.float32 and out.shape == (3, *ref.shape[:2])
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-5)
    batched = imresize_torch(torch.stack([chw, -chw]), scale=scale)
    assert batched.shape == (2, 3, *ref.shape[:2])
    torch.testing.assert_close(batched[0], out)
    torch.testing.assert_close(batched[1], -out)


def test_torch_output_shape_and_antialiasing_flag() -> None:
    x = torch.rand(1, 3, 40, 30, dtype=torch.float64)
    out = imresize_torch(x, output_shape=(10, 15), antialiasing=False)
    ref = imresize(x[0].permute(1, 2, 0).numpy(), output_shape=(10, 15), antialiasing=False)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-12)
    aa = imresize(x[0].permute(1, 2, 0).numpy(), output_shape=(10, 15))
    assert np.abs(aa - ref).max() > 1e-3  # the flag really changes the kernel


def test_antialiasing_suppresses_aliasing() -> None:
    checker = (np.indices((66, 66)).sum(axis=0) % 2).astype(np.float64)  # Nyquist pattern
    # x1/3 without antialiasing samples every third pixel exactly: full-contrast aliasing.
    aliased = imresize(checker, scale=1 / 3, antialiasing=False)
    np.testing.assert_array_equal(aliased[2:-2, 2:-2], checker[7:-7:3, 7:-7:3])
    smooth = imresize(checker, scale=1 / 3)
    assert np.ptp(smooth[2:-2, 2:-2]) < 1e-3
    np.testing.assert_allclose(smooth[2:-2, 2:-2], 0.5, atol=1e-3)
    # x1/4 puts the taps symmetrically between pixels: exactly 0.5 inside.
    np.testing.assert_allclose(imresize(checker, scale=0.25)[2:-2, 2:-2], 0.5, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"scale": 2, "output_shape": (4, 4)}, "exactly one"),
        ({"scale": 0}, "positive"),
        ({"scale": -0.5}, "positive"),
        ({"scale": float("nan")}, "positive"),
        ({"output_shape": (0, 4)}, "positive"),
        ({"output_shape": (4,)}, "height, width"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    img = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        imresize(img, **kwargs)
    with pytest.raises(ValueError, match=match):
        imresize_torch(torch.zeros(1, 8, 8), **kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="HxW"):
        imresize(np.zeros((2, 8, 8, 3), dtype=np.float32), scale=0.5)
    with pytest.raises(ValueError, match="positive height and width"):
        imresize(np.zeros((0, 8), dtype=np.float32), scale=0.5)
    with pytest.raises(ValueError, match=r"\(C,H,W\)"):
        imresize_torch(torch.zeros(8, 8), scale=0.5)
    with pytest.raises(TypeError, match="uint8"):
        imresize(np.zeros((8, 8), dtype=np.int32), scale=0.5)
    with pytest.raises(TypeError, match="floating point"):
        imresize_torch(torch.zeros(1, 8, 8, dtype=torch.uint8), scale=0.5)
