"""Tests for make_lr / derive_seed / the seedable Real-ESRGAN pipeline (clipsr.realesrgan)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from clipsr import realesrgan
from clipsr.degradations import (
    KERNEL_TYPES,
    DegradationConfig,
    RealESRGANConfig,
    derive_seed,
    imresize,
    make_lr,
)

REPO = Path(__file__).resolve().parents[2]
REAL = DegradationConfig(kind="realesrgan")


@pytest.fixture(scope="module")
def hr256() -> np.ndarray:
    """A real photograph, 256x256 uint8 RGB (astronaut, every second pixel)."""
    return np.ascontiguousarray(data.astronaut()[::2, ::2])


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


# ------------------------------------------------------------------ derive_seed


def test_derive_seed_is_a_stable_hard_coded_value() -> None:
    # sha256('[0,"000000001",4]')[:8] big-endian >> 1; must never change between releases.
    assert derive_seed(0, "000000001", 4) == 8488941049354513567
    assert derive_seed(1234, "birds/001.Black_footed_Albatross_0046_18", 8) == 8575986540226842688


def test_derive_seed_is_63_bit_and_distinct() -> None:
    seeds = {
        derive_seed(g, k, s) for g in (0, 1) for k in ("a", "b", "000000001") for s in (4, 8, 16)
    }
    assert len(seeds) == 18
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, "a", 4) != derive_seed(0, "a", 8)
    assert derive_seed(0, "a", 4) != derive_seed(0, "b", 4)
    assert derive_seed(0, "a", 4) != derive_seed(1, "a", 4)
    # no ambiguity from naive concatenation ("1" + "23" vs "12" + "3")
    assert derive_seed(1, "23", 4) != derive_seed(12, "3", 4)


# ------------------------------------------------------------------ bicubic


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
def test_bicubic_make_lr_is_matlab_imresize(hr256: np.ndarray, scale: int) -> None:
    lr, params = make_lr(hr256, scale, DegradationConfig(), seed=5)
    assert lr.dtype == np.uint8 and lr.shape == (256 // scale, 256 // scale, 3)
    np.testing.assert_array_equal(lr, imresize(hr256, 1 / scale))
    assert params == {"kind": "bicubic", "seed": 5, "scale": scale}


def test_make_lr_validates_input(hr256: np.ndarray) -> None:
    with pytest.raises(ValueError, match="divisible"):
        make_lr(hr256[:255], 4, DegradationConfig(), 0)
    with pytest.raises(ValueError, match="uint8"):
        make_lr(hr256.astype(np.float32), 4, DegradationConfig(), 0)
    with pytest.raises(ValueError, match="scale"):
        make_lr(hr256, 0, DegradationConfig(), 0)


def test_bicubic_path_does_not_import_albumentations() -> None:
    code = (
        "import sys, numpy as np\n"
        "from clipsr.degradations import make_lr, DegradationConfig\n"
        "make_lr(np.zeros((64, 64, 3), np.uint8), 4, DegradationConfig(), 0)\n"
        "print('albumentations' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ config


def test_config_defaults_are_realesrgan_x4plus() -> None:
    cfg = RealESRGANConfig()
    assert list(range(cfg.kernel_size_range[0], cfg.kernel_size_range[1] + 1, 2)) == [
        7,
        9,
        11,
        13,
        15,
        17,
        19,
        21,
    ]
    assert cfg.kernel_list == list(KERNEL_TYPES)
    assert cfg.kernel_prob == [0.45, 0.25, 0.12, 0.03, 0.12, 0.03] == cfg.kernel_prob2
    assert (cfg.sinc_prob, cfg.sinc_prob2, cfg.final_sinc_prob) == (0.1, 0.1, 0.8)
    assert (cfg.blur_sigma, cfg.blur_sigma2) == ([0.2, 3.0], [0.2, 1.5])
    assert (cfg.betag_range, cfg.betap_range) == ([0.5, 4.0], [1.0, 2.0])
    assert (cfg.resize_prob, cfg.resize_range) == ([0.2, 0.7, 0.1], [0.15, 1.5])
    assert (cfg.resize_prob2, cfg.resize_range2) == ([0.3, 0.4, 0.3], [0.3, 1.2])
    assert (cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range) == (
        0.5,
        [1.0, 30.0],
        [0.05, 3.0],
    )
    assert (cfg.noise_range2, cfg.poisson_scale_range2) == ([1.0, 25.0], [0.05, 2.5])
    assert (cfg.gray_noise_prob, cfg.gray_noise_prob2) == (0.4, 0.4)
    assert cfg.jpeg_range == [30, 95] == cfg.jpeg_range2
    assert cfg.second_blur_prob == 0.8
    assert DegradationConfig().kind == "bicubic"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_prob": [0.5, 0.5]},
        {"kernel_size_range": [6, 21]},
        {"kernel_list": ["iso", "aniso", "box", "a", "b", "c"]},
        {"blur_sigma": [3.0, 0.2]},
        {"jpeg_range2": [30, 101]},
        {"resize_prob": [0.5, 0.5]},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RealESRGANConfig(**kwargs)


# ------------------------------------------------------------------ kernels


def _reference_gaussian(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """Anisotropic Gaussian written point by point: rotate coordinates, then separate axes."""
    half = size // 2
    out = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            x, y = col - half, row - half
            u = math.cos(theta) * x + math.sin(theta) * y
            v = -math.sin(theta) * x + math.cos(theta) * y
            out[row, col] = math.exp(-0.5 * (u * u / sx**2 + v * v / sy**2))
    return out / out.sum()


def test_gaussian_kernels_match_the_formula() -> None:
    iso = realesrgan.mixed_kernel("iso", 11, 1.7, 99.0, 1.0, None)
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.7) ** 2)
    np.testing.assert_allclose(iso, np.outer(g, g) / np.outer(g, g).sum(), atol=1e-12)
    aniso = realesrgan.mixed_kernel("aniso", 15, 3.0, 0.8, 0.6, None)
    np.testing.assert_allclose(aniso, _reference_gaussian(15, 3.0, 0.8, 0.6), atol=1e-12)
    assert not np.allclose(aniso, aniso.T)  # rotated, so not symmetric about the diagonal


def test_generalized_and_plateau_kernels_match_the_formula() -> None:
    half = 4
    ax = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(ax, ax)
    quad = (xx**2 + yy**2) / 1.5**2
    gen = np.exp(-0.5 * quad**2.5)
    plat = 1.0 / (quad**1.5 + 1.0)
    np.testing.assert_allclose(
        realesrgan.mixed_kernel("generalized_iso", 9, 1.5, 0, 0, 2.5), gen / gen.sum(), atol=1e-12
    )
    np.testing.assert_allclose(
        realesrgan.mixed_kernel("plateau_iso", 9, 1.5, 0, 0, 1.5), plat / plat.sum(), atol=1e-12
    )


def test_sinc_kernel() -> None:
    k = realesrgan.sinc_kernel(math.pi / 2, 13)
    assert k.shape == (13, 13)
    assert abs(k.sum() - 1.0) < 1e-12
    assert np.all(np.isfinite(k)) and k.argmax() == 13 * 6 + 6
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    assert k.min() < 0  # a real sinc rings


def test_sampled_kernels_are_odd_normalised_and_follow_the_mixture() -> None:
    rng = np.random.Generator(np.random.PCG64(7))
    cfg = RealESRGANConfig()
    counts = dict.fromkeys((*KERNEL_TYPES, "sinc"), 0)
    betas: list[float] = []
    n = 3000
    for _ in range(n):
        plan = realesrgan.sample_plan(rng, cfg, (256, 256), 4)
        params = plan["stage1"]["blur"]
        counts[params["type"]] += 1
        kernel = realesrgan.kernel_from_params(params)
        size = params["size"]
        assert kernel.shape == (size, size) and size % 2 == 1 and 7 <= size <= 21
        assert abs(kernel.sum() - 1.0) < 1e-9
        assert np.isfinite(kernel).all()
        if params["type"] != "sinc":
            assert kernel.min() >= 0
            assert cfg.blur_sigma[0] <= params["sigma_x"] <= cfg.blur_sigma[1]
        if params["type"].startswith("generalized"):
            assert cfg.betag_range[0] <= params["beta"] <= cfg.betag_range[1]
            betas.append(params["beta"])
    assert abs(counts["sinc"] / n - 0.1) < 0.025
    # BasicSR draws beta below or above 1 with probability 1/2 each
    assert abs(np.mean(np.array(betas) < 1.0) - 0.5) < 0.1
    non_sinc = n - counts["sinc"]
    for kind, prob in zip(KERNEL_TYPES, cfg.kernel_prob):
        assert abs(counts[kind] / non_sinc - prob) < 0.03, (kind, counts)


# ------------------------------------------------------------------ realesrgan make_lr


def test_realesrgan_same_seed_same_bytes(hr256: np.ndarray) -> None:
    np.random.seed(0)
    lr1, p1 = make_lr(hr256, 4, REAL, seed=123)
    np.random.seed(99)  # the global RNG must play no part
    lr2, p2 = make_lr(hr256, 4, REAL, seed=123)
    assert _sha(lr1) == _sha(lr2)
    assert p1 == p2


def test_realesrgan_different_seeds_differ(hr256: np.ndarray) -> None:
    outs = {_sha(make_lr(hr256, 4, REAL, seed=s)[0]) for s in range(6)}
    assert len(outs) == 6


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


def test_realesrgan_is_identical_in_a_separate_process(hr256: np.ndarray) -> None:
    seeds = [derive_seed(0, f"{i:09d}", 4) for i in range(4)]
    expected = [_sha(make_lr(hr256, 4, REAL, seed=s)[0]) for s in seeds]
    code = (
        "import hashlib, sys, numpy as np\n"
        "from skimage import data\n"
        "from clipsr.degradations import make_lr, DegradationConfig, derive_seed\n"
        "hr = np.ascontiguousarray(data.astronaut()[::2, ::2])\n"
        "cfg = DegradationConfig(kind='realesrgan')\n"
        "for i in reversed(range(4)):\n"  # other order, other process
        "    lr, _ = make_lr(hr, 4, cfg, derive_seed(0, f'{i:09d}', 4))\n"
        "    print(hashlib.sha256(np.ascontiguousarray(lr).tobytes()).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == list(reversed(expected))


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_realesrgan_output_shapes(hr256: np.ndarray, scale: int) -> None:
    for seed in range(8):
        lr, params = make_lr(hr256, scale, REAL, seed=seed)
        assert lr.dtype == np.uint8 and lr.shape == (256 // scale, 256 // scale, 3)
        assert params["final"]["size"] == [256 // scale, 256 // scale]
        target = 256 // scale
        factor = params["stage2"]["resize"]["scale"]
        assert params["stage2"]["resize"]["size"] == [max(1, int(target * factor))] * 2
        factor1 = params["stage1"]["resize"]["scale"]
        assert params["stage1"]["resize"]["size"] == [max(1, int(256 * factor1))] * 2


def test_realesrgan_non_square_hr() -> None:
    hr = np.ascontiguousarray(data.astronaut()[:256, :384])
    lr, params = make_lr(hr, 8, REAL, seed=3)
    assert lr.shape == (32, 48, 3)
    assert params["final"]["size"] == [32, 48]


def test_realesrgan_params_record_every_choice(hr256: np.ndarray) -> None:
    kinds, noises, orders = set(), set(), set()
    for seed in range(40):
        _, params = make_lr(hr256, 4, REAL, seed=seed)
        assert json.loads(json.dumps(params)) == params  # JSON round trip, no numpy scalars
        assert params["kind"] == "realesrgan" and params["seed"] == seed
        s1, s2, fin = params["stage1"], params["stage2"], params["final"]
        for blur in (s1["blur"], s2["blur"], fin["sinc"]):
            if blur is None:
                continue
            assert blur["type"] in (*KERNEL_TYPES, "sinc") and blur["size"] % 2 == 1
            if blur["type"] == "sinc":
                assert math.pi / 5 <= blur["omega_c"] <= math.pi
            else:
                assert {"sigma_x", "sigma_y", "angle", "beta"} <= set(blur)
            kinds.add(blur["type"])
        for noise in (s1["noise"], s2["noise"]):
            assert noise["type"] in ("gaussian", "poisson") and isinstance(noise["gray"], bool)
            assert ("sigma" if noise["type"] == "gaussian" else "scale") in noise
            noises.add((noise["type"], noise["gray"]))
        for stage in (s1, s2):
            assert stage["resize"]["direction"] in ("up", "down", "keep")
            assert stage["resize"]["mode"] in ("area", "bilinear", "bicubic")
        assert 30 <= s1["jpeg_quality"] <= 95 and 30 <= fin["jpeg_quality"] <= 95
        assert fin["order"] in ("resize_sinc_jpeg", "jpeg_resize_sinc")
        orders.add(fin["order"])
    assert orders == {"resize_sinc_jpeg", "jpeg_resize_sinc"}
    assert len(noises) == 4 and len(kinds) >= 3


def test_realesrgan_actually_degrades(hr256: np.ndarray) -> None:
    bicubic = make_lr(hr256, 4, DegradationConfig(), 0)[0].astype(np.float64)
    diffs = [np.abs(make_lr(hr256, 4, REAL, s)[0] - bicubic).mean() for s in range(5)]
    assert min(diffs) > 2.0


def _plain_plan(sigma: float) -> dict:
    keep = {"direction": "keep", "scale": 1.0, "mode": "bicubic", "size": [256, 256]}
    return {
        "stage1": {
            "blur": None,
            "resize": keep,
            "noise": {"type": "gaussian", "sigma": sigma, "gray": False},
            "jpeg_quality": 100,
        },
        "stage2": {
            "blur": None,
            "resize": {**keep, "mode": "area", "size": [64, 64]},  # stage 2 is target-relative
            "noise": {"type": "gaussian", "sigma": 0.0, "gray": False},
        },
        "final": {
            "order": "resize_sinc_jpeg",
            "resize_mode": "area",
            "size": [64, 64],
            "sinc": None,
            "jpeg_quality": 100,
        },
    }


def test_noise_stage_changes_pixels() -> None:
    flat = np.full((256, 256, 3), 128, np.uint8)
    clean = realesrgan.apply_plan(flat, _plain_plan(0.0), np.random.Generator(np.random.PCG64(0)))
    noisy = realesrgan.apply_plan(flat, _plain_plan(30.0), np.random.Generator(np.random.PCG64(0)))
    assert np.abs(clean.astype(int) - 128).max() <= 1
    # 30/255 noise averaged over 4x4 area blocks: std ~ 30/4 = 7.5 grey levels
    assert 5.0 < noisy.astype(np.float64).std() < 10.0


def test_jpeg_step_is_a_true_rgb_jpeg_round_trip(hr256: np.ndarray) -> None:
    img = hr256.astype(np.float32) / 255.0
    out = realesrgan._jpeg(img, 40)
    ok, buf = cv2.imencode(".jpg", hr256[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
    direct = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), direct)
    assert np.abs(direct.astype(int) - hr256).mean() > 1.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [  # each made the sampler raise on some samples, or was accepted and meant nothing
        ({"resize_range": [0.3, 0.9]}, "resize_range must hold 1"),
        ({"resize_range2": [1.1, 1.2]}, "resize_range2 must hold 1"),
        ({"betap_range": [1.5, 2.0]}, "betap_range must hold 1"),
        ({"betag_range2": [0.2, 0.9]}, "betag_range2 must hold 1"),
        ({"sinc_prob": 1.5}, "sinc_prob is a probability"),
        ({"gray_noise_prob": -1.0}, "gray_noise_prob is a probability"),
        ({"second_blur_prob": 2.0}, "second_blur_prob is a probability"),
        ({"final_sinc_prob": -0.1}, "final_sinc_prob is a probability"),
        ({"blur_sigma2": [0.0, 1.0]}, "blur_sigma2 must not go below"),
        ({"noise_range": [-1.0, 3.0]}, "noise_range must not go below 0"),
        ({"kernel_list2": ["iso"]}, "kernel_prob2 must be 1 non-negative weights"),
        ({"kernel_list2": ["iso", "iso"], "kernel_prob2": [1, 1]}, "distinct kernel types"),
    ],
)
def test_config_rejects_what_the_sampler_cannot_draw(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        RealESRGANConfig(**kwargs)


def test_the_second_stage_draws_from_kernel_list2() -> None:
    cfg = RealESRGANConfig(
        kernel_list2=["plateau_iso"], kernel_prob2=[1.0], sinc_prob2=0.0, second_blur_prob=1.0
    )
    rng = np.random.Generator(np.random.PCG64(3))
    kinds = {
        realesrgan.sample_plan(rng, cfg, (64, 64), 4)["stage2"]["blur"]["type"] for _ in range(20)
    }
    assert kinds == {"plateau_iso"}
