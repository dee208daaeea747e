"""Defensive image decoding, HR preparation (center / DF-GAN bbox crop) and deterministic encoding.

:func:`decode_image` turns untrusted bytes into an HxWx3 uint8 RGB array or raises
:class:`ImageRejected` with a machine-readable ``reason``; it checks the pixel count from the
header before decoding (decompression bombs), never enables ``LOAD_TRUNCATED_IMAGES``, applies
the EXIF orientation and flattens alpha onto white (like img2dataset).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageRejected", "decode_image", "encode_image", "prepare_hr"]

RejectReason = Literal["empty", "not_an_image", "corrupt", "truncated", "too_small", "too_large"]
_REASONS = ("empty", "not_an_image", "corrupt", "truncated", "too_small", "too_large")
_RESAMPLE = {"bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


class ImageRejected(ValueError):
    """The bytes are not a usable image; ``reason`` says why (one of ``_REASONS``)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason: str = reason


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB; alpha composited onto white, deep gray scaled to 8 bit."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16"):
        gray = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    elif mode == "I":
        # 32-bit ints; PIL uses this mode for some 16-bit sources: treat > 255 as 16-bit data.
        values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        gray = (values >> 8 if values.max(initial=0) > 255 else values).astype(np.uint8)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = values.max(initial=0.0)
        factor = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / 65535.0)
        gray = np.clip(np.round(values * factor), 0, 255).astype(np.uint8)
    else:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_image(data: bytes, max_pixels: int = 89_478_485, min_size: int = 64) -> np.ndarray:
    """Decode ``data`` to an HxWx3 uint8 RGB array (EXIF-oriented) or raise :class:`ImageRejected`.

    ``max_pixels`` is checked on the header before any pixel is decoded; Pillow's own hard
    limit (twice ``Image.MAX_IMAGE_PIXELS``) still applies and is reported as ``too_large``.
    """
    if not data:
        raise ImageRejected("empty", "no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc)) from None
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        message = str(exc).split(" <_io.")[0]  # no object address: the same text every run
        raise ImageRejected("not_an_image", f"{type(exc).__name__}: {message}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    if min(width, height) < min_size:
        raise ImageRejected("too_small", f"{width}x{height} is below {min_size} px")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # decoder errors: ValueError, SyntaxError, EOFError, zlib.error
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from None
    # malformed EXIF must not cost the image: keep the stored orientation then
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img) or img
    try:
        arr = _to_rgb_array(img)
    except Exception as exc:
        raise ImageRejected("corrupt", f"cannot convert mode {img.mode}: {exc}") from None
    return np.ascontiguousarray(arr)


def _square_in(x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    """Centered square inside the box ``[x0, x1) x [y0, y1)``."""
    side = min(x1 - x0, y1 - y0)
    left = x0 + (x1 - x0 - side) // 2
    top = y0 + (y1 - y0 - side) // 2
    return left, top, left + side, top + side


def prepare_hr(
    img: np.ndarray,
    hr_size: int,
    bbox: tuple[float, float, float, float] | None = None,
    resample: Literal["area", "bicubic", "lanczos"] = "area",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Square HR crop of ``img`` resized to ``hr_size``; returns it and a crop record.

    Without ``bbox`` the centered square is used; with ``bbox = (x, y, w, h)`` the DF-GAN/AttnGAN
    bird crop (side 1.5 * max(w, h) around the box, clipped to the image), center-cropped square.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an HxWx3 uint8 array, got {img.dtype} {img.shape}")
    if hr_size < 1:
        raise ValueError(f"hr_size must be positive, got {hr_size}")
    if resample not in ("area", "bicubic", "lanczos"):
        raise ValueError(f"unknown resample {resample!r}")
    height, width = img.shape[:2]
    if bbox is None:
        mode = "center_crop"
        x0, y0, x1, y1 = _square_in(0, 0, width, height)
    else:
        mode = "bbox_crop"
        bx, by, bw, bh = bbox
        r = int(max(bw, bh) * 0.75)
        center_x = int((2 * bx + bw) / 2)
        center_y = int((2 * by + bh) / 2)
        cy1, cy2 = max(0, center_y - r), min(height, center_y + r)
        cx1, cx2 = max(0, center_x - r), min(width, center_x + r)
        if cx2 <= cx1 or cy2 <= cy1:
            raise ValueError(f"bbox {bbox!r} gives an empty crop in a {width}x{height} image")
        x0, y0, x1, y1 = _square_in(cx1, cy1, cx2, cy2)
    crop = img[y0:y1, x0:x1]
    side = x1 - x0
    if side == hr_size:
        out = crop.copy()
    else:
        if resample == "area":
            interp = cv2.INTER_AREA if side > hr_size else cv2.INTER_CUBIC
        else:
            interp = _RESAMPLE[resample]
        out = cv2.resize(crop, (hr_size, hr_size), interpolation=interp)
    record = {
        "mode": mode,
        "box": [int(x0), int(y0), int(x1), int(y1)],
        "source_size": [int(width), int(height)],
        "resample": resample,
    }
    return np.ascontiguousarray(out), record


def encode_image(
    img: np.ndarray,
    fmt: Literal["png", "jpg", "webp"],
    quality: int = 95,
    png_level: int = 6,
) -> bytes:
    """Encode an HxWx3 uint8 RGB array; same array -> same bytes (cv2, no metadata).

    ``quality`` is for jpg/webp; ``png_level`` is PNG's zlib level, 0 (store) to 9 (smallest,
    slowest); PNG is lossless at every level."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an HxWx3 uint8 array, got {img.dtype} {img.shape}")
    if fmt == "png":
        if not 0 <= png_level <= 9:
            raise ValueError(f"png_level must be 0..9, got {png_level}")
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    elif fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    else:
        raise ValueError(f"unknown format {fmt!r}; expected png, jpg or webp")
    ok, buf = cv2.imencode(f".{fmt}", np.ascontiguousarray(img[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"cv2 could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()
