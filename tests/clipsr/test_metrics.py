"""Tests for clipsr.metrics: PSNR/SSIM vs scikit-image, Y channel, LPIPS loading, helpers."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torchvision.models import vgg16

from clipsr.degradations import imresize
from clipsr.metrics import (
    LPIPS,
    bicubic_upscale,
    clip_score,
    psnr,
    rgb_to_y,
    ssim,
    tensor_to_uint8,
)

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
# SSIM: same Gaussian window (11x11, sigma 1.5) and same valid region (5 px off each side)
# as skimage, so the only difference is float summation order; measured ~1e-14.
SSIM_TOL = 1e-10


def _degraded(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bicubic x4 down/up round trip plus noise: a realistic SR-quality test image."""
    blurry = imresize(imresize(img, scale=0.25), output_shape=img.shape[:2])
    noise = np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(blurry.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_ssim_match_skimage(name: str) -> None:
    ref = getattr(data, name)()
    test = _degraded(ref)
    expected_psnr = peak_signal_noise_ratio(ref, test, data_range=255)
    assert psnr(ref, test) == pytest.approx(expected_psnr, abs=1e-6)
    expected_ssim = structural_similarity(
        ref,
        test,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert 0.3 < expected_ssim < 0.99
    assert ssim(ref, test) == pytest.approx(expected_ssim, abs=SSIM_TOL)


def test_grayscale_and_y_channel_match_skimage() -> None:
    ref, test = data.camera(), _degraded(data.camera())
    assert psnr(ref, test) == pytest.approx(peak_signal_noise_ratio(ref, test, data_range=255))
    kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    assert ssim(ref, test) == pytest.approx(
        structural_similarity(ref, test, data_range=255, **kw), abs=SSIM_TOL
    )
    rgb, rgb_test = data.astronaut(), _degraded(data.astronaut())
    y, y_test = rgb_to_y(rgb), rgb_to_y(rgb_test)
    assert psnr(rgb, rgb_test, crop_border=4, test_y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(y[4:-4, 4:-4], y_test[4:-4, 4:-4], data_range=255), abs=1e-9
    )
    assert ssim(rgb, rgb_test, crop_border=4, test_y_channel=True) == pytest.approx(
        structural_similarity(y[4:-4, 4:-4], y_test[4:-4, 4:-4], data_range=255, **kw),
        abs=SSIM_TOL,
    )


def test_psnr_known_values() -> None:
    img = data.chelsea()
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    mid = np.clip(img, 1, 254)
    shifted = mid + np.where(np.random.default_rng(0).random(img.shape) < 0.5, 1, -1)
    assert psnr(mid, shifted.astype(np.uint8)) == pytest.approx(20 * math.log10(255), abs=1e-9)
    # MSE of 16 -> 10 log10(255^2 / 16)
    assert psnr(np.full((8, 8), 100, np.uint8), np.full((8, 8), 104, np.uint8)) == pytest.approx(
        10 * math.log10(255**2 / 16), abs=1e-12
    )


def test_crop_border_ignores_border_differences() -> None:
    img = data.astronaut()[:64, :64]
    other = img.copy()
    other[:4] = 255 - other[:4]
    other[:, -4:] = 0
    assert psnr(img, other) < 20
    assert ssim(img, other) < 0.95
    assert psnr(img, other, crop_border=4) == math.inf
    assert ssim(img, other, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    assert psnr(img, other, crop_border=4, test_y_channel=True) == math.inf


def test_rgb_to_y_matlab_values() -> None:
    pixels = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0]]], np.uint8)
    y = rgb_to_y(pixels)
    assert y.dtype == np.float64
    np.testing.assert_allclose(
        y[0], [235.0, 16.0, 16 + 65.481, 16 + 128.553], atol=1e-9
    )  # MATLAB rgb2ycbcr: white 235, black 16, red 81.481, green 144.553
    blue = rgb_to_y(np.array([[[0, 0, 255]]], np.uint8))
    assert blue[0, 0] == pytest.approx(16 + 24.966)


def test_metric_argument_errors() -> None:
    img = data.chelsea()
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(img, img[:-1])
    with pytest.raises(ValueError, match="uint8"):
        ssim(img, img.astype(np.float32))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, img, crop_border=200)
    with pytest.raises(ValueError, match="HxWx3"):
        rgb_to_y(img[..., 0])


def test_tensor_to_uint8_rounds_and_clamps() -> None:
    value = 127.6 / 127.5 - 1  # maps to 127.6 -> rounds to 128 (truncation would give 127)
    x = torch.tensor([value, -1.0, 1.0, -3.0, 7.0, 0.0]).view(3, 1, 2)
    out = tensor_to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [128, 255, 255])  # 127.6 -> 128; 1 and 7 -> 255
    np.testing.assert_array_equal(out[0, 1], [0, 0, 128])  # -1 and -3 -> 0; 0 -> 127.5 -> 128
    batch = tensor_to_uint8(torch.zeros(2, 3, 4, 5))
    assert batch.shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match="C,H,W"):
        tensor_to_uint8(torch.zeros(4, 5))


