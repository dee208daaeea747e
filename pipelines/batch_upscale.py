"""Batch upscaling on Ray Data: a folder of LR images or a shard set (local or ``s3://``) -> SR
files or SR shards (local or ``s3://``). The driver checks inputs, output and model before Ray
starts (:class:`BatchConfigError`), pins ``models:/NAME@ALIAS`` to its version (every actor loads
the same model even if the alias moves) and cuts the inputs into chunks: ``samples_per_chunk``
of a folder's images in name order, or one per shard of a shard set's split. Ray Data streams
one row per chunk through three steps:
1. read (tasks; fused into the actors on CPU): decode the LR images; caption = the same-stem
   ``.txt``'s first line or the sample's first caption, else ``prompt``;
2. upscale (actor pool, ``map_batches``): the model loaded once per actor (one GPU each with
   ``gpu``); images of one size go through together, ``batch_size`` at a time;
3. write (tasks): ``<out>/<name>_x{s}.png`` files, or one tar per chunk of ``KEY.sr_x{s}.png``,
   ``KEY.txt``, ``KEY.json`` (:func:`clipsr.shards.write_tar`: reproducible, webdataset-readable).
Bad inputs (undecodable, a size the model does not take, no caption and no ``prompt``) are
skipped and listed with their reason in ``<out>/skipped.jsonl``; also written: ``upscaled.jsonl``
(files) or ``sizes.json`` (shards).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from clipsr.images import ImageRejected, decode_image
from clipsr.shard_dataset import iter_samples
from clipsr.shards import SIZES, ShardSample, lr_member, sample_key, write_tar
from pipelines import storage
from pipelines.cluster_guard import check_cluster_paths, local_path
from pipelines.local_paths import blocking_file
from pipelines.ray_cluster import init_ray
from pipelines.sources.base import CAPTION_MISSING, captions_from_bytes, strip_ext
from pipelines.sources.folder import FolderSource
from pipelines.storage import StorageOptions

SKIPPED, UPSCALED = "skipped.jsonl", "upscaled.jsonl"
COLUMNS = ("chunk", "meta", "blob")


class BatchConfigError(ValueError):
    """Bad inputs, output or model: raised before any work starts."""


@dataclass
class BatchUpscaleResult:
    written: int
    skipped: int
    out: str
    model_uri: str = ""  # the pinned URI the actors loaded
    scale: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class BatchUpscaleConfig:
    """The options of :func:`run_batch_upscale`; resolved, it is what the Ray workers get."""

    model_uri: str
    out: str
    input_dir: str | None = None
    shards: str | None = None
    split: str = "test"
    prompt: str | None = None  # the caption of inputs without one
    out_format: str = "files"  # or "shards"
    scale: int | None = None  # default: the model's
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI
    endpoint_url: str | None = None  # default: AWS_ENDPOINT_URL(_S3), resolved on the driver
    gpu: bool | None = None  # one GPU per actor; default: when torch sees one
    concurrency: int | None = None  # a fixed actor pool; default 1 up to the GPUs (or CPUs / 2)
    batch_size: int = 8
    samples_per_chunk: int = 64
    use_ray: bool = True  # False: the same steps in this process
    shared_filesystem: bool = False  # local paths: mounted alike on every Ray node (checked)
    device: str | None = None  # without Ray; default: cuda if present
    progress: bool = True

    @property
    def opts(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url or "")


# -- checks and plan (driver) ------------------------------------------------------------------
def _plan_folder(cfg: BatchUpscaleConfig) -> tuple[list[dict], list[dict]]:
    try:
        listed = list(FolderSource(cfg.input_dir, cfg.opts).list_samples())
    except FileNotFoundError as err:
        raise BatchConfigError(f"--input-dir: {err}") from None
    if not listed:
        raise BatchConfigError(f"--input-dir: no images in {cfg.input_dir}")
    items, skipped, seen = [], [], set()
    for s in listed:
        name = strip_ext(s.source_id)
        if name in seen:  # a.png and a.jpg would both write a_x4.png
            skipped.append({"input": s.image, "reason": "duplicate_name", "detail": name})
            continue
        seen.add(name)
        key = sample_key(s.source_id)
        items.append({"name": name, "key": key, "image": s.image, "text": s.caption_uri or ""})
    n = cfg.samples_per_chunk
    chunks = [(f"sr-{i // n:06d}", items[i : i + n], "") for i in range(0, len(items), n)]
    return [{"chunk": c, "items": i, "url": u} for c, i, u in chunks], skipped


def _plan_shards(cfg: BatchUpscaleConfig) -> tuple[list[dict], dict]:
    from clipsr.shard_dataset import read_dataset_manifest, shard_urls

    try:
        manifest = read_dataset_manifest(cfg.shards, lambda u: storage.read_bytes(u, cfg.opts))
        urls = shard_urls(cfg.shards, cfg.split, manifest)
    except (FileNotFoundError, ValueError) as err:
        raise BatchConfigError(f"--shards: {err}") from None
    counts = {s["tar"]: s.get("samples", 0) for s in manifest["shards"]}
    tars = [u.rsplit("/", 1)[-1] for u in urls]
    chunks = [{"chunk": t[:-4], "items": counts.get(t, 0), "url": u} for t, u in zip(tars, urls)]
    return chunks, manifest


def _check_model(cfg: BatchUpscaleConfig):
    """(pinned URI, resolver on the CPU): ``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``."""
    from clipsr.checkpoint import CheckpointError
    from jobs.tracking import ModelNotFound, TrackingUnavailable, check_tracking_uri, load_resolver

    uri = cfg.model_uri
    pinned = uri if ":/" in uri else os.path.abspath(uri)
    try:
        if uri.startswith(("models:", "runs:")):
            if not cfg.tracking_uri:
                raise ModelNotFound(f"{uri}: no tracking URI (set MLFLOW_TRACKING_URI)")
            check_tracking_uri(cfg.tracking_uri)
        if alias := re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri):
            import mlflow

            try:
                client = mlflow.MlflowClient(cfg.tracking_uri)
                version = client.get_model_version_by_alias(*alias.groups()).version
            except mlflow.exceptions.MlflowException as err:
                raise ModelNotFound(f"cannot resolve {uri}: {err.message}") from None
            pinned = f"models:/{alias[1]}/{version}"
        resolver = load_resolver(pinned, "cpu", tracking_uri=cfg.tracking_uri)
    except (CheckpointError, ModelNotFound, TrackingUnavailable) as err:
        raise BatchConfigError(f"--model: {err}") from None
    if cfg.scale is not None and cfg.scale != resolver.scale:
        raise BatchConfigError(
            f"--scale {cfg.scale} but {uri} is a {resolver.scale}x model; "
            f"pass --scale {resolver.scale} or another model"
        )
    return pinned, resolver


# -- a chunk: its samples as JSON, their images packed into one byte string ---------------------
class _Chunk:
    def __init__(self, name: str):
        self.name, self.samples, self.parts, self.size = name, [], [], 0

    def add(self, sample: dict, image: np.ndarray | None = None) -> None:
        sample = {k: v for k, v in sample.items() if k not in ("offset", "shape")}
        if image is not None:
            sample |= {"offset": self.size, "shape": list(image.shape)}
            self.parts.append(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
            self.size += len(self.parts[-1])
        self.samples.append({"i": len(self.samples), **sample})

    def row(self) -> dict[str, Any]:
        return {"chunk": self.name, "meta": json.dumps(self.samples), "blob": b"".join(self.parts)}

    @staticmethod
    def image(sample: dict, blob: bytes) -> np.ndarray:
        (h, w, c), start = sample["shape"], sample["offset"]
        return np.frombuffer(blob[start : start + h * w * c], np.uint8).reshape(h, w, c)


# -- step 1: read ------------------------------------------------------------------------------
def _add(chunk: _Chunk, sample: dict, data: bytes, text: bytes | None, prompt: str) -> None:
    """Decode the image and find the caption (its file's first line, else the prompt)."""
    try:
        image = decode_image(data, min_size=1)
    except ImageRejected as err:
        detail = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))  # reproducible
        chunk.add(sample | {"reason": err.reason, "detail": detail})
        return
    captions, reason = captions_from_bytes(text) if text is not None else ((), None)
    if captions or (prompt and reason in (None, CAPTION_MISSING)):
        caption, source = (captions[0], "caption") if captions else (prompt, "prompt")
        chunk.add(sample | {"caption": caption, "caption_from": source}, image)
    else:
        undecodable = reason not in (None, CAPTION_MISSING)
        detail = "the caption file is not UTF-8" if undecodable else "no caption and no --prompt"
        chunk.add(sample | {"reason": reason or CAPTION_MISSING, "detail": detail})


