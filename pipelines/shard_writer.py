"""Writes one shard: read, decode, crop, degrade and encode its samples, then commit it.

Pure Python, no Ray: the Ray job runs :func:`write_shard` once per shard on its workers, and the
benchmark runs the same function in a plain loop. A bad sample is skipped with a reason; nothing
else is lost. The shard's files appear in the order tar, parquet, ``_stats.json``; the stats file
is the commit marker, so a crash at any point leaves a shard that a rerun redoes.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import cv2

from clipsr import __version__
from clipsr.degradations import derive_seed, make_lr
from clipsr.images import ImageRejected, decode_image, encode_image, prepare_hr
from clipsr.shards import FORMAT_VERSION, ShardSample, sample_members, sha256_file, write_tar
from pipelines import storage
from pipelines.preprocess_config import PreprocessConfig
from pipelines.sources import SourceSample, load_captions

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+>")


def sample_to_dict(sample: SourceSample) -> dict[str, Any]:
    return asdict(sample)


def sample_from_dict(data: dict[str, Any]) -> SourceSample:
    data = dict(data)
    data["captions"] = tuple(data.get("captions") or ())
    for name in ("bbox", "byte_range"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return SourceSample(**data)


def stable_text(text: str) -> str:
    """``text`` without object addresses (``<_io.BytesIO object at 0x7f...>``), so that reject
    records are the same bytes on every run."""
    return _ADDRESS.sub(">", text)


def stats_uri(output: str, name: str) -> str:
    return storage.join(output, f"{name}_stats.json")


def process_sample(
    sample: SourceSample, key: str, split: str, cfg: PreprocessConfig
) -> tuple[ShardSample | None, dict[str, Any]]:
    """The sample's members, or None and a record with the reason it was rejected."""
    record: dict[str, Any] = {
        "key": key,
        "source_id": sample.source_id,
        "split": split,
        "status": "rejected",
        "reason": None,
        "detail": None,
        "caption": None,
        "num_captions": 0,
        "source_width": None,
        "source_height": None,
        "crop_mode": None,
    }
    try:
        captions, error = load_captions(sample, cfg.storage)
        if error:
            record["reason"] = error
            return None, record
        try:
            data = storage.read_bytes(sample.image, cfg.storage, sample.byte_range)
        except FileNotFoundError as err:
            record.update(reason="image_missing", detail=stable_text(str(err)))
            return None, record
        image = decode_image(data, cfg.max_image_pixels, cfg.min_image_size)
        hr, crop = prepare_hr(image, cfg.hr_size, sample.bbox, cfg.resample)
        lrs, params = {}, {}
        for scale in sorted(cfg.scales):
            lr, used = make_lr(hr, scale, cfg.degradation, derive_seed(cfg.seed, key, scale))
            lrs[scale] = encode_image(lr, "png", png_level=cfg.png_compression)
            params[f"x{scale}"] = used
    except ImageRejected as err:  # what is wrong with this sample; anything else (a bug, a
        # configuration the degradation cannot run) stops the job instead of biasing the data
        record.update(reason=err.reason, detail=stable_text(str(err)))
        return None, record
    meta = {
        "key": key,
        "source_id": sample.source_id,
        "split": split,
        "hr_size": cfg.hr_size,
        "scales": sorted(cfg.scales),
        "crop": crop,
        "degradation": params,
        "num_captions": len(captions),
    }
    hr_bytes = encode_image(hr, cfg.hr_format, cfg.hr_quality, cfg.png_compression)
    members = sample_members(hr_bytes, cfg.hr_format, lrs, list(captions), meta)
    width, height = crop["source_size"]
    record.update(
        status="ok",
        caption=captions[0],
        num_captions=len(captions),
        source_width=width,
        source_height=height,
        crop_mode=crop["mode"],
    )
    return ShardSample(key, members), record


def _parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf, compression="zstd")
    return buf.getvalue()


def write_shard(plan: dict[str, Any], cfg: PreprocessConfig) -> dict[str, Any]:
    """Process and commit the shard described by ``plan`` ({name, split, samples: [{key,
    sample}]}); returns its stats (also written as ``{name}_stats.json``)."""
    cv2.setNumThreads(1)
    start = time.time()
    name, split = plan["name"], plan["split"]
    shard_samples, records = [], []
    for item in plan["samples"]:
        written, record = process_sample(sample_from_dict(item["sample"]), item["key"], split, cfg)
        records.append(record)
        if written is not None:
            shard_samples.append(written)
    with tempfile.TemporaryDirectory(prefix="clipsr-shard-") as tmp:
        tar_path = os.path.join(tmp, f"{name}.tar")
        with open(tar_path, "wb") as f:
            write_tar(f, shard_samples)
        digest, size = sha256_file(tar_path), os.path.getsize(tar_path)
        storage.upload_file(tar_path, storage.join(cfg.output, f"{name}.tar"), cfg.storage)
    storage.write_bytes(
        storage.join(cfg.output, f"{name}.parquet"), _parquet_bytes(records), cfg.storage
    )
    rejects = [r for r in records if r["status"] != "ok"]
    stats = {
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "shard": name,
        "split": split,
        "tar": f"{name}.tar",
        "sha256": digest,
        "bytes": size,
        "samples_in": len(records),
        "written": len(shard_samples),
        "rejected": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "rejects": [{k: r[k] for k in ("key", "source_id", "reason", "detail")} for r in rejects],
        "duration_s": round(time.time() - start, 3),
    }
    storage.write_bytes(
        stats_uri(cfg.output, name), json.dumps(stats, indent=1).encode(), cfg.storage
    )
    return stats
