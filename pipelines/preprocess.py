"""The ``clipsr preprocess`` job: a captioned corpus -> WebDataset shards, on Ray Data.

1. Plan (driver, metadata only): list the source, give each sample a stable key (from its
   source id) and split (the dataset's own, else a hash of the source id), sort by key and cut
   each split into evenly sized shards. The plan depends only on the corpus and the config, never
   on worker count or order, so shard contents (and bytes) are reproducible.
2. Write (Ray Data, streaming): one row per task of uncommitted shards (several small shards
   to a task, :func:`task_groups`); ``flat_map`` runs :func:`pipelines.shard_writer.write_shard`
   for each on the workers, which read the images, write the shard straight to the destination
   (local or S3) and commit it with ``_stats.json``.
3. Finish (driver): manifest.json, sizes.json and rejects.jsonl from every shard's stats.

A rerun skips committed shards; ``overwrite`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsr import __version__
from clipsr.config_loader import ConfigError, to_dict
from clipsr.shards import FORMAT_VERSION, MANIFEST, REJECTS, SIZES, sample_key, shard_name
from pipelines import storage
from pipelines.preprocess_config import PreprocessConfig
from pipelines.shard_writer import sample_to_dict, stats_uri, write_shard
from pipelines.sources import build_source, validate

log = logging.getLogger("clipsr.preprocess")
SPLITS = ("train", "val", "test")


@dataclass
class PreprocessSummary:
    samples_in: int = 0
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    output: str = ""
    total_written: int = 0  # samples in the dataset (this run's and committed shards')

    @property
    def samples_per_second(self) -> float:
        return self.samples_in / self.seconds if self.seconds else 0.0


def config_hash(cfg: PreprocessConfig) -> str:
    """Hash of everything that changes shard contents (not where or how fast they are made)."""
    data = to_dict(cfg)
    for key in ("output", "storage", "ray_address", "concurrency", "overwrite"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def hash_split(source_id: str, cfg: PreprocessConfig) -> str:
    u = int(hashlib.sha256(f"split:{source_id}".encode()).hexdigest()[:15], 16) / 16**15
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def _split_name(split: str | None, source_id: str, cfg: PreprocessConfig) -> str:
    if split is None:
        return hash_split(source_id, cfg)
    split = split.lower()
    return {"validation": "val", "valid": "val", "dev": "val"}.get(split, split)


def shard_sizes(count: int, per_shard: int, min_shards: int) -> list[int]:
    """Evenly sized shards (sizes differ by at most one: no tiny tail shard)."""
    if count == 0:
        return []
    n = max(math.ceil(count / per_shard), min(min_shards, count))
    base, extra = divmod(count, n)
    return [base + 1 if i < extra else base for i in range(n)]


def plan_shards(cfg: PreprocessConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shard plans ({name, split, samples: [{key, sample}]}) and samples rejected while planning
    (duplicate source ids)."""
    source = build_source(cfg.source, cfg.storage)
    by_split: dict[str, dict[str, dict[str, Any]]] = {}
    duplicates = []
    for n, sample in enumerate(source.list_samples()):
        if cfg.max_samples and n >= cfg.max_samples:
            break
        key = sample_key(sample.source_id)
        split = _split_name(sample.split, sample.source_id, cfg)
        bucket = by_split.setdefault(split, {})
        if key in bucket or any(key in other for other in by_split.values()):
            duplicates.append(
                {
                    "key": key,
                    "source_id": sample.source_id,
                    "reason": "duplicate_source_id",
                    "detail": None,
                }
            )
            continue
        bucket[key] = {"key": key, "sample": sample_to_dict(sample)}
    plans = []
    for split in sorted(by_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s)):
        items = [by_split[split][k] for k in sorted(by_split[split])]
        start = 0
        for index, size in enumerate(
            shard_sizes(len(items), cfg.samples_per_shard, cfg.min_shards_per_split)
        ):
            name = shard_name(split, index)
            plans.append({"name": name, "split": split, "samples": items[start : start + size]})
            start += size
    return plans, duplicates