def read_chunk(row: dict[str, Any], cfg: BatchUpscaleConfig) -> dict[str, Any]:
    """Step 1 (a Ray task): the chunk's LR images decoded and captioned, in input order."""
    chunk, prompt, url = _Chunk(row["chunk"]), cfg.prompt or "", row["url"]
    if not url:  # a folder's images
        for item in json.loads(row["items"]):
            sample = {"input": item["image"], "name": item["name"], "key": item["key"]}
            try:
                data = storage.read_bytes(item["image"], cfg.opts)
                text = storage.read_bytes(item["text"], cfg.opts) if item["text"] else None
            except FileNotFoundError as err:
                chunk.add(sample | {"reason": "missing_file", "detail": str(err)})
                continue
            _add(chunk, sample, data, text, prompt)
        return chunk.row()
    lr = lr_member(cfg.scale)
    try:  # a shard's samples, in tar order
        keep = {lr, "txt"}.__contains__
        for s in iter_samples(url, lambda u: storage.open_read(u, cfg.opts), keep):
            sample = {"input": f"{url}#{s.key}", "name": s.key, "key": s.key}
            if lr not in s.members:
                chunk.add(sample | {"reason": "lr_missing", "detail": f"no {lr} member"})
            else:
                _add(chunk, sample, s.members[lr], s.members.get("txt"), prompt)
    except (tarfile.TarError, OSError, EOFError) as err:
        chunk.add({"input": url, "name": url, "reason": "unreadable_shard", "detail": str(err)})
    return chunk.row()


