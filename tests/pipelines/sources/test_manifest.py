"""ManifestSource: parquet / CSV / JSONL manifests of (image, caption) rows."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.sources import SourceConfig, build_source, validate
from pipelines.sources import manifest as manifest_module
from tests.pipelines.conftest import S3Server, image_bytes, write_file

ROWS = [
    {"image": "imgs/a.png", "caption": "  a red car "},
    {"image": "imgs/b.png", "caption": ""},
    {"image": "http://example.com/c.jpg", "caption": "remote"},
    {"image": "", "caption": "no image"},
]


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    """``rows`` as parquet, CSV(.gz), TSV or JSONL(.gz), chosen by the file name."""
    name = path.name
    if name.endswith(".parquet"):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
        return path
    if ".jsonl" in name:
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=list(rows[0]), delimiter="\t" if ".tsv" in name else ","
        )
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    data = text.encode("utf-8")
    return write_file(path, gzip.compress(data) if name.endswith(".gz") else data)


@pytest.mark.parametrize(
    "name", ["m.parquet", "m.csv", "m.csv.gz", "m.tsv", "m.jsonl", "m.jsonl.gz"]
)
def test_manifest_formats(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "PARQUET_BATCH_ROWS", 1)  # several batches
    root = tmp_path / "data"
    write_file(root / "imgs" / "a.png", image_bytes("PNG"))
    path = write_manifest(root / name, ROWS)
    cfg = SourceConfig(kind="manifest", path=str(path))
    validate(cfg)
    samples = list(build_source(cfg).list_samples())
    assert [s.source_id for s in samples] == [f"{name}:{i:09d}" for i in range(4)]
    first, second, remote, no_image = samples
    assert first.image == str(root / "imgs" / "a.png") and first.captions == ("a red car",)
    assert first.error is None and storage.read_bytes(first.image) == image_bytes("PNG")
    assert second.error == "caption_missing"
    assert remote.error == "image_uri_unsupported"
    assert no_image.error == "image_missing"


def test_manifest_list_captions_custom_columns_absolute_paths(tmp_path: Path) -> None:
    rows = [
        {"path": str(tmp_path / "x.png"), "texts": ["one", " ", "two"]},
        {"path": "s3://bucket/y.png", "texts": None},
    ]
    path = write_manifest(tmp_path / "m.parquet", rows)
    cfg = SourceConfig(
        kind="manifest",
        path=str(path),
        manifest_image_column="path",
        manifest_caption_column="texts",
    )
    first, second = build_source(cfg).list_samples()
    assert (first.image, first.captions) == (str(tmp_path / "x.png"), ("one", "two"))
    assert (second.image, second.error) == ("s3://bucket/y.png", "caption_missing")


def test_manifest_bad_rows_are_rejects_not_crashes(tmp_path: Path) -> None:
    lines = (
        b'{"image": "a.png", "caption": "ok"}\nnot json\n{"image": "b.png", "caption": "caf\xe9"}\n'
    )
    write_file(tmp_path / "m.jsonl", lines)
    samples = list(
        build_source(SourceConfig(kind="manifest", path=str(tmp_path / "m.jsonl"))).list_samples()
    )
    assert [s.error for s in samples] == [None, "manifest_row_invalid", "caption_undecodable"]
    write_file(tmp_path / "m.csv", b"image,caption\na.png,caf\xe9 cr\xe8me\nb.png,fine\n")
    samples = list(
        build_source(SourceConfig(kind="manifest", path=str(tmp_path / "m.csv"))).list_samples()
    )
    assert [s.error for s in samples] == ["caption_undecodable", None]


def test_manifest_directory_of_parts(tmp_path: Path) -> None:
    write_manifest(tmp_path / "parts" / "p1.csv", ROWS[:1])
    write_manifest(tmp_path / "parts" / "sub" / "p0.jsonl", ROWS[:2])
    samples = list(
        build_source(SourceConfig(kind="manifest", path=str(tmp_path / "parts"))).list_samples()
    )
    assert [s.source_id for s in samples] == [
        "p1.csv:000000000",
        "sub/p0.jsonl:000000000",
        "sub/p0.jsonl:000000001",
    ]
    assert samples[1].image == str(tmp_path / "parts" / "sub" / "imgs" / "a.png")


def test_manifest_missing_column_lists_present(tmp_path: Path) -> None:
    for name in ("m.parquet", "m.csv", "m.jsonl"):
        path = write_manifest(tmp_path / name, [{"url": "a.png", "caption": "x"}])
        with pytest.raises(
            ValueError,
            match=r"source.manifest_image_column: column 'image' .*present: \['url', 'caption'\]",
        ):
            validate(SourceConfig(kind="manifest", path=str(path)))
        cfg = SourceConfig(
            kind="manifest",
            path=str(path),
            manifest_image_column="url",
            manifest_caption_column="text",
        )
        with pytest.raises(ValueError, match="source.manifest_caption_column: column 'text'"):
            validate(cfg)
    with pytest.raises(ValueError, match="unknown manifest type"):
        validate(SourceConfig(kind="manifest", path=str(write_file(tmp_path / "m.xlsx", "x"))))
    with pytest.raises(ValueError, match="source.path: manifest not found: .*nope.csv"):
        validate(SourceConfig(kind="manifest", path=str(tmp_path / "nope.csv")))
    with pytest.raises(ValueError, match="source.path: directory not found"):
        validate(SourceConfig(kind="manifest", path=str(tmp_path / "nodir")))


def test_manifest_on_s3(tmp_path: Path, s3_server: S3Server, s3_prefix: str) -> None:
    opts = s3_server.options
    local = write_manifest(tmp_path / "m.parquet", ROWS[:2])
    uri = storage.join(s3_prefix, "meta", "m.parquet")
    storage.write_bytes(uri, local.read_bytes(), opts)
    cfg = SourceConfig(kind="manifest", path=uri)
    validate(cfg, opts)
    samples = list(build_source(cfg, opts).list_samples())
    assert [s.image for s in samples] == [
        storage.join(s3_prefix, "meta", "imgs", n) for n in ("a.png", "b.png")
    ]
    assert samples[0].captions == ("a red car",)