def _read_json(uri: str, cfg: PreprocessConfig) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri, cfg.storage))
    except FileNotFoundError:
        return None


def check_output(cfg: PreprocessConfig, chash: str) -> None:
    """Refuse to mix shards of another config or format into an existing dataset."""
    manifest = _read_json(storage.join(cfg.output, MANIFEST), cfg)
    if manifest is None or cfg.overwrite:
        return
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("config_hash") != chash:
        raise ConfigError(
            f"output: {cfg.output} holds a dataset made with another config or format "
            f"(config {manifest.get('config_hash')}, format {manifest.get('format_version')}; "
            f"now {chash}, {FORMAT_VERSION}); choose another output or pass --overwrite"
        )


WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _init_ray(cfg: PreprocessConfig):
    """Ray for the job. A local Ray started here gets the workers' variables through the
    environment it is started with (its workers inherit it), not through a job runtime_env: a
    runtime_env makes Ray start new workers for the job's tasks instead of using the ones it
    prestarted, a fixed cost of several seconds on a small machine. A cluster's workers get
    them from the job's runtime_env."""
    from pipelines.ray_cluster import cluster_address, init_ray

    if cluster_address(cfg.ray_address) not in ("", "local"):
        return init_ray(cfg.ray_address, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        return init_ray(cfg.ray_address, log_to_driver=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_preprocess(cfg: PreprocessConfig, progress: bool = True) -> PreprocessSummary:
    """Run the job (see the module docstring); returns the summary of this run."""
    cfg.validate()
    cfg.storage = cfg.storage.resolved()  # the workers get the driver's endpoint and region
    validate(cfg.source, cfg.storage)  # fail fast: paths and layout, before any work
    chash = config_hash(cfg)
    check_output(cfg, chash)
    attributes = load_attributes(cfg)
    start = time.time()
    plans, duplicates = plan_shards(cfg)
    if not plans:
        raise ConfigError(f"source.path: no samples found in {cfg.source.path}")
    if cfg.overwrite:
        for uri in [storage.join(cfg.output, MANIFEST)] + [
            stats_uri(cfg.output, p["name"]) for p in plans
        ]:
            storage.delete(uri, cfg.storage)
    todo = [p for p in plans if not storage.exists(stats_uri(cfg.output, p["name"]), cfg.storage)]
    log.info(
        "%d shards planned, %d to write, %d already committed",
        len(plans),
        len(todo),
        len(plans) - len(todo),
    )
    summary = PreprocessSummary(
        shards=len(plans), shards_skipped=len(plans) - len(todo), output=cfg.output
    )
    if todo:
        _write_with_ray(cfg, todo, summary, progress)
    manifest = _finish(cfg, plans, duplicates, chash, attributes)
    summary.total_written = sum(c["samples"] for c in manifest["splits"].values())
    summary.rejected = dict(sorted(Counter(summary.rejected).items()))
    summary.seconds = time.time() - start
    return summary


def _write_with_ray(cfg: PreprocessConfig, todo: list[dict[str, Any]], summary, progress: bool):
    from tqdm import tqdm

    ray = _init_ray(cfg)
    cfg_dict = to_dict(cfg)
    writers = cfg.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
    rows = [{"plans": json.dumps(group)} for group in task_groups(todo, writers)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).flat_map(
        _write_shards,
        fn_kwargs={"cfg_dict": cfg_dict},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None,
    )
    total = sum(len(p["samples"]) for p in todo)
    bar = tqdm(total=total, unit="sample", disable=not progress, desc="preprocess")
    rejected: Counter = Counter()
    for row in ds.iter_rows():
        stats = json.loads(row["stats"])
        summary.samples_in += stats["samples_in"]
        summary.written += stats["written"]
        rejected.update(stats["rejected"])
        bar.update(stats["samples_in"])
        bar.set_postfix(written=summary.written, rejected=sum(rejected.values()))
    bar.close()
    summary.rejected = dict(rejected)


TASK_MIN_SAMPLES = 1000  # a Ray task gets consecutive shards until it holds this many samples


def task_groups(plans: list[dict[str, Any]], writers: int) -> list[list[dict[str, Any]]]:
    """The shards of each Ray task, in plan order. Small shards (a small corpus, or a small
    ``samples_per_shard``) go several to a task, up to about ``TASK_MIN_SAMPLES`` samples, so
    that the job pays each task's fixed costs fewer times; never fewer than two tasks per writer
    (so that the last tasks still balance the writers). Shards of that size or more stay one per
    task. Each shard is still written and committed on its own: contents, bytes and resume
    do not depend on the grouping."""
    if not plans:
        return []
    sizes = [len(p["samples"]) for p in plans]
    by_samples = max(1, math.ceil(TASK_MIN_SAMPLES / max(1, max(sizes))))
    by_balance = max(1, len(plans) // (2 * max(1, writers)))
    per_task = min(by_samples, by_balance)
    return [plans[i : i + per_task] for i in range(0, len(plans), per_task)]


def _write_shards(row: dict[str, Any], cfg_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Data flat_map function: a task's shards, one after the other (runs on a worker);
    one output row per shard."""
    from clipsr.config_loader import from_dict

    cfg = from_dict(PreprocessConfig, cfg_dict)
    out = []
    for plan in json.loads(row["plans"]):
        stats = write_shard(plan, cfg)
        out.append({"name": plan["name"], "stats": json.dumps(stats)})
    return out


def load_attributes(cfg: PreprocessConfig) -> dict[str, Any] | None:
    """The corpus's attribute declaration (``attributes`` or ``source.path/attributes.json``),
    validated before any work; None when there is none."""
    from clipsr.adherence import KIND, ShapeAttributes

    uri = cfg.attributes or storage.join(cfg.source.path, "attributes.json")
    try:
        data = json.loads(storage.read_bytes(uri, cfg.storage))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        if cfg.attributes:
            raise ConfigError(f"attributes: file not found: {cfg.attributes}") from None
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"attributes: {uri} is not valid JSON ({err})") from None
    if isinstance(data, dict) and data.get("kind") == KIND:
        try:
            ShapeAttributes.from_dict(data)
        except ValueError as err:
            raise ConfigError(f"attributes ({uri}): {err}") from None
        wanted = data.get("degradation")
        if wanted and wanted != cfg.degradation.kind:
            log.warning(
                "%s declares degradation %r but degradation.kind is %r: the LR may show what "
                "only the caption should tell",
                uri,
                wanted,
                cfg.degradation.kind,
            )
    return data


def _finish(cfg, plans, duplicates, chash, attributes=None) -> dict[str, Any]:
    """Manifest, sizes and rejects from every shard's committed stats (this run's and earlier);
    returns the manifest."""
    shards, rejects = [], list(duplicates)
    counts: dict[str, dict[str, int]] = {}
    for plan in plans:
        stats = _read_json(stats_uri(cfg.output, plan["name"]), cfg)
        if stats is None:
            raise RuntimeError(f"shard {plan['name']} has no commit marker after the run")
        shards.append(
            {k: stats[k] for k in ("shard", "split", "tar", "sha256", "bytes")}
            | {"samples": stats["written"]}
        )
        rejects.extend(stats["rejects"])
        c = counts.setdefault(stats["split"], {"samples": 0, "shards": 0, "rejected": 0})
        c["samples"] += stats["written"]
        c["shards"] += 1
        c["rejected"] += stats["samples_in"] - stats["written"]
    storage.write_bytes(
        storage.join(cfg.output, REJECTS),
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode(),
        cfg.storage,
    )
    storage.write_bytes(
        storage.join(cfg.output, SIZES),
        json.dumps({s["tar"]: s["samples"] for s in shards}, indent=1).encode(),
        cfg.storage,
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "config_hash": chash,
        "config": to_dict(cfg),
        "splits": counts,
        "rejected_total": len(rejects),
        "scales": sorted(cfg.scales),
        "hr_size": cfg.hr_size,
        "shards": shards,
    }
    if attributes is not None:
        manifest["attributes"] = attributes
    storage.write_bytes(
        storage.join(cfg.output, MANIFEST), json.dumps(manifest, indent=1).encode(), cfg.storage
    )
    return manifest