# -- step 2: upscale ---------------------------------------------------------------------------
class ChunkUpscaler:
    """Step 2 (a Ray actor): loads the model once, then upscales chunks."""

    def __init__(self, cfg: BatchUpscaleConfig, device: str, resolver: Any = None):
        from jobs.tracking import load_resolver  # the registry client lives with the jobs

        self.batch_size, uri = cfg.batch_size, cfg.model_uri
        self.resolver = resolver or load_resolver(uri, device, tracking_uri=cfg.tracking_uri)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self.upscale(dict(zip(COLUMNS, v))) for v in zip(*(batch[k] for k in COLUMNS))]
        return {k: [r[k] for r in rows] for k in COLUMNS}

    def upscale(self, row: dict[str, Any]) -> dict[str, Any]:
        import torch

        from clipsr.metrics import tensor_to_uint8

        samples, blob = json.loads(row["meta"]), bytes(row["blob"])
        out, groups = _Chunk(str(row["chunk"])), {}
        for sample in samples:
            if "shape" in sample:
                try:
                    h, w, _ = sample["shape"]
                    self.resolver.check_size(w, h, name=sample["input"])
                    groups.setdefault(tuple(sample["shape"]), []).append(sample)
                    continue
                except ValueError as err:
                    sample |= {"reason": "wrong_size", "detail": str(err)}
            out.add(sample)
        for group in groups.values():
            for i in range(0, len(group), self.batch_size):
                part = group[i : i + self.batch_size]
                lr = torch.from_numpy(np.stack([_Chunk.image(s, blob) for s in part]))
                lr = lr.permute(0, 3, 1, 2).float() / 127.5 - 1
                sr = self.resolver.upscale_tensor(lr, [s["caption"] for s in part])
                for sample, image in zip(part, tensor_to_uint8(sr)):
                    out.add(sample | {"lr_size": sample["shape"][1::-1]}, image)
        out.samples.sort(key=lambda s: s["i"])  # back to input order
        return out.row()


