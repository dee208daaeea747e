"""One shard, written without Ray: reject records the same bytes on every run, and an error that
is not about a sample stops the shard instead of becoming a reject."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipsr.config_loader import from_dict
from pipelines import shard_writer
from pipelines.preprocess_config import PreprocessConfig
from pipelines.shard_writer import sample_to_dict, write_shard
from pipelines.sources import SourceSample
from tests.pipelines.conftest import image_bytes


def _plan(root: Path) -> dict:
    (root / "good.png").write_bytes(image_bytes("PNG", size=(96, 96)))
    (root / "text.png").write_bytes(b"hello, I am text")  # PIL's error names a BytesIO object
    samples = [
        SourceSample("good.png", str(root / "good.png"), captions=("a caption",)),
        SourceSample("text.png", str(root / "text.png"), captions=("a caption",)),
        SourceSample("gone.png", str(root / "gone.png"), captions=("a caption",)),
    ]
    items = [{"key": f"k{i}", "sample": sample_to_dict(s)} for i, s in enumerate(samples)]
    return {"name": "train-000000", "split": "train", "samples": items}


def _cfg(out: Path) -> PreprocessConfig:
    data = {"source": {"kind": "folder", "path": "x"}, "output": str(out), "hr_size": 64}
    return from_dict(PreprocessConfig, {**data, "scales": [4]})


def test_reject_records_are_the_same_bytes_on_every_run(tmp_path):
    plan = _plan(tmp_path)
    records = []
    for run in ("a", "b"):
        stats = write_shard(plan, _cfg(tmp_path / run))
        records.append((json.dumps(stats["rejects"]), (tmp_path / run / "train-000000.parquet")))
    assert records[0][0] == records[1][0] and "0x" not in records[0][0]
    assert records[0][1].read_bytes() == records[1][1].read_bytes()
    reasons = {r["source_id"]: r["reason"] for r in json.loads(records[0][0])}
    assert reasons == {"text.png": "not_an_image", "gone.png": "image_missing"}


def test_an_error_that_is_not_about_the_sample_stops_the_shard(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the degradation")

    monkeypatch.setattr(shard_writer, "make_lr", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        write_shard(_plan(tmp_path), _cfg(tmp_path / "out"))
    assert not (tmp_path / "out" / "train-000000_stats.json").exists()  # nothing committed
