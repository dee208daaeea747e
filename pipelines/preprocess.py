"""The ``clipsr preprocess`` job: a captioned corpus -> WebDataset shards, on Ray Data.

1. Plan (driver, metadata only, :mod:`pipelines.preprocess_plan`): list the source, give each
   sample a stable key (from its source id) and split (the dataset's own, else a hash of the
   source id), sort by key and cut each split into evenly sized shards, in memory that does not
   grow with the corpus. The plan depends only on the corpus and the config, never on worker
   count or order, so shard contents (and bytes) are reproducible. ``--plan-only`` stops here.
2. Write (Ray Data, streaming): the committed shards are found with one listing; each other
   shard gets a plan file beside the output; one row per task of shards (several small shards
   to a task, :func:`task_groups`) with their plan files' URIs; ``flat_map`` runs
   :func:`pipelines.shard_writer.write_shard` for each on the workers, which read the images,
   write the shard straight to the destination and commit it with ``_stats.json``.
3. Finish (driver): manifest.json, sizes.json and rejects.jsonl from every shard's stats; the
   plan files are deleted.

A rerun skips committed shards; ``overwrite`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsr import __version__
from clipsr.config_loader import ConfigError, to_dict
from clipsr.shards import FORMAT_VERSION, MANIFEST, REJECTS, SIZES
from pipelines import storage
from pipelines.cluster_guard import check_cluster_paths
from pipelines.preprocess_config import PreprocessConfig
from pipelines.preprocess_plan import (  # noqa: F401 (shard_sizes: part of this module's API)
    PLAN_DIR,
    Plan,
    ShardPlan,
    plan_preprocess,
    plan_uri,
    read_shard_plan,
    shard_sizes,
    write_plan_files,
)
from pipelines.shard_writer import stats_uri, write_shard
from pipelines.sources import validate

log = logging.getLogger("clipsr.preprocess")
STATS_SUFFIX = "_stats.json"


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
    listed: int = 0
    duplicates: int = 0
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # samples, shards
    planning_seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples_in / self.seconds if self.seconds else 0.0


def config_hash(cfg: PreprocessConfig) -> str:
    """Hash of everything that changes shard contents (not where or how fast they are made)."""
    data = to_dict(cfg)
    for key in (
        "output",
        "storage",
        "ray_address",
        "concurrency",
        "overwrite",
        "shared_filesystem",
    ):
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


def run_preprocess(
    cfg: PreprocessConfig, progress: bool = True, plan_only: bool = False
) -> PreprocessSummary:
    """Run the job (see the module docstring); returns the summary of this run. ``plan_only``:
    plan, count and stop (no Ray, nothing written)."""
    cfg.validate()
    cfg.storage = cfg.storage.resolved()  # the workers get the driver's endpoint and region
    if not storage.is_remote(cfg.output):  # the workers run elsewhere: an absolute path
        cfg.output = os.path.abspath(cfg.output)
    validate(cfg.source, cfg.storage)  # fail fast: paths and layout, before any work
    chash = config_hash(cfg)
    check_output(cfg, chash)
    attributes = load_attributes(cfg)
    if not plan_only:
        reads, writes = {"source.path": cfg.source.path}, {"output": cfg.output}
        ray = _init_ray(cfg)
        check_cluster_paths(ray, "shared_filesystem", cfg.shared_filesystem, reads, writes)
    start = time.time()
    plan = plan_preprocess(cfg)
    try:
        if not plan.shards:
            raise ConfigError(f"source.path: no samples found in {cfg.source.path}")
        summary = PreprocessSummary(shards=len(plan.shards), output=cfg.output)
        summary.listed, summary.duplicates = plan.listed, plan.duplicates
        for shard in plan.shards:
            counts = summary.splits.setdefault(shard.split, {"samples": 0, "shards": 0})
            counts["samples"] += shard.samples
            counts["shards"] += 1
        summary.planning_seconds = time.time() - start
        if plan_only:
            return summary
        committed = _committed(cfg)
        if cfg.overwrite:
            stale = [stats_uri(cfg.output, s.name) for s in plan.shards if s.name in committed]
            for uri in [storage.join(cfg.output, MANIFEST), *stale]:
                storage.delete(uri, cfg.storage)
            committed = set()
        todo = [s for s in plan.shards if s.name not in committed]
        summary.shards_skipped = len(plan.shards) - len(todo)
        log.info(
            "%d shards planned, %d to write, %d already committed",
            len(plan.shards), len(todo), summary.shards_skipped,
        )  # fmt: skip
        if todo:
            write_plan_files(plan, cfg, {s.name for s in todo})
            _write_with_ray(cfg, todo, summary, progress)
        manifest = _finish(cfg, plan, chash, attributes)
        summary.total_written = sum(c["samples"] for c in manifest["splits"].values())
        storage.delete_tree(storage.join(cfg.output, PLAN_DIR), cfg.storage)
    finally:
        plan.close()
    summary.rejected = dict(sorted(Counter(summary.rejected).items()))
    summary.seconds = time.time() - start
    return summary


def _committed(cfg: PreprocessConfig) -> set[str]:
    """The shards with a commit marker, from one listing of the output."""
    try:
        uris = storage.list_files(cfg.output, cfg.storage, suffixes=(STATS_SUFFIX,))
    except FileNotFoundError:  # no output directory yet
        return set()
    prefix = cfg.output.rstrip("/") + "/"
    return {u[len(prefix) : -len(STATS_SUFFIX)] for u in uris if u.startswith(prefix)}


def _write_with_ray(cfg: PreprocessConfig, todo: list[ShardPlan], summary, progress: bool):
    from tqdm import tqdm

    ray = _init_ray(cfg)
    cfg_dict = to_dict(cfg)
    writers = cfg.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
    rows = [
        {"shards": json.dumps([[s.name, s.split, plan_uri(cfg.output, s.name)] for s in group])}
        for group in task_groups(todo, writers)
    ]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).flat_map(
        _write_shards,
        fn_kwargs={"cfg_dict": cfg_dict},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None,
    )
    total = sum(s.samples for s in todo)
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
TASKS_PER_WRITER = 4  # at least, so that the last tasks balance the writers


def task_groups(shards: list[ShardPlan], writers: int) -> list[list[ShardPlan]]:
    """The shards of each Ray task, in plan order. Small shards (a small corpus, or a small
    ``samples_per_shard``) go several to a task, up to about ``TASK_MIN_SAMPLES`` samples, so
    that the job pays each task's fixed costs fewer times; never fewer than ``TASKS_PER_WRITER``
    tasks per writer (so that the last tasks still balance the writers: a task's length bounds
    how much longer one writer runs than another). Shards of that size or more stay one per
    task. Each shard is still written and committed on its own: contents, bytes and resume
    do not depend on the grouping."""
    if not shards:
        return []
    largest = max(s.samples for s in shards)
    by_samples = max(1, math.ceil(TASK_MIN_SAMPLES / max(1, largest)))
    by_balance = max(1, len(shards) // (TASKS_PER_WRITER * max(1, writers)))
    per_task = min(by_samples, by_balance)
    return [shards[i : i + per_task] for i in range(0, len(shards), per_task)]


def _write_shards(row: dict[str, Any], cfg_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Data flat_map function: a task's shards, one after the other, each from its plan
    file (runs on a worker); one output row per shard."""
    from clipsr.config_loader import from_dict

    cfg = from_dict(PreprocessConfig, cfg_dict)
    out = []
    for name, split, uri in json.loads(row["shards"]):
        stats = write_shard(read_shard_plan(uri, name, split, cfg), cfg)
        out.append({"name": name, "stats": json.dumps(stats)})
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