# -- step 3: write -----------------------------------------------------------------------------
def write_chunk(row: dict[str, Any], cfg: BatchUpscaleConfig) -> dict[str, Any]:
    """Step 3 (a Ray task): the chunk's SR images as files, or as one tar shard."""
    samples, blob = json.loads(row["meta"]), bytes(row["blob"])
    tar_uri = storage.join(cfg.out, f"{row['chunk']}.tar")
    written, skipped, shard = [], [], []
    for s in samples:
        if "shape" not in s:
            skipped.append({k: s.get(k) for k in ("input", "reason", "detail")})
            continue
        rgb = _Chunk.image(s, blob)
        png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()
        record = {"input": s["input"], "caption": s["caption"]}
        if cfg.out_format == "files":
            record["output"] = storage.join(cfg.out, f"{s['name']}_x{cfg.scale}.png")
            storage.write_bytes(record["output"], png, cfg.opts)
        else:
            meta = {k: s[k] for k in ("caption", "caption_from", "lr_size")}
            meta |= {"source": s["input"], "scale": cfg.scale, "model": cfg.model_uri}
            members = {f"sr_x{cfg.scale}.png": png, "txt": s["caption"].encode("utf-8")}
            members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
            shard.append(ShardSample(s["key"], members))
            record["output"] = f"{tar_uri}#{s['key']}"
        written.append(record)
    if shard:
        buf = io.BytesIO()
        write_tar(buf, shard)
        storage.write_bytes(tar_uri, buf.getvalue(), cfg.opts)
    return {"chunk": row["chunk"], "result": json.dumps({"written": written, "skipped": skipped})}


# -- the job -----------------------------------------------------------------------------------
def _ray_results(rows: list[dict], cfg: BatchUpscaleConfig):
    import ray

    started = not ray.is_initialized()
    init_ray("", log_to_driver=False)
    reads = {"--input-dir": cfg.input_dir, "--shards": cfg.shards}
    reads["--model"], switch = local_path(cfg.model_uri), "--shared-filesystem"
    check_cluster_paths(ray, switch, cfg.shared_filesystem, reads, {"--out": cfg.out})
    resources = ray.cluster_resources()
    if cfg.gpu and started and resources.get("GPU", 0) < 1:
        raise BatchConfigError("--gpu: the local Ray instance has no GPU")
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job shows its own
    if cfg.concurrency:
        pool = ray.data.ActorPoolStrategy(size=cfg.concurrency)
    else:  # CPU actors get one thread each (Ray sets OMP_NUM_THREADS to num_cpus)
        most = resources.get("GPU", 0) if cfg.gpu else resources.get("CPU", 2) // 2
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(most)))
    ds = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .map(read_chunk, fn_kwargs={"cfg": cfg})
        .map_batches(
            ChunkUpscaler,
            batch_size=1,
            compute=pool,
            fn_constructor_args=(cfg, "cuda" if cfg.gpu else "cpu"),
            num_gpus=1 if cfg.gpu else None,
        )
        .map(write_chunk, fn_kwargs={"cfg": cfg})
    )
    yield from ds.iter_rows()


