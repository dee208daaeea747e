"""Batch ``clipsr upscale`` on Ray Data: a folder with bad files, a real shard set to S3 shards."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from skimage import data

from clipsr.inference import SuperResolver
from jobs.upscale import main
from pipelines import storage
from pipelines.batch_upscale import BatchConfigError, run_batch_upscale
from pipelines.bundled_photos import bundled_photos
from tests.conftest import text_sensitive_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_clip, tmp_path_factory) -> Path:
    return text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "checkpoint")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two good LR photographs (one captioned by its .txt), a corrupt file, a wrong size."""
    d = tmp_path_factory.mktemp("lr")
    Image.fromarray(data.astronaut()).resize((48, 48), Image.BICUBIC).save(d / "astronaut.png")
    (d / "astronaut.txt").write_text("a person in a space suit\na second caption\n")
    (d / "cats").mkdir()
    Image.fromarray(data.chelsea()).resize((64, 40), Image.BICUBIC).save(d / "cats/chelsea.jpg")
    Image.fromarray(data.coffee()).resize((30, 30), Image.BICUBIC).save(d / "odd.png")
    png = (d / "astronaut.png").read_bytes()
    (d / "broken.png").write_bytes(png[: len(png) // 2])  # a truncated PNG
    return d


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory) -> Path:
    """A real ``clipsr preprocess`` output: 5 photographs at 64 px, 4x LR, 3 train shards."""
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    corpus = tmp_path_factory.mktemp("corpus")
    for photo in bundled_photos("train")[:5]:
        Image.fromarray(photo.image).save(corpus / f"{photo.name}.png")
        (corpus / f"{photo.name}.txt").write_text(photo.caption + "\nanother caption\n")
    out = tmp_path_factory.mktemp("shards")
    overrides = [f"source.path={corpus}", "source.kind=folder", f"output={out}", "hr_size=64"]
    overrides += ["scales=[4]", "samples_per_shard=2", "test_fraction=0"]
    run_preprocess(load_preprocess_config(None, overrides), progress=False)
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_on_ray_skips_bad_files(ray_session, checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(checkpoint), "--input-dir", str(folder), "--out", str(out)]
    assert main([*args, "--prompt", "a cat"]) == 1  # some were skipped
    assert "2 written, 2 skipped" in capsys.readouterr().err
    resolver = SuperResolver.from_checkpoint(checkpoint, device="cpu")
    for name, caption, size in [
        ("astronaut", "a person in a space suit", (192, 192)),  # its .txt's first line
        ("cats/chelsea", "a cat", (256, 160)),  # no .txt: --prompt
    ]:
        lr = Image.open(next(folder.glob(f"{name}.*"))).convert("RGB")
        got = np.asarray(Image.open(out / f"{name}_x4.png"), dtype=int)
        assert got.shape[1::-1] == size
        expected = np.asarray(resolver.upscale(lr, caption), dtype=int)
        assert np.abs(got - expected).max() <= 1  # same model, caption (thread counts differ)
    skipped = {Path(r["input"]).name: r for r in jsonl(out / "skipped.jsonl")}
    assert skipped.keys() == {"broken.png", "odd.png"}
    assert skipped["broken.png"]["reason"] in ("truncated", "corrupt")
    assert skipped["odd.png"]["reason"] == "wrong_size"
    assert "30x30 does not fit this 4x model" in skipped["odd.png"]["detail"]
    written = {Path(r["input"]).name: r["caption"] for r in jsonl(out / "upscaled.jsonl")}
    assert written == {"astronaut.png": "a person in a space suit", "chelsea.jpg": "a cat"}
    # in process (--local), without --prompt: the uncaptioned image is skipped too
    assert main([*args[:-1], str(tmp_path / "local"), "--local"]) == 1
    skipped = {Path(r["input"]).name: r["reason"] for r in jsonl(tmp_path / "local/skipped.jsonl")}
    assert skipped["chelsea.jpg"] == "caption_missing" and len(skipped) == 3
    local = np.asarray(Image.open(tmp_path / "local/astronaut_x4.png"))
    assert np.array_equal(local, np.asarray(Image.open(out / "astronaut_x4.png")))


def read_shards(paths: list[Path]) -> list[dict]:
    urls = [str(p) for p in paths]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_shards_to_s3_shards_and_to_a_local_folder(
    ray_session, checkpoint, shards, s3_server, s3_prefix, tmp_path
):
    inputs = {s["__key__"]: s for s in read_shards(sorted(shards.glob("train-*.tar")))}
    assert len(inputs) == 5
    result = run_batch_upscale(
        str(checkpoint),
        s3_prefix,
        shards=str(shards),
        split="train",
        out_format="shards",
        endpoint_url=s3_server.endpoint_url,
        progress=False,
    )
    assert (result.written, result.skipped, result.scale) == (5, 0, 4)
    uris = storage.list_files(s3_prefix, s3_server.options)
    names = [u.rsplit("/", 1)[-1] for u in uris]
    tars = [n for n in names if n.endswith(".tar")]
    assert tars == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert set(names) == {*tars, "sizes.json", "skipped.jsonl"}
    fetched = tmp_path / "fetched"
    for uri, name in zip(uris, names):
        storage.write_bytes(str(fetched / name), storage.read_bytes(uri, s3_server.options))
    samples = read_shards([fetched / t for t in tars])
    assert [s["__key__"] for s in samples] == sorted(inputs)  # the input keys, in order
    resolver = SuperResolver.from_checkpoint(checkpoint, device="cpu")
    for s in samples:
        assert set(s) - {"__key__", "__url__", "__local_path__"} == {"sr_x4.png", "txt", "json"}
        caption = inputs[s["__key__"]]["txt"].decode()
        assert s["txt"].decode() == caption and "another" not in caption  # the first caption
        meta = json.loads(s["json"])
        assert meta["lr_size"] == [16, 16] and meta["model"] == str(checkpoint)
        sr = Image.open(io.BytesIO(s["sr_x4.png"]))
        lr = Image.open(io.BytesIO(inputs[s["__key__"]]["lr_x4.png"])).convert("RGB")
        expected = np.asarray(resolver.upscale(lr, caption), dtype=int)
        assert sr.size == (64, 64) and np.abs(np.asarray(sr, dtype=int) - expected).max() <= 1
    sizes = json.loads(storage.read_bytes(f"{s3_prefix}/sizes.json", s3_server.options))
    assert sizes == {"train-000000.tar": 2, "train-000001.tar": 2, "train-000002.tar": 1}
    # the same job into a local folder writes the same bytes
    local = tmp_path / "local"
    assert run_batch_upscale(
        str(checkpoint), str(local), shards=str(shards), split="train", out_format="shards",
        progress=False,
    ).written == 5  # fmt: skip
    for t in tars:
        assert (local / t).read_bytes() == (fetched / t).read_bytes()


def test_bad_config_fails_before_ray(checkpoint, shards, folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ({"input_dir": str(empty)}, "no images in"),
        ({"input_dir": str(tmp_path / "missing")}, "no such directory"),
        ({"shards": str(tmp_path / "missing")}, "manifest.json missing"),
        ({"shards": str(shards), "split": "val"}, "no shards for split 'val'"),
        ({"input_dir": str(folder), "scale": 8}, "is a 4x model"),
        ({"input_dir": str(folder), "out_format": "zip"}, "--out-format"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BatchConfigError, match=message):
            run_batch_upscale(str(checkpoint), str(tmp_path / "o"), **kwargs)
    with pytest.raises(BatchConfigError, match="checkpoint directory not found"):
        run_batch_upscale(str(tmp_path / "nope"), str(tmp_path / "o"), input_dir=str(folder))
    # the CLI: exit code 2, and no Ray started
    cli = str(Path(sys.executable).with_name("clipsr"))
    args = ["upscale", "--model", str(checkpoint), "--shards", str(shards), "--split", "val"]
    res = subprocess.run(
        [cli, *args, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2 and "no shards for split 'val'" in res.stderr
    assert "Ray" not in res.stderr
