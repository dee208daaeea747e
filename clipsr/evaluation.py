"""Evaluation of a :class:`~clipsr.inference.SuperResolver` on test shards: per-sample metrics,
their means, and the caption ablation (no Ray, no MLflow; see ``jobs/evaluate.py``).

Determinism: the evaluated set is the split's shards in manifest order, samples in tar order, at
most ``limit`` of them, fixed LR crops and the first caption (:func:`iter_eval_batches`). The work
is cut into :class:`Unit` s (one per shard, the first ``count`` samples of it), and each unit is
run in batches of ``batch_size`` from its first sample, so every sample is computed in the same
batch whatever process (or Ray actor) runs the unit. Means are ``math.fsum`` over samples in
order; values are rounded to :data:`DECIMALS` decimals.

Caption ablation: each image is upscaled with its true (first) caption, with the first caption of
sample ``(i + n // 2) % n`` of the evaluated set (the next sample after that whose caption differs
from the true one; the true caption again only when all captions are equal) and with ``""``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from clipsr.adherence import CaptionAttributes, ShapeAttributes, adherence_counts
from clipsr.inference import SuperResolver
from clipsr.metrics import LPIPS, bicubic_upscale, clip_score, psnr, ssim, tensor_to_uint8

# A private reader of clipsr.shard_dataset, so that keys and "first caption" are the same here.
from clipsr.shard_dataset import iter_eval_batches, iter_samples, sample_captions

Opener = Callable[[str], BinaryIO]
DECIMALS = 6
PSNR_CAP = 100.0  # dB: an exact reconstruction (infinite PSNR) counts as 100 dB in the means
GRID_IMAGES = ("lr", "bicubic", "sr", "sr_mismatched", "hr")  # a report grid row, in order
# Per-sample values, averaged into the metric of the same name (jobs/evaluation_record.py).
SAMPLE_METRICS = (
    "psnr",
    "ssim",
    "psnr_y",
    "ssim_y",
    "psnr_bicubic",
    "ssim_bicubic",
    "psnr_y_bicubic",
    "ssim_y_bicubic",
    "clip_score",
    "psnr_caption_mismatched",
    "psnr_caption_empty",
    "ssim_caption_mismatched",
    "ssim_caption_empty",
)
LPIPS_METRICS = ("lpips", "lpips_bicubic")
# Prompt adherence (sets whose manifest declares attributes; see clipsr.adherence): objects
# drawn as the caption's shape / as a swapped-in shape, chance, PSNR with the shape word
# swapped (mean over the other shapes) and the shape-only text gain.
ADHERENCE_METRICS = (
    "adherence",
    "edit_success",
    "adherence_chance",
    "adherence_samples",
    "psnr_shape_swapped",
    "text_gain_shape_psnr",
)


@dataclass(frozen=True)
class Unit:
    """The first ``count`` samples of the shard ``url``; ``start`` is the index of its first
    sample in the evaluated set."""

    url: str
    start: int
    count: int


def plan_units(shards: Iterable[tuple[str, int]], limit: int = 0) -> list[Unit]:
    """Units for ``(url, samples)`` shards in order, at most ``limit`` samples (0: all)."""
    units, start = [], 0
    for url, samples in shards:
        count = samples if not limit else min(samples, limit - start)
        if count <= 0:
            if limit and start >= limit:
                break
            continue
        units.append(Unit(url, start, count))
        start += count
    return units


def read_captions(unit: Unit, opener: Opener) -> list[tuple[str, str]]:
    """``(key, first caption)`` of the unit's samples, in tar order (reads no image)."""
    keep = {"txt", "captions.json"}.__contains__
    out = []
    for sample in iter_samples(unit.url, opener, keep):
        if len(out) == unit.count:
            break
        out.append((sample.key, sample_captions(sample)[0]))
    if len(out) != unit.count:
        raise ValueError(
            f"{unit.url}: the manifest lists at least {unit.count} samples, the tar has {len(out)}"
        )
    return out


