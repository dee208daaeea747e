"""Tests for clipsr.images: defensive decoding, HR crops and deterministic encoding."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipsr.images import ImageRejected, decode_image, encode_image, prepare_hr


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # 512x512 RGB photograph


def _pil_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _reason(data_: bytes, **kwargs) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data_, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value.reason


# ------------------------------------------------------------------ decode: good inputs


def test_png_round_trip_is_exact(astronaut: np.ndarray) -> None:
    out = decode_image(_pil_bytes(Image.fromarray(astronaut), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (512, 512, 3)
    np.testing.assert_array_equal(out, astronaut)


def test_jpeg_round_trip_is_close(astronaut: np.ndarray) -> None:
    out = decode_image(_pil_bytes(Image.fromarray(astronaut), "JPEG", quality=95))
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - astronaut).mean() < 3.0


def test_exif_orientation_6_rotates_clockwise() -> None:
    arr = np.full((64, 96, 3), 255, np.uint8)  # landscape, red block in the top-left corner
    arr[:24, :24] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_pil_bytes(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (96, 64, 3)  # portrait after rotation
    # rotating 90 degrees clockwise moves the top-left corner to the top-right
    assert np.abs(out[5, -5].astype(int) - (255, 0, 0)).max() < 30
    assert np.abs(out[5, 5].astype(int) - (255, 255, 255)).max() < 30


def test_rgba_transparency_becomes_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (10, 20, 30, 0)  # fully transparent
    rgba[:, 32:48] = (10, 20, 30, 255)  # opaque
    rgba[:, 48:] = (0, 0, 0, 128)  # half transparent black
    out = decode_image(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:, :32] == 255).all()
    assert (out[:, 32:48] == (10, 20, 30)).all()
    assert np.abs(out[:, 48:].astype(int) - 127).max() <= 1


def test_grayscale_l_becomes_rgb() -> None:
    gray = np.tile(np.arange(256, dtype=np.uint8)[None, :], (64, 1))
    out = decode_image(_pil_bytes(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (64, 256, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_palette_images(astronaut: np.ndarray) -> None:
    pal = Image.fromarray(astronaut).quantize(colors=64)
    out = decode_image(_pil_bytes(pal, "PNG"))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    # palette index 0 transparent -> white
    pal_t = Image.fromarray(np.where(np.arange(64)[None, :] < 32, 0, 1).astype(np.uint8), "P")
    pal_t = pal_t.resize((64, 64))
    pal_t.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    out = decode_image(_pil_bytes(pal_t, "PNG", transparency=0))
    assert (out[:, :32] == 255).all()
    assert (out[:, 32:] == (0, 0, 200)).all()


def test_cmyk_becomes_rgb() -> None:
    cmyk = np.zeros((64, 64, 4), np.uint8)
    cmyk[:, :32, 0] = 255  # pure cyan
    cmyk[:, 32:, 1] = 255  # pure magenta
    out = decode_image(_pil_bytes(Image.fromarray(cmyk, "CMYK"), "TIFF"))
    assert (out[:, :32] == (0, 255, 255)).all()
    assert (out[:, 32:] == (255, 0, 255)).all()


def test_16_bit_grayscale_is_shifted_not_clipped() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(_pil_bytes(img, "PNG"))
    expected = (values >> 8).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)
    assert out[0, 255, 0] == 0 and out[1, 44, 0] == 1  # 255 -> 0 and 300 -> 1, not clipped


def test_16_bit_rgb_png_from_cv2() -> None:
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rgb16 = np.stack([ramp, ramp // 2, np.full_like(ramp, 40000)], axis=-1)
    ok, buf = cv2.imencode(".png", rgb16[:, :, ::-1])  # cv2 wants BGR
    assert ok
    out = decode_image(buf.tobytes())
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))


def test_float_grayscale_in_unit_range() -> None:
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = decode_image(_pil_bytes(Image.fromarray(values, "F"), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 1], np.round(values * 255).astype(np.uint8))


# ------------------------------------------------------------------ decode: rejections


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` followed by a tiny IDAT (no real pixels)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_rejections(astronaut: np.ndarray) -> None:
    jpeg = _pil_bytes(Image.fromarray(astronaut), "JPEG", quality=95)
    png = _pil_bytes(Image.fromarray(astronaut), "PNG")
    assert _reason(b"") == "empty"
    assert _reason(b"hello, this is a caption and not an image") == "not_an_image"
    assert _reason(jpeg[: len(jpeg) // 2]) == "truncated"
    assert _reason(png[: len(png) // 2]) == "truncated"
    assert _reason(_pil_bytes(Image.new("RGB", (10, 10)), "PNG")) == "too_small"
    assert _reason(_pil_bytes(Image.new("RGB", (640, 63)), "PNG")) == "too_small"
    assert _reason(png, max_pixels=512 * 512 - 1) == "too_large"
    corrupt = bytearray(png)
    corrupt[5000:6000] = b"\x00" * 1000
    assert _reason(bytes(corrupt)) == "corrupt"


def test_decompression_bomb_rejected_from_the_header() -> None:
    bomb = _png_header_only(20000, 20000)  # 400 MP claimed in ~70 bytes
    assert len(bomb) < 100
    assert _reason(bomb) == "too_large"
    assert _reason(bomb, max_pixels=10**9) == "too_large"  # Pillow's own hard limit
    # just above our limit but below Pillow's: our header check fires, nothing is decoded
    assert _reason(_png_header_only(4000, 3000), max_pixels=10_000_000) == "too_large"
    # within limits the same fake header is a truncated/corrupt image, proving the order
    assert _reason(_png_header_only(400, 300)) in ("truncated", "corrupt")


def test_min_size_is_configurable() -> None:
    tiny = _pil_bytes(Image.new("RGB", (10, 10), (1, 2, 3)), "PNG")
    out = decode_image(tiny, min_size=8)
    assert out.shape == (10, 10, 3) and (out == (1, 2, 3)).all()


def test_rejection_reason_is_validated() -> None:
    with pytest.raises(ValueError):
        ImageRejected("bogus", "x")  # type: ignore[arg-type]


# ------------------------------------------------------------------ prepare_hr


def _photo(height: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(data.astronaut(), (width, height)))


def test_center_crop_of_a_landscape_image() -> None:
    img = _photo(300, 500)
    hr, record = prepare_hr(img, 256)
    assert hr.dtype == np.uint8 and hr.shape == (256, 256, 3)
    assert record == {
        "mode": "center_crop",
        "box": [100, 0, 400, 300],
        "source_size": [500, 300],
        "resample": "area",
    }
    expected = cv2.resize(img[0:300, 100:400], (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(hr, expected)


def test_center_crop_of_a_portrait_image() -> None:
    _, record = prepare_hr(_photo(301, 200), 128)
    assert record["box"] == [0, 50, 200, 250]


def test_bbox_crop_matches_dfgan_formula_with_clipping() -> None:
    # CUB-like 500x375 image, bbox (x, y, w, h) = (60, 27, 325, 304):
    # r = int(325 * .75) = 243, cx = int(445 / 2) = 222, cy = int(358 / 2) = 179
    # y: [max(0, -64), min(375, 422)] = [0, 375]; x: [max(0, -21), min(500, 465)] = [0, 465]
    # centered square of the 465x375 crop: side 375, left 45 -> [45, 0, 420, 375]
    img = _photo(375, 500)
    hr, record = prepare_hr(img, 256, bbox=(60, 27, 325, 304))
    assert record == {
        "mode": "bbox_crop",
        "box": [45, 0, 420, 375],
        "source_size": [500, 375],
        "resample": "area",
    }
    expected = cv2.resize(img[0:375, 45:420], (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(hr, expected)


def test_bbox_crop_inside_the_image() -> None:
    # r = 75, cx = 450, cy = 330 -> x [375, 525], y [255, 405], already square
    _, record = prepare_hr(_photo(1000, 1000), 64, bbox=(400.0, 300.0, 100.0, 60.0))
    assert record["box"] == [375, 255, 525, 405]


def test_bbox_outside_the_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        prepare_hr(_photo(100, 100), 64, bbox=(500, 500, 10, 10))


def test_resample_choices() -> None:
    small = _photo(100, 100)
    up, _ = prepare_hr(small, 256)  # "area" enlarging uses bicubic
    np.testing.assert_array_equal(up, cv2.resize(small, (256, 256), interpolation=cv2.INTER_CUBIC))
    big = _photo(512, 512)
    lanczos, record = prepare_hr(big, 256, resample="lanczos")
    expected = cv2.resize(big, (256, 256), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(lanczos, expected)
    assert record["resample"] == "lanczos"
    same, _ = prepare_hr(big, 512)
    np.testing.assert_array_equal(same, big)


# ------------------------------------------------------------------ encode_image


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encode_is_deterministic_and_decodable(astronaut: np.ndarray, fmt: str) -> None:
    first = encode_image(astronaut, fmt)
    assert first == encode_image(astronaut.copy(), fmt)
    back = decode_image(first)
    assert back.shape == astronaut.shape
    if fmt == "png":
        np.testing.assert_array_equal(back, astronaut)  # lossless and RGB order kept
    else:
        assert np.abs(back.astype(int) - astronaut).mean() < 4.0


def test_png_level_trades_bytes_for_time_losslessly(astronaut: np.ndarray) -> None:
    fast, small = encode_image(astronaut, "png", png_level=1), encode_image(astronaut, "png")
    assert len(fast) > len(small)
    np.testing.assert_array_equal(decode_image(fast), decode_image(small))
    with pytest.raises(ValueError, match="png_level"):
        encode_image(astronaut, "png", png_level=10)


def test_encode_keeps_channel_order_and_quality_matters(astronaut: np.ndarray) -> None:
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    assert (decode_image(encode_image(red, "jpg"))[..., 0] > 240).all()
    assert len(encode_image(astronaut, "jpg", quality=30)) < len(encode_image(astronaut, "jpg"))
    with pytest.raises(ValueError):
        encode_image(astronaut, "gif")  # type: ignore[arg-type]
