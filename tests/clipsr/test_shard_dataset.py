"""The shard reader: batch layout, seeded resampling, exact resume through a DataLoader."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import clipsr.shard_dataset as sd
from clipsr.shard_dataset import (
    TrainingBatchStream,
    check_scales,
    iter_eval_batches,
    read_dataset_manifest,
    shard_urls,
)
from clipsr.shards import FORMAT_VERSION, ShardSample, sample_members, shard_name, write_tar

HR = 32


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _write_shards(root: Path, sizes: list[int], scales=(4, 8), seed=0):
    """Shards of random samples; returns (urls, key -> {"hr", "lr": {scale}, "captions"})."""
    rng = np.random.default_rng(seed)
    urls, truth = [], {}
    for index, size in enumerate(sizes):
        samples = []
        for n in range(size):
            key = f"s{index}n{n:02d}"
            hr = rng.integers(0, 256, (HR, HR, 3), np.uint8)
            lrs = {s: rng.integers(0, 256, (HR // s, HR // s, 3), np.uint8) for s in scales}
            captions = [f"{key} caption {c}" for c in range(3)]
            members = sample_members(
                _png(hr), "png", {s: _png(a) for s, a in lrs.items()}, captions, {"id": key}
            )
            samples.append(ShardSample(key, members))
            truth[key] = {"hr": hr, "lr": lrs, "captions": captions}
        path = root / f"{shard_name('train', index)}.tar"
        with open(path, "wb") as f:
            write_tar(f, samples)
        urls.append(str(path))
    return urls, truth


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _write_shards(tmp_path_factory.mktemp("shards"), [5, 7, 6])


def _unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1.0


def _same(a: dict, b: dict) -> bool:
    return (
        a["keys"] == b["keys"]
        and a["captions"] == b["captions"]
        and a["scale"] == b["scale"]
        and torch.equal(a["lr"], b["lr"])
        and torch.equal(a["hr"], b["hr"])
    )


def _take(stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def _loader(stream, n: int, workers: int = 2) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers, timeout=60)
    return list(itertools.islice(loader, n))


def _stream(urls, **kw) -> TrainingBatchStream:
    args = {"scales": [4, 8], "batch_size": 4, "seed": 7, "shuffle_buffer": 8}
    return TrainingBatchStream(urls, **(args | kw))


def test_batches_have_the_layout_ranges_scales_and_captions(shards):
    urls, truth = shards
    batches = _take(_stream(urls), 24)
    for b in batches:
        s = b["scale"]
        assert s in (4, 8) and isinstance(s, int)
        assert b["hr"].shape == (4, 3, HR, HR) and b["hr"].dtype == torch.float32
        assert b["lr"].shape == (4, 3, HR // s, HR // s) and b["lr"].dtype == torch.float32
        for t in (b["hr"], b["lr"]):
            assert t.min() >= -1.0 and t.max() <= 1.0 and t.is_contiguous()
        assert len(b["keys"]) == len(b["captions"]) == 4
        for key, caption in zip(b["keys"], b["captions"], strict=True):
            assert caption in truth[key]["captions"]
    assert {b["scale"] for b in batches} == {4, 8}
    assert len({c for b in batches for c in b["captions"]}) > 18  # not always the first caption
    seen = {k for b in batches for k in b["keys"]}
    assert {k[:2] for k in seen} == {"s0", "s1", "s2"}  # every shard gets drawn


def test_same_arguments_give_the_same_batches(shards):
    urls, _ = shards
    a, b = _take(_stream(urls), 12), _take(_stream(urls), 12)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    other = _take(_stream(urls, seed=8), 12)
    assert [x["keys"] for x in a] != [x["keys"] for x in other]


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_continues_with_exactly_the_same_batches(shards, rank):
    urls, _ = shards
    kw = {"rank": rank, "world_size": 2, "segment_batches": 3}
    full = _loader(_stream(urls, **kw), 14)
    for k in (1, 4, 7, 10):  # odd k rotates the workers; segments (3 local batches) are crossed
        resumed = _loader(_stream(urls, start_batch=k, **kw), 14 - k)
        assert all(_same(x, y) for x, y in zip(full[k:], resumed, strict=True)), k
    # the streams are independent draws: ranks differ, DataLoader workers differ
    other = _loader(_stream(urls, **(kw | {"rank": 1 - rank})), 14)
    assert [b["keys"] for b in full] != [b["keys"] for b in other]
    assert [b["keys"] for b in full[0::2]] != [b["keys"] for b in full[1::2]]
    # without workers the same position gives the same batches as worker-free streams
    plain = _take(_stream(urls, **kw), 6)
    assert all(_same(x, y) for x, y in zip(plain[3:], _take(_stream(urls, start_batch=3, **kw), 3)))


def test_skipping_decodes_only_the_yielded_batch(shards, monkeypatch):
    urls, _ = shards
    calls = []
    decode = sd._decode
    monkeypatch.setattr(sd, "_decode", lambda *a: calls.append(a[2]) or decode(*a))
    expected = _take(_stream(urls, segment_batches=50), 40)[-1]
    calls.clear()
    (resumed,) = _take(_stream(urls, segment_batches=50, start_batch=39), 1)
    assert _same(resumed, expected)
    assert len(calls) == 2 * 4  # one HR and one LR per sample of the one yielded batch


def test_few_and_uneven_shards_do_not_hang(tmp_path):
    (tmp_path / "one").mkdir()
    (one,), _ = _write_shards(tmp_path / "one", [3])
    for rank in (0, 1):  # 1 shard < 2 ranks x 2 workers, and fewer samples than a batch
        batches = _loader(_stream([one], rank=rank, world_size=2, batch_size=5), 6)
        assert len(batches) == 6 and all(len(b["keys"]) == 5 for b in batches)
    (tmp_path / "uneven").mkdir()
    uneven, truth = _write_shards(tmp_path / "uneven", [1, 9, 0, 2])  # one shard is empty
    batches = _loader(_stream(uneven, world_size=2, rank=1, shuffle_buffer=256), 8)
    assert len(batches) == 8 and {k for b in batches for k in b["keys"]} <= truth.keys()


def test_hflip_flips_hr_and_lr_together(shards):
    urls, truth = shards
    flips = []
    for b in _take(_stream(urls, scales=[4]), 15):
        for i, key in enumerate(b["keys"]):
            hr, lr = _unit(truth[key]["hr"]), _unit(truth[key]["lr"][4])
            hr_flip = torch.equal(b["hr"][i], hr.flip(-1))
            assert hr_flip or torch.equal(b["hr"][i], hr)
            assert torch.equal(b["lr"][i], lr.flip(-1) if hr_flip else lr)
            flips.append(hr_flip)
    assert 0.3 < np.mean(flips) < 0.7
    for b in _take(_stream(urls, scales=[8], hflip=False, random_caption=False), 5):
        for i, key in enumerate(b["keys"]):
            assert torch.equal(b["hr"][i], _unit(truth[key]["hr"]))
            assert torch.equal(b["lr"][i], _unit(truth[key]["lr"][8]))
            assert b["captions"][i] == truth[key]["captions"][0]


def test_a_missing_scale_names_the_shard_and_key(tmp_path):
    urls, _ = _write_shards(tmp_path, [3], scales=(4,))
    with pytest.raises(ValueError, match=r"train-000000\.tar: sample 's0n0[0-2]'.*lr_x8.*x8"):
        _take(_stream(urls, scales=[8]), 1)
    with pytest.raises(ValueError, match=r"sample 's0n00' has no lr_x8\.png"):
        next(iter_eval_batches(urls, 8, 2))


def test_eval_batches_are_ordered_unaugmented_with_a_partial_last_batch(shards):
    urls, truth = shards
    batches = list(iter_eval_batches(urls, scale=8, batch_size=4))
    keys = [k for b in batches for k in b["keys"]]
    assert keys == list(truth)  # shards in the given order, samples in tar order
    assert [len(b["keys"]) for b in batches] == [4, 4, 4, 4, 2]
    for b in batches:
        assert b["scale"] == 8 and b["lr"].shape[1:] == (3, 4, 4)
        for i, key in enumerate(b["keys"]):
            assert b["captions"][i] == truth[key]["captions"][0]
            assert torch.equal(b["hr"][i], _unit(truth[key]["hr"]))
            assert torch.equal(b["lr"][i], _unit(truth[key]["lr"][8]))
    limited = list(iter_eval_batches(urls[::-1], scale=4, batch_size=4, limit=6))
    assert [len(b["keys"]) for b in limited] == [4, 2]
    assert limited[0]["keys"][0] == "s2n00"


def test_a_custom_opener_reads_the_shards(shards):
    urls, _ = shards
    blobs = {f"s3://bucket/data/{Path(u).name}": Path(u).read_bytes() for u in urls}
    opened = []

    def opener(url: str):
        opened.append(url)
        return io.BytesIO(blobs[url])

    local = _take(_stream(urls), 3)
    remote = _take(_stream(list(blobs), opener=opener), 3)
    assert all(_same(x, y) for x, y in zip(local, remote, strict=True))
    assert set(opened) <= set(blobs) and opened


def _manifest(**kw) -> dict:
    shards = [
        {"shard": "train-000000", "split": "train", "tar": "train-000000.tar", "samples": 5},
        {"shard": "train-000001", "split": "train", "tar": "train-000001.tar", "samples": 3},
        {"shard": "val-000000", "split": "val", "tar": "val-000000.tar", "samples": 2},
    ]
    for s in shards:
        s["sha256"] = "0" * 64
    return {"format_version": FORMAT_VERSION, "scales": [4, 8], "shards": shards} | kw


def test_manifest_reading_and_its_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards at .*: manifest.json missing; run"):
        read_dataset_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest(format_version=0)))
    with pytest.raises(ValueError, match="made by an incompatible clipsr version"):
        read_dataset_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest()))
    manifest = read_dataset_manifest(str(tmp_path) + "/")
    assert shard_urls(str(tmp_path) + "/", "train", manifest) == [
        f"{tmp_path}/train-000000.tar",
        f"{tmp_path}/train-000001.tar",
    ]
    assert shard_urls("s3://bucket/data/", "val", manifest) == ["s3://bucket/data/val-000000.tar"]
    with pytest.raises(ValueError, match=r"no shards for split 'test'.*\['train', 'val'\]"):
        shard_urls("s3://bucket/data", "test", manifest)
    check_scales(manifest, [8, 4])
    with pytest.raises(ValueError, match=r"scale\(s\) \[16\]; available scales: \[4, 8\]"):
        check_scales(manifest, [4, 16])
    read = {"s3://b/d/manifest.json": json.dumps(_manifest()).encode()}
    assert read_dataset_manifest("s3://b/d", read.__getitem__)["scales"] == [4, 8]


def test_invalid_arguments_are_rejected(shards):
    urls, _ = shards
    with pytest.raises(ValueError, match="need shard urls and scales, got 0 urls"):
        TrainingBatchStream([], [4], 2, seed=0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        TrainingBatchStream(urls, [4], 2, seed=0, rank=2, world_size=2)


def test_every_rank_and_loader_worker_draws_the_same_scale_at_a_step(shards):
    """DDP reduces one head's gradients: the scale of global batch j is drawn from (seed, j)."""
    urls, _ = shards
    rank0 = _loader(_stream(urls, rank=0, world_size=2), 10)
    rank1 = [b["scale"] for b in _take(_stream(urls, rank=1, world_size=2), 10)]
    resumed = [b["scale"] for b in _take(_stream(urls, rank=1, world_size=2, start_batch=3), 7)]
    scales = [b["scale"] for b in rank0]
    assert scales == rank1 and scales[3:] == resumed and set(scales) == {4, 8}
    assert scales == [_stream(urls).batch_scale(j) for j in range(10)]
    assert [b["keys"] for b in rank0] != [
        b["keys"] for b in _take(_stream(urls, rank=1, world_size=2), 10)
    ]