def run_batch_upscale(model_uri: str, out: str, **options: Any) -> BatchUpscaleResult:
    """Upscale a folder (``input_dir=``) or a shard set's ``split`` (``shards=``) into ``out``;
    ``options`` are the fields of :class:`BatchUpscaleConfig`. See the module docstring."""
    import torch
    from tqdm import tqdm

    start, cfg = time.time(), BatchUpscaleConfig(model_uri, out, **options)
    if cfg.out_format not in ("files", "shards"):
        raise BatchConfigError(f"--out-format: {cfg.out_format!r} is not files or shards")
    if (cfg.input_dir is None) == (cfg.shards is None):
        raise BatchConfigError("give exactly one of --input-dir and --shards")
    if min(cfg.batch_size, cfg.samples_per_chunk, cfg.concurrency or 1) < 1:
        raise BatchConfigError("batch_size, samples_per_chunk and concurrency must be >= 1")
    cfg.endpoint_url = storage.resolve_endpoint(cfg.endpoint_url or "")  # what workers get
    cfg.tracking_uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    for name in ("input_dir", "shards", "out"):  # the Ray workers may run elsewhere
        if (path := getattr(cfg, name)) is not None and not storage.is_remote(path):
            setattr(cfg, name, os.path.abspath(path))
    if cfg.input_dir:
        chunks, skipped = _plan_folder(cfg)
    else:
        (chunks, manifest), skipped = _plan_shards(cfg), []
    if (taken := blocking_file(cfg.out)) is not None:  # out appears with its first file
        raise BatchConfigError(f"--out: {taken} exists and is not a directory")
    try:
        storage.exists(storage.join(cfg.out, SKIPPED), cfg.opts)  # a missing bucket raises
    except (FileNotFoundError, OSError) as err:
        raise BatchConfigError(f"--out: {err}") from None
    cfg.model_uri, resolver = _check_model(cfg)
    if cfg.shards and resolver.scale not in manifest.get("scales", []):
        scales = manifest.get("scales")
        raise BatchConfigError(f"--shards: no x{resolver.scale} LR images (scales: {scales})")
    cfg.scale = resolver.scale
    cfg.gpu = torch.cuda.is_available() if cfg.gpu is None else cfg.gpu
    rows = [{**c, "items": json.dumps(c["items"])} for c in chunks]
    if cfg.use_ray:
        del resolver  # the actors load their own
        results = _ray_results(rows, cfg)
    else:
        device = cfg.device or ("cuda" if cfg.gpu else "cpu")
        upscaler = ChunkUpscaler(cfg, device, resolver if device == "cpu" else None)
        results = (write_chunk(upscaler.upscale(read_chunk(r, cfg)), cfg) for r in rows)
    total = sum(c["items"] if c["url"] else len(c["items"]) for c in chunks)
    bar = tqdm(total=total, unit="image", desc="upscale", disable=not cfg.progress)
    written = []
    for row in results:
        result = json.loads(row["result"])
        written += result["written"]
        skipped += result["skipped"]
        bar.update(len(result["written"]) + len(result["skipped"]))
        bar.set_postfix(written=len(written), skipped=len(skipped))
    bar.close()
    _finish(cfg, written, skipped)
    reasons = dict(sorted(Counter(s["reason"] for s in skipped).items()))
    return BatchUpscaleResult(
        len(written), len(skipped), cfg.out, cfg.model_uri, cfg.scale, reasons, time.time() - start
    )


def _finish(cfg: BatchUpscaleConfig, written: list[dict], skipped: list[dict]) -> None:
    def jsonl(records: list[dict]) -> bytes:
        lines = sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
        return "".join(line + "\n" for line in lines).encode()

    storage.write_bytes(storage.join(cfg.out, SKIPPED), jsonl(skipped), cfg.opts)
    if cfg.out_format == "files":
        storage.write_bytes(storage.join(cfg.out, UPSCALED), jsonl(written), cfg.opts)
    else:
        sizes = Counter(r["output"].rpartition("#")[0].rpartition("/")[2] for r in written)
        sizes_json = json.dumps(dict(sorted(sizes.items())), indent=1).encode()
        storage.write_bytes(storage.join(cfg.out, SIZES), sizes_json, cfg.opts)
