"""The bundled corpora: folder layouts with split dirs, deterministic, reused when finished."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from clipsr.degradations import DegradationConfig, make_lr
from pipelines.bundled_corpus import write_photo_tiles, write_shapes
from pipelines.generated_shapes import PLURAL, SHAPES, caption_for, generated_shapes, render
from pipelines.sources import SourceConfig, build_source


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_shapes_are_deterministic_and_captioned():
    a, b = generated_shapes(6, seed=3), generated_shapes(6, seed=3)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert generated_shapes(2, seed=3, start=4)[1].caption == a[5].caption
    assert a[0].image.shape == (128, 128, 3) and a[0].image.dtype == np.uint8
    assert all(f"{x.colour} {PLURAL[x.shape]} on a {x.background}" in x.caption for x in a)
    assert caption_for("cross", "red", "grey") == "red crosses on a grey background"


def test_a_16x_downscale_loses_the_shape_the_caption_keeps():
    occupied = np.zeros((8, 8), bool)
    occupied[2:6, 2:6] = True
    lrs = {
        s: make_lr(render(s, "red", "white", occupied), 16, DegradationConfig(), 0)[0]
        for s in SHAPES
    }
    hrs = {s: render(s, "red", "white", occupied).astype(float) for s in SHAPES}
    # Over the objects, HR shapes differ a lot; their LR pixels (8 x 8 px) hardly at all.
    for a, b in (("circle", "triangle"), ("square", "cross"), ("circle", "square")):
        hr_gap = np.abs(hrs[a] - hrs[b])[32:96, 32:96].mean()
        lr_gap = np.abs(lrs[a].astype(float) - lrs[b].astype(float))[2:6, 2:6].mean()
        assert hr_gap > 10 and lr_gap < hr_gap / 3, (a, b, hr_gap, lr_gap)


def test_corpora_are_folder_sources_with_splits_and_are_reused(tmp_path):
    counts = write_shapes(tmp_path / "shapes", train=5, test=3)
    assert counts == {"train": 5, "test": 3}
    src = build_source(
        SourceConfig(kind="folder", path=str(tmp_path / "shapes"), folder_split_dirs=True)
    )
    samples = list(src.list_samples())
    assert sorted({s.split for s in samples}) == ["test", "train"] and len(samples) == 8
    assert all(s.error is None for s in samples)
    before = _digest(tmp_path / "shapes")
    write_shapes(tmp_path / "shapes", train=5, test=3)  # reused as is
    assert _digest(tmp_path / "shapes") == before
    write_shapes(tmp_path / "shapes", train=2, test=3)  # other parameters: rewritten
    assert len(list((tmp_path / "shapes" / "train").glob("*.png"))) == 2


def test_photo_tiles_hold_out_the_test_photos(tmp_path):
    counts = write_photo_tiles(tmp_path / "photos", tile=128, train_stride=128)
    names = {p.name.split("-y")[0] for p in (tmp_path / "photos" / "test").glob("*.png")}
    assert names == {"coffee", "chelsea"} and counts["test"] == 18
    train_names = {p.name.split("-y")[0] for p in (tmp_path / "photos" / "train").glob("*.png")}
    assert not train_names & names and counts["train"] > 50
    caption = (tmp_path / "photos" / "test" / "chelsea-y0000-x0000.txt").read_text()
    assert caption.startswith("a tabby cat")
