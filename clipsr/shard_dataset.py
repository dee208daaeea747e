"""Training and evaluation batches read from the WebDataset shards of :mod:`clipsr.shards`.

Design: training reads **resampled shards**. Every (seed, rank, loader worker, segment) has its
own ``np.random.Generator(PCG64([seed, rank, worker, segment]))`` that picks shards uniformly
with replacement, reads them sequentially, shuffles samples through a buffer and forms batches.
Each rank and worker draws its own infinite stream: independent random draws, not a partition,
so nothing needs coordinating across ranks and workers and nothing hangs when shards < ranks x
workers or shard sizes are uneven (webdataset #188, #225). Like any sampling with replacement,
a sample may repeat, within one stream or across streams.

The data position is one integer, ``start_batch``: the batches this rank's DataLoader has
yielded. Global batch ``j`` belongs to stream ``j % W`` (W = DataLoader workers) as its local
batch ``j // W``. A DataLoader (``in_order=True``, the default) returns worker outputs round-robin
from worker 0, so after ``start_batch = k`` worker ``w`` plays stream ``(k + w) % W`` from local
batch ``(k + w) // W`` (the stream is the worker id when ``k % W == 0``). A segment is
``segment_batches`` local batches with a fresh generator, so a resumed worker replays only the
start of its current segment, reading tars but decoding no image, then yields exactly the batches
the uninterrupted run would have. Resuming needs the same urls, scales, batch size, seed, rank,
segment size, shuffle buffer and DataLoader ``num_workers`` (``opener(url)`` gives a binary file).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipsr.shards import FORMAT_VERSION, MANIFEST, lr_member

Opener = Callable[[str], BinaryIO]
_open_file: Opener = functools.partial(open, mode="rb")  # picklable, for DataLoader workers


def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


@dataclass
class ShardSample:  # the members a reader needs of one sample (extension -> bytes)
    url: str
    key: str
    members: dict[str, bytes]


@dataclass
class _Pick:  # a sample placed in a batch, with its augmentation draws
    sample: ShardSample
    flip: bool
    caption_u: float  # uniform in [0, 1): which caption


def _member_filter(scales: Iterable[int]) -> Callable[[str], bool]:
    wanted = {"txt", "captions.json", *(lr_member(s) for s in scales)}
    return lambda ext: ext in wanted or ext.startswith("hr.")


def iter_samples(url: str, opener: Opener, keep: Callable[[str], bool]) -> Iterator[ShardSample]:
    """Stream a tar (mode ``r|``) and group consecutive members by key (basename to first dot)."""
    with opener(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            folder, base = posixpath.split(info.name)
            stem, _, ext = base.partition(".")
            if posixpath.join(folder, stem) != key:
                if key is not None:
                    yield ShardSample(url, key, members)
                key, members = posixpath.join(folder, stem), {}
            if keep(ext):
                members[ext] = tar.extractfile(info).read()
        if key is not None:
            yield ShardSample(url, key, members)


def _lr_bytes(sample: ShardSample, scale: int) -> bytes:
    data = sample.members.get(lr_member(scale))
    if data is None:
        raise ValueError(
            f"{sample.url}: sample {sample.key!r} has no {lr_member(scale)} member; "
            f"the dataset does not have scale x{scale}"
        )
    return data


def _hr_bytes(sample: ShardSample) -> bytes:
    data = next((d for ext, d in sample.members.items() if ext.startswith("hr.")), None)
    if data is None:
        raise ValueError(f"{sample.url}: sample {sample.key!r} has no hr image")
    return data


def sample_captions(sample: ShardSample) -> list[str]:
    if "captions.json" in sample.members:
        captions = json.loads(sample.members["captions.json"])
        if captions:
            return [str(c) for c in captions]
    if "txt" in sample.members:
        return [sample.members["txt"].decode("utf-8")]
    raise ValueError(f"{sample.url}: sample {sample.key!r} has no caption")


def _decode(data: bytes, sample: ShardSample, what: str) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{sample.url}: cannot decode the {what} of sample {sample.key!r}")
    return image[:, :, ::-1]


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> (B, 3, H, W) float32 in [-1, 1]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return batch.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def _decode_batch(scale: int, picks: list[_Pick]) -> dict[str, Any]:
    hrs, lrs, captions = [], [], []
    for pick in picks:
        hr = _decode(_hr_bytes(pick.sample), pick.sample, "hr image")
        lr = _decode(_lr_bytes(pick.sample, scale), pick.sample, lr_member(scale))
        if pick.flip:
            hr, lr = hr[:, ::-1], lr[:, ::-1]
        hrs.append(hr)
        lrs.append(lr)
        options = sample_captions(pick.sample)
        captions.append(options[min(int(pick.caption_u * len(options)), len(options) - 1)])
    keys = [p.sample.key for p in picks]
    return {
        "lr": _to_tensor(lrs),
        "hr": _to_tensor(hrs),
        "captions": captions,
        "keys": keys,
        "scale": scale,
    }


class TrainingBatchStream(IterableDataset):
    """Infinite, seeded, resumable training batches; use ``DataLoader(stream, batch_size=None)``.

    Yields dicts: ``lr`` (B,3,h,w) and ``hr`` (B,3,H,W) float in [-1, 1], ``captions``,
    ``keys`` and ``scale`` (one per batch, drawn from ``scales`` by :meth:`batch_scale`: the
    same on every rank at the same global batch).
    """

    def __init__(
        self,
        urls: list[str],
        scales: list[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        shuffle_buffer: int = 256,
        segment_batches: int = 1000,
        hflip: bool = True,
        random_caption: bool = True,
        opener: Opener | None = None,
    ) -> None:
        if not urls or not scales:
            raise ValueError(f"need shard urls and scales, got {len(urls)} urls, scales {scales}")
        if batch_size < 1 or segment_batches < 1 or start_batch < 0 or seed < 0:
            raise ValueError("batch_size and segment_batches must be >= 1, seed/start_batch >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.urls, self.scales = list(urls), [int(s) for s in scales]
        self.batch_size, self.seed, self.start_batch = batch_size, seed, start_batch
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.segment_batches = shuffle_buffer, segment_batches
        self.hflip, self.random_caption = hflip, random_caption
        self.opener = opener or _open_file

    def batch_scale(self, index: int) -> int:
        """The scale of global batch ``index``: drawn from (seed, index) only, so that every
        rank trains the same scale at a step (DDP reduces the gradients of one head)."""
        if len(self.scales) == 1:
            return self.scales[0]
        rng = np.random.Generator(np.random.PCG64([self.seed, 0x5CA1E, index]))
        return self.scales[int(rng.integers(len(self.scales)))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        local, stream = divmod(self.start_batch + worker, workers)
        segment, offset = divmod(local, self.segment_batches)
        while True:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.rank, stream, segment]))
            first = segment * self.segment_batches * workers + stream  # global index, batch 0
            plans = self._segment_plans(rng, first, workers)
            for _ in range(offset):  # replay the draws of batches already consumed: no decoding
                next(plans)
            for _ in range(self.segment_batches - offset):
                yield _decode_batch(*next(plans))
            plans.close()
            segment, offset = segment + 1, 0

    def _segment_plans(
        self, rng: np.random.Generator, first: int, step: int
    ) -> Iterator[tuple[int, list[_Pick]]]:
        """One segment's batches as (scale, picks), without decoding images; its k-th batch is
        global batch ``first + k * step``."""
        samples = self._resampled_samples(rng)
        for index in itertools.count(first, step):
            scale = self.batch_scale(index)
            picks = []
            for _ in range(self.batch_size):
                sample = next(samples)
                _lr_bytes(sample, scale)  # fail early, also while skipping
                flip = self.hflip and bool(rng.random() < 0.5)
                picks.append(_Pick(sample, flip, rng.random() if self.random_caption else 0.0))
            yield scale, picks

    def _resampled_samples(self, rng: np.random.Generator) -> Iterator[ShardSample]:
        """Samples of shards drawn with replacement, through a seeded shuffle buffer."""
        keep, buffer, empty_reads = _member_filter(self.scales), [], 0
        while True:
            url = self.urls[int(rng.integers(len(self.urls)))]
            count = 0
            for sample in iter_samples(url, self.opener, keep):
                count += 1
                if self.shuffle_buffer <= 1:
                    yield sample
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                else:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], sample = sample, buffer[j]
                    yield sample
            empty_reads = 0 if count else empty_reads + 1
            if empty_reads > 10 * len(self.urls) + 100:
                raise ValueError(f"no samples in the shards {self.urls[:3]}...")


def training_loader(
    urls: list[str],
    scales: list[int],
    data: Any,
    seed: int,
    *,
    rank: int,
    world_size: int,
    start_batch: int,
    opener: Callable[[str], BinaryIO],
) -> torch.utils.data.DataLoader:
    """One rank's :class:`TrainingBatchStream` in a ``DataLoader`` (what ``clipsr train`` and
    ``clipsr pretrain-clip`` read): ``data`` is a job config's ``data`` section (batch_size,
    shuffle_buffer, hflip, loader_workers)."""
    stream = TrainingBatchStream(
        urls,
        scales,
        data.batch_size,
        seed,
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
        shuffle_buffer=data.shuffle_buffer,
        hflip=data.hflip,
        opener=opener,
    )
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=data.loader_workers,
        persistent_workers=data.loader_workers > 0,
    )


def iter_eval_batches(
    urls: list[str],
    scale: int,
    batch_size: int,
    limit: int | None = None,
    opener: Opener | None = None,
) -> Iterator[dict[str, Any]]:
    """Deterministic batches: shards in order, samples in tar order, no augmentation, first
    caption, at most ``limit`` samples, the last partial batch included."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    keep, opener = _member_filter([scale]), opener or _open_file
    samples = itertools.chain.from_iterable(iter_samples(u, opener, keep) for u in urls)
    if limit is not None:
        samples = itertools.islice(samples, limit)
    while picks := [_Pick(s, False, 0.0) for s in itertools.islice(samples, batch_size)]:
        yield _decode_batch(scale, picks)


