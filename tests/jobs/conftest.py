"""Job tests use the S3 (moto) and MLflow server fixtures registered from tests.services."""

from pathlib import Path


def shapes_shards(factory, train: int, test: int, scales: str, per_shard: int) -> Path:
    """The generated shapes set (``train``/``test`` images) as ``clipsr preprocess`` shards with
    128 px HR at ``scales`` (e.g. "[4,8,16]"); ``factory``: pytest's tmp_path_factory."""
    from pipelines.bundled_corpus import write_shapes
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    corpus = factory.mktemp("corpus")
    write_shapes(corpus, train=train, test=test)
    out = factory.mktemp("shards")
    overrides = [f"source.path={corpus}", "source.kind=folder", "source.folder_split_dirs=true"]
    overrides += [f"output={out}", "hr_size=128", f"scales={scales}"]
    overrides += [f"samples_per_shard={per_shard}"]
    run_preprocess(load_preprocess_config(None, overrides), progress=False)
    return out
