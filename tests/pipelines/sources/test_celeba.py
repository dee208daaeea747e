"""CelebASource: MM-CelebA-HQ image/ + text/ + {train,test}/filenames.txt."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sources import SourceConfig, build_source, load_captions, validate
from tests.pipelines.conftest import image_bytes, write_file


def make_celeba(root: Path) -> Path:
    for key in ("0", "1", "10", "2"):
        write_file(root / "image" / f"{key}.jpg", image_bytes("JPEG"))
    for key in ("0", "1", "10"):
        write_file(root / "text" / f"{key}.txt", f"face {key} smiles\nface {key} has bangs\n")
    return root


def test_celeba_without_split_lists(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "celeba")
    cfg = SourceConfig(kind="celeba", path=str(root))
    validate(cfg)
    samples = list(build_source(cfg).list_samples())
    assert [s.source_id for s in samples] == ["0.jpg", "1.jpg", "10.jpg", "2.jpg"]
    assert all(s.split is None for s in samples)
    assert samples[0].image == str(root / "image" / "0.jpg")
    assert samples[0].caption_uri == str(root / "text" / "0.txt")
    assert load_captions(samples[2]) == (("face 10 smiles", "face 10 has bangs"), None)
    assert load_captions(samples[3]) == ((), "caption_missing")


def test_celeba_with_split_lists(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "celeba")
    write_file(root / "train" / "filenames.txt", "0\n1\n10\n")
    write_file(root / "test" / "filenames.txt", "2\n")
    samples = list(build_source(SourceConfig(kind="celeba", path=str(root))).list_samples())
    assert [(s.source_id, s.split) for s in samples] == [
        ("0.jpg", "train"),
        ("1.jpg", "train"),
        ("10.jpg", "train"),
        ("2.jpg", "test"),
    ]


def test_celeba_validate_messages(tmp_path: Path) -> None:
    root = tmp_path / "celeba"
    write_file(root / "image" / "0.jpg", image_bytes("JPEG"))
    with pytest.raises(ValueError, match="source.path: directory not found: .*text"):
        validate(SourceConfig(kind="celeba", path=str(root)))
    write_file(root / "text" / "0.txt", "x")
    write_file(root / "test" / "filenames.pickle", b"\x80\x04N.")
    with pytest.raises(ValueError, match="source.path: found .*test/filenames.pickle"):
        validate(SourceConfig(kind="celeba", path=str(root)))
