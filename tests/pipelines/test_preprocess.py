"""The Ray Data preprocessing job end to end: real photographs, bad samples, resume, S3."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import webdataset as wds
from PIL import Image
from skimage import data

from clipsr.config_loader import ConfigError
from pipelines.preprocess import run_preprocess, shard_sizes
from pipelines.preprocess_config import PreprocessConfig, load_preprocess_config
from pipelines.sources import SourceConfig
from pipelines.storage import StorageOptions

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [
    "astronaut",
    "rocket",
    "coffee",
    "chelsea",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
    "retina",
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A folder corpus: crops of real photographs, odd formats, and one of each bad sample."""
    root = tmp_path_factory.mktemp("corpus")
    k = 0
    for name in PHOTOS:
        image = getattr(data, name)()
        for crop in (image, image[: image.shape[0] // 2, : image.shape[1] // 2]):
            Image.fromarray(crop).save(root / f"photo{k:02d}.jpg", quality=90)
            (root / f"photo{k:02d}.txt").write_text(f"{name} photograph\nsecond caption {k}\n")
            k += 1
    Image.fromarray(data.camera()).save(root / "gray.png")  # grayscale
    (root / "gray.txt").write_text("a cameraman with a camera on a tripod\n")
    Image.fromarray(data.logo()).save(root / "rgba.png")  # alpha
    (root / "rgba.txt").write_text("the scikit-image logo\n")
    bad = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(2000),
        "zero.png": b"",
        "notimage.png": b"hello, I am text",
        "small.png": _png(np.zeros((10, 10, 3), np.uint8)),
        "truncated.jpg": _jpeg(data.astronaut())[:5000],
    }
    for name, payload in bad.items():
        (root / name).write_bytes(payload)
        (root / Path(name).with_suffix(".txt").name).write_text("a caption\n")
    Image.fromarray(data.rocket()).save(root / "nocaption.jpg")
    Image.fromarray(data.rocket()).save(root / "latin1.jpg")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return root


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def _cfg(corpus: Path, output: str, *overrides: str) -> PreprocessConfig:
    base = PreprocessConfig(
        source=SourceConfig(kind="folder", path=str(corpus)),
        output=output,
        hr_size=64,
        scales=[4, 8, 16],
        samples_per_shard=4,
        test_fraction=0.25,
    )
    from clipsr.config_loader import from_dict, to_dict

    return from_dict(PreprocessConfig, to_dict(base), list(overrides))


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


EXPECTED_REJECTS = {
    "corrupt.jpg": {"corrupt", "not_an_image", "truncated"},
    "zero.png": {"empty"},
    "notimage.png": {"not_an_image"},
    "small.png": {"too_small"},
    "truncated.jpg": {"truncated", "corrupt"},
    "nocaption.jpg": {"caption_missing"},
    "latin1.jpg": {"caption_undecodable"},
}


@pytest.fixture(scope="session")
def first_run(ray_session, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = run_preprocess(_cfg(corpus, str(out), "concurrency=2"), progress=False)
    return out, summary


def test_shards_read_back_with_webdataset(first_run):
    out, summary = first_run
    manifest = json.loads((out / "manifest.json").read_text())
    good = len(PHOTOS) * 2 + 2
    assert summary.samples_in == good + len(EXPECTED_REJECTS)
    assert summary.written == good == sum(s["samples"] for s in manifest["shards"])
    assert set(manifest["splits"]) == {"train", "test"}
    assert manifest["config"]["png_compression"] == 1  # the fast default, recorded
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {s["tar"]: s["samples"] for s in manifest["shards"]}
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == sorted(sizes) and names[0].startswith("test-000000")
    # evenly sized shards, no tiny tail
    for split in ("train", "test"):
        counts = [
            s["samples_in"]
            for s in map(json.loads, map(Path.read_text, sorted(out.glob(f"{split}-*_stats.json"))))
        ]
        assert max(counts) - min(counts) <= 1
    keys = set()
    for sample in wds.WebDataset([str(out / n) for n in names], shardshuffle=False):
        key = sample["__key__"]
        assert "." not in key and key not in keys
        keys.add(key)
        hr = np.asarray(Image.open(io.BytesIO(sample["hr.png"])))
        assert hr.shape == (64, 64, 3) and hr.dtype == np.uint8
        for s in (4, 8, 16):
            lr = Image.open(io.BytesIO(sample[f"lr_x{s}.png"]))
            assert lr.size == (64 // s, 64 // s)
        meta = json.loads(sample["json"])
        captions = json.loads(sample["captions.json"])
        assert sample["txt"].decode() == captions[0]
        assert meta["key"] == key and set(meta["degradation"]) == {"x4", "x8", "x16"}
        assert meta["degradation"]["x4"]["seed"] != meta["degradation"]["x8"]["seed"]
        assert meta["crop"]["mode"] == "center_crop"
    assert len(keys) == good


def test_bad_samples_are_counted_and_listed(first_run):
    out, summary = first_run
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_file = {r["source_id"]: r["reason"] for r in rejects}
    assert set(by_file) == set(EXPECTED_REJECTS)
    for name, reasons in EXPECTED_REJECTS.items():
        assert by_file[name] in reasons, (name, by_file[name])
    assert sum(summary.rejected.values()) == len(EXPECTED_REJECTS)
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out.glob("*.parquet"))[0]).to_pylist()
    assert {"key", "source_id", "status", "reason", "caption"} <= set(table[0])


def test_ray_read_webdataset_sees_every_sample(first_run, ray_session):
    out, summary = first_run
    ds = ray_session.data.read_webdataset(str(out), file_extensions=["tar"])
    rows = ds.take_all()
    assert len(rows) == summary.written
    assert len({r["__key__"] for r in rows}) == summary.written
    for r in rows:
        assert r["hr.png"].shape == (64, 64, 3)
        assert r["lr_x16.png"].shape == (4, 4, 3)
        assert r["txt"] and r["json"]["key"] == r["__key__"]


def test_same_bytes_for_any_worker_count_and_rerun_skips(first_run, corpus, tmp_path):
    out, _ = first_run
    one = tmp_path / "one"
    run_preprocess(_cfg(corpus, str(one), "concurrency=1"), progress=False)
    assert _tars(one) == _tars(out)
    before = {p.name: p.stat().st_mtime_ns for p in one.glob("*.tar")}
    again = run_preprocess(_cfg(corpus, str(one), "concurrency=1"), progress=False)
    assert again.shards_skipped == again.shards and again.samples_in == 0
    assert {p.name: p.stat().st_mtime_ns for p in one.glob("*.tar")} == before
    redo = run_preprocess(_cfg(corpus, str(one), "overwrite=true"), progress=False)
    assert redo.shards_skipped == 0 and _tars(one) == _tars(out)


def test_kill_dash_nine_then_resume_gives_the_same_bytes(first_run, corpus, tmp_path):
    out, _ = first_run
    target = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"source: {{kind: folder, path: '{corpus}'}}\noutput: '{target}'\nhr_size: 64\n"
        "scales: [4, 8, 16]\nsamples_per_shard: 4\ntest_fraction: 0.25\nconcurrency: 1\n"
    )
    cmd = [sys.executable, "-m", "jobs.preprocess", str(cfg_path), "--no-progress"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(target.glob("*_stats.json")):
        time.sleep(0.05)
    # kill -9 the driver and every process it started (raylet, workers: Ray puts some of them
    # in sessions of their own, so a process-group kill would leave writers running)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    committed = len(list(target.glob("*_stats.json")))
    total = len(_tars(out))
    assert 1 <= committed < total, "the kill should land mid-run"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"({committed} already committed)" in res.stdout
    assert _tars(target) == _tars(out)
    assert (
        json.loads((target / "manifest.json").read_text())["shards"]
        == json.loads((out / "manifest.json").read_text())["shards"]
    )


def test_s3_source_and_output(ray_session, s3_server, s3_prefix, upload_tree, corpus, first_run):
    out, _ = first_run
    upload_tree(corpus, f"{s3_prefix}/corpus")
    cfg = _cfg(
        corpus,
        f"{s3_prefix}/shards",
        f"source.path={s3_prefix}/corpus",
        f"storage.endpoint_url={s3_server.endpoint_url}",
    )
    summary = run_preprocess(cfg, progress=False)
    assert summary.written == len(PHOTOS) * 2 + 2
    from pipelines import storage

    opts = StorageOptions(endpoint_url=s3_server.endpoint_url)
    for name, payload in _tars(out).items():
        assert storage.read_bytes(f"{s3_prefix}/shards/{name}", opts) == payload
    manifest = json.loads(storage.read_bytes(f"{s3_prefix}/shards/manifest.json", opts))
    assert manifest["splits"]["train"]["samples"] > 0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("scales=[4,6]", "scales: 6 does not divide hr_size 64"),
        ("source.kind=laion", "source.kind"),
        ("output=", "output: required"),
        ("png_compression=12", "png_compression: 0"),
    ],
)
def test_bad_config_fails_before_any_work(corpus, tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(corpus, str(tmp_path / "o"), override)
    assert not (tmp_path / "o").exists()


def test_cli_reports_a_missing_corpus_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"source: {{kind: folder, path: '{tmp_path / 'nowhere'}'}}\noutput: '{tmp_path / 'out'}'\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "source.path" in res.stderr and "nowhere" in res.stderr
    assert not (tmp_path / "out").exists()


def test_shard_sizes_are_even():
    assert shard_sizes(10, 4, 1) == [4, 3, 3]
    assert shard_sizes(9, 100, 4) == [3, 2, 2, 2]
    assert shard_sizes(2, 100, 4) == [1, 1]
    assert shard_sizes(0, 4, 1) == []


def test_shipped_preprocess_configs_load():
    for path in sorted((ROOT / "configs" / "preprocess").glob("*.yaml")):
        cfg = load_preprocess_config(path)
        assert cfg.source.path and cfg.output


def test_small_shards_go_several_to_a_ray_task():
    from pipelines.preprocess import ShardPlan, task_groups

    def plans(n, size):
        return [ShardPlan(f"train-{i:06d}", "train", size) for i in range(n)]

    small = plans(20, 50)  # 1,000 samples in shards of 50, two writers
    groups = task_groups(small, 2)
    assert [len(g) for g in groups] == [2] * 10 and sum(groups, []) == small  # 4 per writer
    assert [len(g) for g in task_groups(plans(80, 50), 2)] == [10] * 8
    assert [len(g) for g in task_groups(plans(400, 50), 2)] == [20] * 20  # 1,000 samples a task
    assert [len(g) for g in task_groups(plans(3, 1000), 2)] == [1] * 3  # big shards: one each
    assert [len(g) for g in task_groups(plans(9, 10), 2)] == [1] * 9  # 4 tasks per writer
    assert task_groups([], 4) == []