def test_bicubic_upscale() -> None:
    lr = imresize(data.astronaut(), scale=0.25)
    sr = bicubic_upscale(lr, 4)
    assert sr.dtype == np.uint8 and sr.shape == (512, 512, 3)
    np.testing.assert_array_equal(sr, imresize(lr, scale=4))
    assert 24 < psnr(data.astronaut(), sr, crop_border=4) < 30
    with pytest.raises(ValueError, match="positive int"):
        bicubic_upscale(lr, 0)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_upscale(lr.astype(np.float32), 4)


def test_clip_score() -> None:
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(clip_score(img, txt).numpy(), [100.0, 100 / math.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="equal shape"):
        clip_score(img, txt[:2])


# ----------------------------------------------------------------------------- LPIPS

_LIN_CHANNELS = (64, 128, 256, 512, 512)


def _write(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("lpips")
    backbone = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    backbone["classifier.0.weight"] = torch.randn(4, 4)  # ignored by LPIPS
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(_LIN_CHANNELS)}
    only_first = {k: torch.zeros_like(v) for k, v in linear.items()}
    only_first["lin0.model.1.weight"] = torch.ones(1, 64, 1, 1)
    return {
        "vgg_pth": _write(backbone, tmp / "vgg16.pth"),
        "vgg_st": _write(backbone, tmp / "vgg16.safetensors"),
        "lin_pth": _write(linear, tmp / "vgg.pth"),
        "lin_st": _write(linear, tmp / "vgg.safetensors"),
        "lin_first": _write(only_first, tmp / "first.pth"),
        "wrong": _write({"foo.weight": torch.zeros(3)}, tmp / "wrong_keys.safetensors"),
    }


@pytest.fixture(scope="module")
def lpips_model(lpips_files: dict[str, Path]) -> LPIPS:
    return LPIPS(lpips_files["vgg_pth"], lpips_files["lin_pth"])


def _pair(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(batch, 3, 32, 32, generator=gen)).clamp(-1, 1)
    return x, y


def test_lpips_basic_properties(lpips_model: LPIPS) -> None:
    assert not lpips_model.training
    assert all(not p.requires_grad for p in lpips_model.parameters())
    lpips_model.train()
    assert not lpips_model.training
    x, y = _pair()
    with torch.no_grad():
        same = lpips_model(x, x)
        d_xy, d_yx = lpips_model(x, y), lpips_model(y, x)
    assert same.shape == (2,)
    torch.testing.assert_close(same, torch.zeros(2), atol=0, rtol=0)
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)
    single = lpips_model(x[:1], y[:1])
    torch.testing.assert_close(single, d_xy[:1], rtol=1e-5, atol=1e-7)


def test_lpips_pth_and_safetensors_agree(lpips_files: dict[str, Path], lpips_model: LPIPS) -> None:
    x, y = _pair(1)
    st_model = LPIPS(lpips_files["vgg_st"], lpips_files["lin_st"])
    torch.testing.assert_close(st_model(x, y), lpips_model(x, y), atol=0, rtol=0)


def test_lpips_value_matches_manual_first_layer(lpips_files: dict[str, Path]) -> None:
    # With lin0 = ones and lin1..4 = 0, LPIPS is the spatial mean of the channel sum of
    # squared differences of unit-normalised relu1_2 features of the scaled inputs.
    model = LPIPS(lpips_files["vgg_pth"], lpips_files["lin_first"])
    x, y = _pair(2)
    features = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
    )
    features.append(nn.ReLU())
    state = torch.load(lpips_files["vgg_pth"], weights_only=True)
    features.load_state_dict({k: state[f"features.{k}"] for k in features.state_dict()})
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        fx, fy = features((x - shift) / scale), features((y - shift) / scale)
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected = (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
        got = model(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert (got > 0).all()


def test_lpips_bad_files(lpips_files: dict[str, Path], tmp_path: Path) -> None:
    wrong = lpips_files["wrong"]
    with pytest.raises(ValueError, match=r"wrong_keys\.safetensors.*features\.N"):
        LPIPS(wrong, lpips_files["lin_pth"])
    with pytest.raises(ValueError, match=r"wrong_keys\.safetensors.*lin0\.model\.1\.weight"):
        LPIPS(lpips_files["vgg_pth"], wrong)
    with pytest.raises(FileNotFoundError, match="missing_vgg.pth"):
        LPIPS(tmp_path / "missing_vgg.pth", lpips_files["lin_pth"])
    bad_shape = {f"lin{i}.model.1.weight": torch.rand(1, 8, 1, 1) for i in range(5)}
    with pytest.raises(ValueError, match=r"bad_shape\.pth.*\(1, 64, 1, 1\)"):
        LPIPS(lpips_files["vgg_pth"], _write(bad_shape, tmp_path / "bad_shape.pth"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"lin0.model.1.weight": argparse.Namespace(x=1)}, pickled)  # not weights-only
    with pytest.raises(ValueError, match="pickled.pth"):
        LPIPS(lpips_files["vgg_pth"], pickled)
    x, _ = _pair()
    model = LPIPS(lpips_files["vgg_st"], lpips_files["lin_st"])
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        model(x, x[:, :2])
