"""clipsr.evaluation: units, the caption derangement, per-sample metrics against direct
computation, means and text gains, determinism; on real tar shards, no Ray or MLflow."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipsr.evaluation import (
    DECIMALS,
    GRID_IMAGES,
    PSNR_CAP,
    SAMPLE_METRICS,
    Unit,
    aggregate,
    evaluate_unit,
    mismatched_captions,
    plan_units,
    png_bytes,
    read_captions,
    rounded_row,
)
from clipsr.inference import SuperResolver
from clipsr.metrics import bicubic_upscale, psnr, ssim, tensor_to_uint8
from clipsr.shard_dataset import iter_eval_batches
from clipsr.shards import ShardSample, sample_members, write_tar
from jobs.evaluation_record import METRIC_NAMES
from tests.conftest import text_sensitive_checkpoint

HR, SCALE, CROP = 64, 4, 4
OPEN = functools.partial(open, mode="rb")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[str, list[str]]:
    """One tar of 6 astronaut crops; sample 5's HR is exactly the bicubic upscale of its LR."""
    image = data.astronaut()
    samples, firsts = [], []
    for n in range(6):
        hr = image[40 * n : 40 * n + HR, 60 * n : 60 * n + HR]
        lr = np.asarray(Image.fromarray(hr).resize((HR // SCALE,) * 2, Image.Resampling.BOX))
        if n == 5:
            hr = bicubic_upscale(lr, SCALE)
        captions = [f"crop {n} of an astronaut", f"another caption of {n}"]
        firsts.append(captions[0])
        members = sample_members(_png(hr), "png", {SCALE: _png(lr)}, captions, {"n": n})
        samples.append(ShardSample(f"s{n}", members))
    path = tmp_path_factory.mktemp("shard") / "test-000000.tar"
    with open(path, "wb") as f:
        write_tar(f, samples)
    return str(path), firsts


@pytest.fixture(scope="module")
def resolver(tiny_clip, tmp_path_factory) -> SuperResolver:
    directory = text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "ck")
    return SuperResolver.from_checkpoint(directory, "cpu")


def test_plan_units_cut_at_the_limit_in_order():
    shards = [("a", 3), ("b", 0), ("c", 4), ("d", 2)]
    assert plan_units(shards) == [Unit("a", 0, 3), Unit("c", 3, 4), Unit("d", 7, 2)]
    assert plan_units(shards, limit=5) == [Unit("a", 0, 3), Unit("c", 3, 2)]
    assert plan_units(shards, limit=3) == [Unit("a", 0, 3)]
    assert plan_units(shards, limit=100) == plan_units(shards)


def test_mismatched_captions_are_a_fixed_derangement():
    captions = [f"c{i}" for i in range(8)]
    assert mismatched_captions(captions) == [captions[(i + 4) % 8] for i in range(8)]
    assert mismatched_captions(["a", "b", "c"]) == ["b", "c", "a"]  # (i + 1) % 3
    # equal captions are skipped: the next differing one after (i + n // 2) % n
    assert mismatched_captions(["x", "y", "x", "x"]) == ["y", "x", "y", "y"]
    assert mismatched_captions(["same", "same"]) == ["same", "same"]  # nothing else to take
    assert mismatched_captions(["alone"]) == ["alone"]
    assert mismatched_captions([]) == []


def test_read_captions_gives_keys_and_first_captions(shard):
    url, firsts = shard
    pairs = read_captions(Unit(url, 0, 4), OPEN)
    assert pairs == [(f"s{n}", firsts[n]) for n in range(4)]
    with pytest.raises(ValueError, match="the tar has 6"):
        read_captions(Unit(url, 0, 7), OPEN)


def test_rows_match_direct_computation(shard, resolver):
    url, firsts = shard
    wrong = mismatched_captions(firsts)
    rows = evaluate_unit(resolver, Unit(url, 10, 6), wrong, OPEN, 4, CROP, grid_rows=12)
    assert [r["index"] for r in rows] == list(range(10, 16))
    assert [r["key"] for r in rows] == [f"s{n}" for n in range(6)]
    assert [r["caption"] for r in rows] == firsts
    assert [r["caption_mismatched"] for r in rows] == wrong
    assert [sorted(r.get("images", {})) for r in rows] == [sorted(GRID_IMAGES)] * 2 + [[]] * 4
    first = next(iter_eval_batches([url], SCALE, 4, opener=OPEN))  # the same batch of 4
    sr = tensor_to_uint8(resolver.upscale_tensor(first["lr"], first["captions"]))
    mis = tensor_to_uint8(resolver.upscale_tensor(first["lr"], wrong[:4]))
    empty = tensor_to_uint8(resolver.upscale_tensor(first["lr"], [""] * 4))
    for i, row in enumerate(rows[:4]):
        hr, lr = tensor_to_uint8(first["hr"][i]), tensor_to_uint8(first["lr"][i])
        bic = bicubic_upscale(lr, SCALE)
        assert row["psnr"] == psnr(sr[i], hr, CROP)
        assert row["ssim_y"] == ssim(sr[i], hr, CROP, test_y_channel=True)
        assert row["psnr_bicubic"] == psnr(bic, hr, CROP)
        assert row["ssim_y_bicubic"] == ssim(bic, hr, CROP, test_y_channel=True)
        assert row["psnr_caption_mismatched"] == psnr(mis[i], hr, CROP)
        assert row["ssim_caption_empty"] == ssim(empty[i], hr, CROP)
        assert 0.0 <= row["clip_score"] <= 100.0
    grid = rows[11 - 10]["images"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(grid["sr"])))), sr[1])
    lr_big = np.asarray(Image.open(io.BytesIO(png_bytes(grid["lr"]))))
    assert np.array_equal(lr_big[::SCALE, ::SCALE], tensor_to_uint8(first["lr"][1]))
    assert np.array_equal(lr_big[3::SCALE, 3::SCALE], tensor_to_uint8(first["lr"][1]))
    # the text-sensitive model answers to its caption
    assert any(r["psnr"] != r["psnr_caption_mismatched"] for r in rows)
    # an exact reconstruction counts as PSNR_CAP dB, not inf
    assert rows[5]["psnr_bicubic"] == PSNR_CAP == rows[5]["psnr_y_bicubic"]


