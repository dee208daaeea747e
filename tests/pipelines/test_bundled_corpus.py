"""The bundled corpora: folder layouts with split dirs, deterministic, reused when finished."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipelines.bundled_corpus import write_photo_tiles, write_shapes
from pipelines.generated_shapes import attributes
from pipelines.sources import SourceConfig, build_source


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_corpora_are_folder_sources_with_splits_and_are_reused(tmp_path):
    counts = write_shapes(tmp_path / "shapes", train=5, test=3)
    assert counts == {"train": 5, "test": 3}
    src = build_source(
        SourceConfig(kind="folder", path=str(tmp_path / "shapes"), folder_split_dirs=True)
    )
    samples = list(src.list_samples())
    assert sorted({s.split for s in samples}) == ["test", "train"] and len(samples) == 8
    assert all(s.error is None for s in samples)
    assert json.loads((tmp_path / "shapes" / "attributes.json").read_text()) == attributes()
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