def read_dataset_manifest(root: str, read_bytes: Callable[[str], bytes] | None = None) -> dict:
    """The dataset's ``manifest.json``, checked for a compatible format version."""
    try:
        manifest = json.loads((read_bytes or _read_file)(_join(root, MANIFEST)))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no shards at {root}: {MANIFEST} missing; run clipsr preprocess first ({exc})"
        ) from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"the shards at {root} were made by an incompatible clipsr version (format "
            f"{version}, this version reads {FORMAT_VERSION}); run clipsr preprocess again"
        )
    return manifest


def manifest_sha256(manifest: dict) -> str:
    """The identity of a shard set: sha256 of its manifest as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def shard_urls(root: str, split: str, manifest: dict) -> list[str]:
    """The URLs of the split's non-empty shards, in manifest order."""
    urls = [
        _join(root, s["tar"])
        for s in manifest.get("shards", [])
        if s["split"] == split and s.get("samples", 1) > 0
    ]
    if not urls:
        splits = sorted({s["split"] for s in manifest.get("shards", [])})
        raise ValueError(f"no shards for split {split!r} at {root} (splits: {splits})")
    return urls


def check_scales(manifest: dict, scales: Iterable[int]) -> None:
    """Raise ValueError if the dataset lacks a requested scale, naming the available ones."""
    available = list(manifest.get("scales", []))
    missing = [s for s in scales if s not in available]
    if missing:
        raise ValueError(
            f"the dataset has no LR images for scale(s) {missing}; available scales: {available}"
        )