def mismatched_captions(captions: list[str]) -> list[str]:
    """For sample ``i``: the caption of sample ``(i + n // 2) % n``, or of the next one after it
    whose caption differs from caption ``i`` (caption ``i`` itself only if all are equal)."""
    n = len(captions)
    out = []
    for i, own in enumerate(captions):
        order = [(i + max(n // 2, 1) + k) % n for k in range(n)]
        out.append(next((captions[j] for j in order if captions[j] != own), own))
    return out


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes(encoded: str) -> bytes:
    """The PNG of a grid image of a row (they travel base64-encoded, as JSON)."""
    return base64.b64decode(encoded)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _psnr(a: np.ndarray, b: np.ndarray, crop: int, y: bool) -> float:
    return min(psnr(a, b, crop_border=crop, test_y_channel=y), PSNR_CAP)


@torch.no_grad()
def evaluate_batch(
    resolver: SuperResolver,
    batch: dict[str, Any],
    mismatched: list[str],
    start: int,
    crop_border: int,
    grid_rows: int = 0,
    lpips: LPIPS | None = None,
    attributes: ShapeAttributes | None = None,
) -> list[dict[str, Any]]:
    """Rows (index, key, captions, per-sample metrics; ``images`` (base64 PNGs of
    :data:`GRID_IMAGES`, and ``swapped:<shape>`` with ``attributes``) when index < ``grid_rows``)
    of one batch of :func:`iter_eval_batches`."""
    captions, n = batch["captions"], len(batch["captions"])
    if len(mismatched) != n:
        raise ValueError(f"{n} samples but {len(mismatched)} mismatched captions")
    lr, hr = batch["lr"], batch["hr"]
    clip, device = resolver.clip, resolver.device
    text = clip.encode_text(captions)
    sr = resolver.generator(lr.to(device), text, clip).clamp(-1, 1)
    scores = clip_score(clip.image_embedding(sr), text).cpu()
    sr_mis = resolver.upscale_tensor(lr, mismatched)
    sr_empty = resolver.upscale_tensor(lr, [""] * n)
    hr8, lr8 = tensor_to_uint8(hr), tensor_to_uint8(lr)
    sr8, mis8, empty8 = (tensor_to_uint8(x) for x in (sr, sr_mis, sr_empty))
    bic8 = np.stack([bicubic_upscale(x, int(batch["scale"])) for x in lr8])
    swaps = _shape_swaps(resolver, lr, captions, attributes) if attributes is not None else {}
    if lpips is not None:
        dev = next(lpips.parameters()).device
        hr_t = hr.to(dev)
        lp = lpips(sr.to(dev), hr_t).cpu()
        lp_bic = lpips(_to_tensor(bic8).to(dev), hr_t).cpu()
    rows, c = [], crop_border
    for i in range(n):
        h = hr8[i]
        row: dict[str, Any] = {
            "index": start + i,
            "key": batch["keys"][i],
            "caption": captions[i],
            "caption_mismatched": mismatched[i],
            "psnr": _psnr(sr8[i], h, c, False),
            "ssim": ssim(sr8[i], h, c, False),
            "psnr_y": _psnr(sr8[i], h, c, True),
            "ssim_y": ssim(sr8[i], h, c, True),
            "psnr_bicubic": _psnr(bic8[i], h, c, False),
            "ssim_bicubic": ssim(bic8[i], h, c, False),
            "psnr_y_bicubic": _psnr(bic8[i], h, c, True),
            "ssim_y_bicubic": ssim(bic8[i], h, c, True),
            "clip_score": float(scores[i]),
            "psnr_caption_mismatched": _psnr(mis8[i], h, c, False),
            "psnr_caption_empty": _psnr(empty8[i], h, c, False),
            "ssim_caption_mismatched": ssim(mis8[i], h, c, False),
            "ssim_caption_empty": ssim(empty8[i], h, c, False),
        }
        if lpips is not None:
            row["lpips"], row["lpips_bicubic"] = float(lp[i]), float(lp_bic[i])
        swapped = swaps.get(i)
        if swapped is not None:
            parsed, images = swapped
            counts = adherence_counts(attributes, parsed, h, sr8[i], images)
            swapped_psnr = [_psnr(a, h, c, False) for a in images.values()]
            row.update(counts)
            row["psnr_shape_swapped"] = math.fsum(swapped_psnr) / len(swapped_psnr)
        if start + i < grid_rows:
            size = (h.shape[1], h.shape[0])
            near = np.asarray(Image.fromarray(lr8[i]).resize(size, Image.Resampling.NEAREST))
            images = (near, bic8[i], sr8[i], mis8[i], h)
            row["images"] = {k: _png(a) for k, a in zip(GRID_IMAGES, images, strict=True)}
            if swapped is not None:
                row["images"] |= {f"swapped:{k}": _png(a) for k, a in swapped[1].items()}
                row["zoom_box"] = _zoom_box(attributes, swapped[0], h)
        rows.append(row)
    return rows


def _zoom_box(attributes: ShapeAttributes, parsed: CaptionAttributes, hr: np.ndarray) -> list:
    """[x0, y0, x1, y1]: 2 x 2 cells from the first object (kept inside the image), for zoomed
    crops in the report."""
    occupied = attributes.occupied(hr, parsed.background)
    rows, cols = occupied.shape
    r, c = (int(v[0]) for v in np.nonzero(occupied)) if occupied.any() else (0, 0)
    r, c = min(r, max(rows - 2, 0)), min(c, max(cols - 2, 0))
    size = attributes.cell * min(2, rows, cols)
    y0, x0 = r * attributes.cell, c * attributes.cell
    return [x0, y0, x0 + size, y0 + size]


def _shape_swaps(
    resolver: SuperResolver, lr: torch.Tensor, captions: list[str], attributes: ShapeAttributes
) -> dict[int, tuple[CaptionAttributes, dict[str, np.ndarray]]]:
    """For each sample whose caption follows the declared pattern: its attributes and the SR
    (uint8) with only the shape word swapped to each other shape, in the declared order."""
    parsed = {i: attributes.parse(c) for i, c in enumerate(captions)}
    parsed = {i: p for i, p in parsed.items() if p is not None}
    out = {i: (p, {}) for i, p in parsed.items()}
    if not parsed:
        return out
    index = sorted(parsed)
    for shape in attributes.shapes:
        todo = [i for i in index if parsed[i].shape != shape]
        if not todo:
            continue
        swapped = [
            attributes.caption(CaptionAttributes(shape, parsed[i].colour, parsed[i].background))
            for i in todo
        ]
        images = tensor_to_uint8(resolver.upscale_tensor(lr[todo], swapped))
        for i, image in zip(todo, images, strict=True):
            out[i][1][shape] = image
    return out


def evaluate_unit(
    resolver: SuperResolver,
    unit: Unit,
    mismatched: list[str],
    opener: Opener,
    batch_size: int,
    crop_border: int,
    grid_rows: int = 0,
    lpips: LPIPS | None = None,
    attributes: ShapeAttributes | None = None,
) -> list[dict[str, Any]]:
    """Rows of the unit's samples, in batches of ``batch_size`` from its first sample."""
    if len(mismatched) != unit.count:
        raise ValueError(f"{unit.url}: {unit.count} samples but {len(mismatched)} captions")
    rows: list[dict[str, Any]] = []
    batches = iter_eval_batches([unit.url], resolver.scale, batch_size, unit.count, opener)
    for batch in batches:
        done = len(rows)
        wrong = mismatched[done : done + len(batch["keys"])]
        start = unit.start + done
        rows += evaluate_batch(
            resolver, batch, wrong, start, crop_border, grid_rows, lpips, attributes
        )
    if len(rows) != unit.count:
        raise ValueError(f"{unit.url}: the manifest lists {unit.count} samples, read {len(rows)}")
    return rows


def _round(value: float) -> float:
    return round(float(value), DECIMALS)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means of the per-sample metrics (``samples`` = their number) and the text gains,
    ``text_gain_psnr = psnr - psnr_caption_mismatched`` of the rounded means (exact in
    :data:`DECIMALS` decimals), ``text_gain_psnr_empty`` likewise with ``""``."""
    if not rows:
        raise ValueError("no samples to evaluate")
    rows = sorted(rows, key=lambda r: r["index"])
    names = SAMPLE_METRICS + (LPIPS_METRICS if all("lpips" in r for r in rows) else ())
    out: dict[str, float] = {"samples": float(len(rows))}
    for name in names:
        out[name] = _round(math.fsum(r[name] for r in rows) / len(rows))
    out["text_gain_psnr"] = _round(out["psnr"] - out["psnr_caption_mismatched"])
    out["text_gain_psnr_empty"] = _round(out["psnr"] - out["psnr_caption_empty"])
    out.update(_aggregate_adherence(rows))
    return dict(sorted(out.items()))


def _aggregate_adherence(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Object-weighted adherence and edit success over the samples that have them, their PSNR
    with the shape word swapped, and the shape-only gain (their own true-caption PSNR minus it)."""
    scored = [r for r in rows if "objects" in r]
    if not scored:
        return {}
    objects = sum(r["objects"] for r in scored)
    edits = sum(r["edit_objects"] for r in scored)
    shapes = max(len(r["verdicts"]) for r in scored)  # the true shape + each swapped one
    true_psnr = _round(math.fsum(r["psnr"] for r in scored) / len(scored))
    swapped = _round(math.fsum(r["psnr_shape_swapped"] for r in scored) / len(scored))
    return {
        "adherence": _round(sum(r["adherent"] for r in scored) / max(objects, 1)),
        "edit_success": _round(sum(r["edit_hits"] for r in scored) / max(edits, 1)),
        "adherence_chance": _round(1.0 / shapes),
        "adherence_samples": float(len(scored)),
        "psnr_shape_swapped": swapped,
        "text_gain_shape_psnr": _round(true_psnr - swapped),
    }


def rounded_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row for the JSON file: floats rounded, grid images left out."""
    return {k: _round(v) if isinstance(v, float) else v for k, v in row.items() if k != "images"}


def iter_rows_in_order(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows sorted by index, checked to be exactly 0..n-1."""
    ordered = sorted(rows, key=lambda r: r["index"])
    for expected, row in enumerate(ordered):
        if row["index"] != expected:
            raise ValueError(f"evaluation rows: expected sample {expected}, got {row['index']}")
        yield row
