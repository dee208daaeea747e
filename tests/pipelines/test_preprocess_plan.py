"""The bounded-memory planner gives exactly the plan of the straightforward in-memory one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipsr.config_loader import from_dict, to_dict
from clipsr.shards import sample_key, shard_name
from pipelines import preprocess_plan
from pipelines.preprocess_config import PreprocessConfig
from pipelines.preprocess_plan import (
    plan_preprocess,
    plan_uri,
    read_shard_plan,
    shard_sizes,
    split_name,
    split_order,
    write_plan_files,
)
from pipelines.shard_writer import sample_to_dict
from pipelines.sources import SourceConfig, build_source
from tests.pipelines.conftest import image_bytes, write_file

ROOT = Path(__file__).resolve().parents[2]


def reference_plan(cfg: PreprocessConfig) -> tuple[list[dict], list[dict]]:
    """Every sample in memory, as the job planned before: (plans, duplicates)."""
    by_split: dict[str, dict[str, dict]] = {}
    duplicates = []
    for n, sample in enumerate(build_source(cfg.source, cfg.storage).list_samples()):
        if cfg.max_samples and n >= cfg.max_samples:
            break
        key = sample_key(sample.source_id)
        split = split_name(sample.split, sample.source_id, cfg)
        if any(key in seen for seen in by_split.values()):
            duplicates.append(
                {"key": key, "source_id": sample.source_id, "reason": "duplicate_source_id",
                 "detail": None}
            )  # fmt: skip
            continue
        by_split.setdefault(split, {})[key] = {"key": key, "sample": sample_to_dict(sample)}
    plans = []
    for split in split_order(by_split):
        items = [by_split[split][k] for k in sorted(by_split[split])]
        start = 0
        sizes = shard_sizes(len(items), cfg.samples_per_shard, cfg.min_shards_per_split)
        for index, size in enumerate(sizes):
            plans.append(
                {"name": shard_name(split, index), "split": split,
                 "samples": items[start : start + size]}
            )  # fmt: skip
            start += size
    return json.loads(json.dumps(plans)), duplicates  # the job shipped plans as JSON


def planned(cfg: PreprocessConfig) -> tuple[list[dict], list[dict]]:
    plan = plan_preprocess(cfg)
    try:
        write_plan_files(plan, cfg, {s.name for s in plan.shards})
        plans = [
            json.loads(
                json.dumps(read_shard_plan(plan_uri(cfg.output, s.name), s.name, s.split, cfg))
            )
            for s in plan.shards
        ]
        return plans, list(plan.duplicate_rejects())
    finally:
        plan.close()


def _cfg(source: SourceConfig, output: Path, *overrides: str) -> PreprocessConfig:
    base = PreprocessConfig(source=source, output=str(output), hr_size=64, scales=[4])
    return from_dict(PreprocessConfig, to_dict(base), list(overrides))


def test_manifest_corpus_with_many_spill_flushes(tmp_path, monkeypatch):
    """3000 rows repeating a few image files, spilled in many small flushes, hash splits."""
    monkeypatch.setattr(preprocess_plan, "FLUSH_LINES", 97)
    for i in range(3):
        write_file(tmp_path / "imgs" / f"{i}.png", image_bytes("PNG"))
    rows = [{"image": f"imgs/{i % 3}.png", "caption": f"caption {i}"} for i in range(3000)]
    write_file(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    source = SourceConfig(kind="manifest", path=str(tmp_path / "m.jsonl"))
    for overrides in (
        ["samples_per_shard=250", "test_fraction=0.1", "val_fraction=0.05"],
        ["samples_per_shard=1000", "min_shards_per_split=7", "max_samples=2222"],
    ):
        cfg = _cfg(source, tmp_path / "out", *overrides)
        plans, duplicates = planned(cfg)
        assert (plans, duplicates) == reference_plan(cfg)
        assert {p["split"] for p in plans} >= {"train", "test"}
        assert sum(len(p["samples"]) for p in plans) == (cfg.max_samples or 3000)


def test_duplicate_source_ids_keep_the_first_listed(tmp_path):
    """CUB's image list names one image twice (with two boxes): the first listing wins."""
    root = tmp_path / "cub"
    cub = root / "CUB_200_2011"
    names = ["001.A/a_1", "001.A/a_2", "002.B/b_1", "001.A/a_1", "002.B/b_2"]
    write_file(cub / "images.txt", "".join(f"{i} {n}.jpg\n" for i, n in enumerate(names, 1)))
    boxes = "".join(f"{i} {i} {i} 50 50\n" for i in range(1, 6))
    write_file(cub / "bounding_boxes.txt", boxes)
    for name in names:
        write_file(cub / "images" / f"{name}.jpg", image_bytes("JPEG"))
        write_file(root / "text_c10" / f"{name}.txt", "a bird\n")
    write_file(root / "train" / "filenames.txt", "001.A/a_1\n001.A/a_2\n002.B/b_2\n")
    write_file(root / "test" / "filenames.txt", "002.B/b_1\n")
    source = SourceConfig(kind="cub", path=str(root), cub_split_dir=str(root), cub_bbox_crop=True)
    cfg = _cfg(source, tmp_path / "out", "samples_per_shard=1")
    plans, duplicates = planned(cfg)
    assert (plans, duplicates) == reference_plan(cfg)
    assert [d["source_id"] for d in duplicates] == ["001.A/a_1.jpg"]
    kept = [s["sample"] for p in plans for s in p["samples"]]
    assert [s["bbox"] for s in kept if s["source_id"] == "001.A/a_1.jpg"] == [[1, 1, 50, 50]]
    assert [p["name"] for p in plans] == ["train-000000", "train-000001", "train-000002",
                                          "test-000000"]  # fmt: skip


def test_plan_only_prints_the_splits_and_writes_nothing(tmp_path):
    corpus = tmp_path / "corpus"
    for i in range(12):
        write_file(corpus / f"p{i:02d}.png", image_bytes("PNG"))
        write_file(corpus / f"p{i:02d}.txt", f"picture {i}\n")
    config = ROOT / "configs" / "preprocess" / "folder-realesrgan.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", str(config),
         f"source.path={corpus}", f"output={tmp_path / 'out'}", "samples_per_shard=5",
         "test_fraction=0.25", "--plan-only"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = _cfg(SourceConfig(kind="folder", path=str(corpus)), tmp_path / "o",
               "samples_per_shard=5", "test_fraction=0.25")  # fmt: skip
    plans, _ = reference_plan(cfg)
    for split in ("train", "test"):
        mine = [p for p in plans if p["split"] == split]
        samples = sum(len(p["samples"]) for p in mine)
        assert f"{split}: {samples} samples in {len(mine)} shards" in res.stdout, res.stdout
    assert "12 listed, 0 duplicates" in res.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [0, 1, 7])
def test_spill_of_tiny_corpora(tmp_path, count):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(count):
        write_file(corpus / f"{i}.png", image_bytes("PNG"))
    cfg = _cfg(SourceConfig(kind="folder", path=str(corpus)), tmp_path / "out")
    plan = plan_preprocess(cfg)
    try:
        assert plan.listed == count and sum(s.samples for s in plan.shards) == count
    finally:
        plan.close()
    assert not Path(plan.workdir).exists()
