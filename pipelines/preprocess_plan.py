"""The shard plan of ``clipsr preprocess``, made in memory that does not grow with the corpus.

The plan is what it always was: every listed sample gets its key (``sample_key`` of its source
id) and split, a later sample with a key already seen is a duplicate, and each split, sorted by
key, is cut into evenly sized shards. Only the way there changed, so that the same corpus and
config give the same shards byte for byte:

1. the listing streams from the source into 256 spill files by the key's first two hex digits
   (keys are sha256 digits, so the files are even), one line ``key  index  split  sample-json``;
2. each spill file in turn is sorted (by key, then listing index), the first line of each key
   kept and later ones recorded as duplicates, and the kept lines appended to one file per
   split, which thus comes out sorted by key;
3. per split, the shard sizes follow from its count, and the split file is cut into one plan
   file per shard (JSON lines ``{"key": ..., "sample": ...}``) beside the output, under
   ``_plan/``; each shard task reads only its own.

The driver holds one spill file at a time (the corpus / 256) and per-shard counts; the spill
files live in a local temp dir (``TMPDIR``) and are deleted with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from clipsr.shards import sample_key, shard_name
from pipelines import storage
from pipelines.preprocess_config import PreprocessConfig
from pipelines.sources import build_source

SPLITS = ("train", "val", "test")
PLAN_DIR = "_plan"
BUCKET_DIGITS = 2  # 256 spill files
FLUSH_LINES = 20_000  # buffered spill lines before they are written out


@dataclass
class ShardPlan:
    """One planned shard, without its samples (they are in the plan file)."""

    name: str
    split: str
    samples: int


@dataclass
class Plan:
    """The shards of a corpus and what planning rejected (duplicate source ids)."""

    shards: list[ShardPlan]
    listed: int
    duplicates: int
    workdir: str  # local: the sorted split files and the duplicates, until close()
    split_counts: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def duplicate_rejects(self) -> Iterator[dict[str, Any]]:
        """The duplicates as reject records, in listing order."""
        path = os.path.join(self.workdir, "duplicates")
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        for line in sorted(lines):  # "index<TAB>record": listing order
            yield json.loads(line.split("\t", 1)[1])

    def split_file(self, split: str) -> str:
        return os.path.join(self.workdir, f"split-{split}")


def hash_split(source_id: str, cfg: PreprocessConfig) -> str:
    # the first 15 hex digits (60 bits) of sha256("split:<id>") as a fraction of 16**15
    digest = hashlib.sha256(f"split:{source_id}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") >> 4) / 16**15
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def split_name(split: str | None, source_id: str, cfg: PreprocessConfig) -> str:
    if split is None:
        return hash_split(source_id, cfg)
    split = split.lower()
    return {"validation": "val", "valid": "val", "dev": "val"}.get(split, split)


def shard_sizes(count: int, per_shard: int, min_shards: int) -> list[int]:
    """Evenly sized shards (sizes differ by at most one: no tiny tail shard)."""
    if count == 0:
        return []
    n = max(-(-count // per_shard), min(min_shards, count))
    base, extra = divmod(count, n)
    return [base + 1 if i < extra else base for i in range(n)]


def split_order(splits) -> list[str]:
    return sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s))


def _spill(cfg: PreprocessConfig, workdir: str) -> int:
    """Pass 1: the listing into the spill files; returns the number of samples listed."""
    buffers: dict[str, list[str]] = {}
    pending = listed = 0
    dumps = json.dumps
    for listed, sample in enumerate(build_source(cfg.source, cfg.storage).list_samples(), 1):
        if cfg.max_samples and listed > cfg.max_samples:
            listed -= 1
            break
        key = sample_key(sample.source_id)
        split = split_name(sample.split, sample.source_id, cfg)
        record = dumps(sample.__dict__)  # the dataclass's fields, in order
        buffers.setdefault(key[:BUCKET_DIGITS], []).append(
            f"{key}\t{listed:012d}\t{split}\t{record}\n"
        )
        pending += 1
        if pending >= FLUSH_LINES:
            _flush(buffers, workdir)
            pending = 0
    _flush(buffers, workdir)
    return listed


def _flush(buffers: dict[str, list[str]], workdir: str) -> None:
    for bucket, lines in buffers.items():
        with open(os.path.join(workdir, f"bucket-{bucket}"), "a", encoding="utf-8") as f:
            f.writelines(lines)
    buffers.clear()


def _sort_buckets(workdir: str) -> tuple[dict[str, int], int]:
    """Pass 2: spill files -> key-sorted split files and the duplicates; (counts, duplicates)."""
    counts: dict[str, int] = {}
    outs: dict[str, Any] = {}
    duplicates = 0
    dup_file = None
    try:
        for bucket in sorted(n for n in os.listdir(workdir) if n.startswith("bucket-")):
            path = os.path.join(workdir, bucket)
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
            os.remove(path)
            lines.sort()  # by key, then listing index (fixed-width fields)
            previous = ""
            for line in lines:
                key, index, split, record = line.split("\t", 3)
                if key == previous:
                    if dup_file is None:
                        dup_file = open(os.path.join(workdir, "duplicates"), "w", encoding="utf-8")  # noqa: SIM115
                    source_id = json.loads(record)["source_id"]
                    reject = {"key": key, "source_id": source_id}
                    reject |= {"reason": "duplicate_source_id", "detail": None}
                    dup_file.write(f"{index}\t{json.dumps(reject)}\n")
                    duplicates += 1
                    continue
                previous = key
                out = outs.get(split)
                if out is None:
                    out = outs[split] = open(  # noqa: SIM115 (closed below)
                        os.path.join(workdir, f"split-{split}"), "w", encoding="utf-8"
                    )
                out.write(f"{key}\t{record}")
                counts[split] = counts.get(split, 0) + 1
    finally:
        for out in outs.values():
            out.close()
        if dup_file is not None:
            dup_file.close()
    return counts, duplicates


def plan_preprocess(cfg: PreprocessConfig) -> Plan:
    """Passes 1 and 2 (module docstring): the shards of every split, no plan files yet."""
    workdir = tempfile.mkdtemp(prefix="clipsr-plan-")
    try:
        listed = _spill(cfg, workdir)
        counts, duplicates = _sort_buckets(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    shards = []
    for split in split_order(counts):
        sizes = shard_sizes(counts[split], cfg.samples_per_shard, cfg.min_shards_per_split)
        shards += [ShardPlan(shard_name(split, i), split, n) for i, n in enumerate(sizes)]
    return Plan(shards, listed, duplicates, workdir, counts)


def plan_uri(output: str, name: str) -> str:
    return storage.join(output, PLAN_DIR, f"{name}.jsonl")


def write_plan_files(plan: Plan, cfg: PreprocessConfig, names: set[str]) -> None:
    """Pass 3: the plan file of each shard in ``names``, cut from the sorted split files."""
    by_split: dict[str, list[ShardPlan]] = {}
    for shard in plan.shards:
        by_split.setdefault(shard.split, []).append(shard)
    for split, shards in by_split.items():
        if not any(s.name in names for s in shards):
            continue
        with open(plan.split_file(split), encoding="utf-8") as f:
            for shard in shards:
                lines = [f.readline() for _ in range(shard.samples)]
                if shard.name not in names:
                    continue
                body = "".join(
                    f'{{"key": "{line[:20]}", "sample": {line[21:].rstrip()}}}\n' for line in lines
                )
                storage.write_bytes(plan_uri(cfg.output, shard.name), body.encode(), cfg.storage)


def read_shard_plan(uri: str, name: str, split: str, cfg: PreprocessConfig) -> dict[str, Any]:
    """The plan that ``write_shard`` takes: {name, split, samples: [{key, sample}]}."""
    text = storage.read_text(uri, cfg.storage)
    return {"name": name, "split": split, "samples": [json.loads(s) for s in text.splitlines()]}