def _finish(
    cfg: PreprocessConfig, plan: Plan, chash: str, attributes: dict | None = None
) -> dict[str, Any]:
    """Manifest, sizes and rejects from every shard's committed stats (this run's and earlier);
    returns the manifest. Rejects go through a local temp file: their number is not bounded by
    anything."""
    shards, counts = [], {}
    uris = [stats_uri(cfg.output, s.name) for s in plan.shards]
    with ThreadPoolExecutor(8) as pool, tempfile.NamedTemporaryFile("w+b") as rejects:
        for duplicate in plan.duplicate_rejects():
            rejects.write(json.dumps(duplicate, sort_keys=True).encode() + b"\n")
        for shard, stats in zip(plan.shards, pool.map(lambda u: _read_json(u, cfg), uris)):
            if stats is None:
                raise RuntimeError(f"shard {shard.name} has no commit marker after the run")
            shards.append(
                {k: stats[k] for k in ("shard", "split", "tar", "sha256", "bytes")}
                | {"samples": stats["written"]}
            )
            rejects.writelines(
                json.dumps(r, sort_keys=True).encode() + b"\n" for r in stats["rejects"]
            )
            c = counts.setdefault(stats["split"], {"samples": 0, "shards": 0, "rejected": 0})
            c["samples"] += stats["written"]
            c["shards"] += 1
            c["rejected"] += stats["samples_in"] - stats["written"]
        rejected_total = plan.duplicates + sum(c["rejected"] for c in counts.values())
        rejects.flush()
        storage.upload_file(rejects.name, storage.join(cfg.output, REJECTS), cfg.storage)
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
        "rejected_total": rejected_total,
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
