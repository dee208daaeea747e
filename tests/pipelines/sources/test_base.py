"""SourceSample, load_captions and the shared split-list reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sources.base import SourceSample, load_captions, read_split_lists, strip_ext
from tests.pipelines.conftest import write_file


def test_load_captions_reads_lines_and_reports_reasons(tmp_path: Path) -> None:
    good = write_file(tmp_path / "good.txt", "\ufeff a bird \n\n  red wings\r\n   \n")
    blank = write_file(tmp_path / "blank.txt", " \n\n")
    latin = write_file(tmp_path / "latin.txt", "un café noir".encode("latin-1"))

    def load(**kw: object) -> tuple[tuple[str, ...], str | None]:
        return load_captions(SourceSample(source_id="x", image="x.jpg", **kw))  # type: ignore[arg-type]

    assert load(caption_uri=str(good)) == (("a bird", "red wings"), None)
    assert load(caption_uri=str(blank)) == ((), "caption_missing")
    assert load(caption_uri=str(tmp_path / "none.txt")) == ((), "caption_missing")
    assert load(caption_uri=str(latin)) == ((), "caption_undecodable")
    assert load() == ((), "caption_missing")
    assert load(captions=("listed",), caption_uri=str(good)) == (("listed",), None)
    assert load(error="caption_undecodable") == ((), "caption_undecodable")


def test_split_lists_txt_and_pickle_refusal(tmp_path: Path) -> None:
    write_file(tmp_path / "train" / "filenames.txt", "a/one\n\na/two.jpg\n")
    write_file(tmp_path / "test" / "filenames.txt", "b/three\n")
    assert read_split_lists(str(tmp_path), "source.x", None) == {
        "a/one": "train",
        "a/two": "train",
        "b/three": "test",
    }
    write_file(tmp_path / "test" / "filenames.txt", "a/one\n")
    with pytest.raises(ValueError, match="source.x: 'a/one' is listed in both"):
        read_split_lists(str(tmp_path), "source.x", None)

    pickled = tmp_path / "pickled"
    write_file(pickled / "train" / "filenames.pickle", b"\x80\x04N.")
    with pytest.raises(ValueError, match=r"source.y: found .*filenames.pickle.*never loaded"):
        read_split_lists(str(pickled), "source.y", None)
    assert read_split_lists(str(tmp_path / "nothing"), "source.z", None) == {}


def test_strip_ext() -> None:
    assert strip_ext("001.Bird/Bird_01.jpg") == "001.Bird/Bird_01"
    assert strip_ext("a.b.png") == "a.b" and strip_ext("noext") == "noext"