def test_same_batches_same_numbers_and_the_means(shard, resolver):
    url, firsts = shard
    wrong = mismatched_captions(firsts)
    rows = evaluate_unit(resolver, Unit(url, 0, 6), wrong, OPEN, 2, CROP)
    assert evaluate_unit(resolver, Unit(url, 0, 6), wrong, OPEN, 2, CROP) == rows
    head = evaluate_unit(resolver, Unit(url, 0, 4), wrong[:4], OPEN, 2, CROP)
    assert head == rows[:4]  # a limit keeps the batches before it
    means = aggregate(list(reversed(rows)))  # order of arrival does not matter
    assert set(means) <= set(METRIC_NAMES) and "lpips" not in means
    assert set(means) == {"samples", *SAMPLE_METRICS, "text_gain_psnr", "text_gain_psnr_empty"}
    assert means["samples"] == 6
    for name in SAMPLE_METRICS:
        assert means[name] == round(math.fsum(r[name] for r in rows) / 6, DECIMALS)
    assert means["text_gain_psnr"] == round(means["psnr"] - means["psnr_caption_mismatched"], 6)
    assert means["text_gain_psnr_empty"] == round(means["psnr"] - means["psnr_caption_empty"], 6)
    assert means["psnr_caption_mismatched"] != means["psnr"]
    row = rounded_row({**rows[0], "images": {"sr": "..."}})
    assert "images" not in row and row["psnr"] == round(rows[0]["psnr"], DECIMALS)
    with pytest.raises(ValueError, match="no samples"):
        aggregate([])


def test_unit_errors(shard, resolver, tmp_path: Path):
    url, firsts = shard
    with pytest.raises(ValueError, match="captions"):
        evaluate_unit(resolver, Unit(url, 0, 6), firsts[:5], OPEN, 2, CROP)
    with pytest.raises(ValueError, match="the manifest lists 8 samples, read 6"):
        evaluate_unit(resolver, Unit(url, 0, 8), firsts + ["a", "b"], OPEN, 4, CROP)
