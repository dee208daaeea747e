"""``clipsr evaluate`` end to end: real preprocessed shards, a model registered on a real
``mlflow server`` (artifacts on moto S3), local and Ray Data modes."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from clipsr.shard_dataset import manifest_sha256, read_dataset_manifest
from jobs.evaluate import main, run_evaluate
from jobs.evaluate_config import load_evaluate_config
from jobs.evaluation_record import (
    DEFAULT_EXPERIMENT,
    KIND,
    METRIC_NAMES,
    TAG_KIND,
    TAG_MANIFEST,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_MODEL_VERSION,
    TAG_RESULT_SHA,
    TAG_SPLIT,
    VERSION_TAG_MANIFEST,
    VERSION_TAG_RUN,
    find_evaluation,
    metric_key,
)
from jobs.tracking import RunTracker, log_generator_model
from pipelines.bundled_photos import bundled_photos
from tests.conftest import text_sensitive_checkpoint, tiny_config
from tests.services import free_port

TEST_SAMPLES = 8


def _preprocess(corpus: Path, out: Path, scales: str, *extra: str) -> Path:
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    overrides = [f"source.path={corpus}", "source.kind=folder", "source.folder_split_dirs=true"]
    overrides += [f"output={out}", "hr_size=128", f"scales={scales}", "samples_per_shard=3"]
    overrides += list(extra)
    run_preprocess(load_preprocess_config(None, overrides), progress=False)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 test and 2 train crops of the bundled photographs, each with its own caption."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    photos = bundled_photos("train") + bundled_photos("test")
    for i in range(TEST_SAMPLES + 2):
        split = "test" if i < TEST_SAMPLES else "train"
        (root / split).mkdir(exist_ok=True)
        photo = photos[i % len(photos)]
        h, w, _ = photo.image.shape
        side = int(rng.integers(140, min(h, w, 300)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo.image[y : y + side, x : x + side]
        Image.fromarray(crop).save(root / split / f"c{i:02d}.png")
        (root / split / f"c{i:02d}.txt").write_text(f"{photo.caption}, view {i}\n")
    return root


@pytest.fixture(scope="module")
def shards(ray_session, corpus, tmp_path_factory) -> Path:
    """Test shards of 3, 3 and 2 samples at 4x (the real preprocess job on Ray)."""
    return _preprocess(corpus, tmp_path_factory.mktemp("shards"), "[4]")


@pytest.fixture(scope="module")
def checkpoint(tiny_clip, tmp_path_factory) -> Path:
    return text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "checkpoint")


@pytest.fixture(scope="module")
def registered(mlflow_server, checkpoint) -> str:
    """The checkpoint registered as version 1 of a fresh model name, alias @champion."""
    tracker = RunTracker(mlflow_server.uri)
    tracker.start("clipsr-registry", "train-x4", {"scale": 4}, None, system_metrics=False)
    name = f"clipsr-eval-{uuid.uuid4().hex[:8]}"
    _, version = log_generator_model(checkpoint, name, {"scales": "4"})
    tracker.end()
    mlflow.set_tracking_uri(None)
    mlflow.MlflowClient(mlflow_server.uri).set_registered_model_alias(name, "champion", version)
    assert version == "1"
    return name


@pytest.fixture(autouse=True)
def _no_global_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def _doc(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _keyed(doc: dict) -> dict[str, float]:
    return {f"{s}/{k}": v for s, m in doc["metrics"].items() for k, v in m.items()}


def test_registered_model_by_alias_and_version(
    shards, registered, mlflow_server, mlflow_tmpdir, upload_tree, s3_prefix, tmp_path, capsys
):
    uri = mlflow_server.uri
    manifest_sha = manifest_sha256(read_dataset_manifest(str(shards)))
    upload_tree(shards, s3_prefix)  # the alias run reads the shards from S3, the other locally
    out = tmp_path / "alias"
    rc = main(
        ["--model", f"models:/{registered}@champion", "--shards", s3_prefix, "--out", str(out)]
        + ["--tracking-uri", uri, "--endpoint-url", mlflow_server.s3.endpoint_url]
        + ["grid_rows=2", "batch_size=4"]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    client = mlflow.MlflowClient(uri)
    record = find_evaluation(client, registered, "1", manifest_sha)
    assert record is not None and record.run_id in printed
    assert str(out / "evaluation.json") in printed and "PSNR" in printed
    run = client.get_run(record.run_id)
    tags = run.data.tags
    assert tags[TAG_KIND] == KIND and tags[TAG_SPLIT] == "test"
    assert tags[TAG_MODEL_NAME] == registered and tags[TAG_MODEL_VERSION] == "1"
    assert tags[TAG_MODEL_URI] == f"models:/{registered}@champion"
    assert tags[TAG_MANIFEST] == manifest_sha
    json_bytes = (out / "evaluation.json").read_bytes()
    assert tags[TAG_RESULT_SHA] == hashlib.sha256(json_bytes).hexdigest()
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == DEFAULT_EXPERIMENT
    # metrics: the contract's names only, all but LPIPS (no weights configured)
    from clipsr.evaluation import ADHERENCE_METRICS

    # photographs declare no attributes: no prompt-adherence metrics
    skip = {*ADHERENCE_METRICS, "lpips", "lpips_bicubic"}
    expected = {metric_key(4, n) for n in METRIC_NAMES if n not in skip}
    assert set(run.data.metrics) == expected
    doc = _doc(out / "evaluation.json")
    assert run.data.metrics == pytest.approx(_keyed(doc))
    assert run.data.metrics["x4/samples"] == TEST_SAMPLES
    assert doc["model"] == {
        "uri": f"models:/{registered}@champion", "name": registered, "version": "1", "scale": 4,
        "clip_weights": "random (no pretrained weights; clipsr-tiny, init seed 0)",
    }  # fmt: skip
    assert tags["clipsr.eval.clip_weights"] == doc["model"]["clip_weights"]
    # MLflow's own record: who and what ran it, the test shards and the model as inputs
    from jobs.registry import who

    assert tags["mlflow.user"] == who() and tags["mlflow.source.name"]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == manifest_sha[:36] and dataset.dataset.source_type == "s3"
    assert json.loads(dataset.dataset.profile)["manifest_sha256"] == manifest_sha
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "evaluation"
    model_id = client.get_model_version(registered, "1").source.removeprefix("models:/")
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    linked = client.get_logged_model(model_id).metrics
    assert {m.key for m in linked} == expected and {m.run_id for m in linked} == {record.run_id}
    report = (out / "report.html").read_text()
    assert "CLIP weights: <b>random" in report and "CLIP is randomly initialised" in report
    assert f"/runs/{record.run_id}" in report and "MLflow run" in report
    assert doc["manifest_sha256"] == manifest_sha and doc["samples"] == TEST_SAMPLES
    artifacts = {a.path for a in client.list_artifacts(record.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/report.html"} <= artifacts
    logged = mlflow.artifacts.download_artifacts(
        run_id=record.run_id, artifact_path="evaluation/evaluation.json", dst_path=str(tmp_path),
        tracking_uri=uri,
    )  # fmt: skip
    assert Path(logged).read_bytes() == json_bytes
    images = client.list_artifacts(record.run_id, "evaluation/images")
    assert len(images) == 2 * 5  # grid_rows x (LR, bicubic, SR, SR mismatched, HR)
    version = client.get_model_version(registered, "1")
    assert version.tags[VERSION_TAG_RUN] == record.run_id
    assert version.tags[VERSION_TAG_MANIFEST] == manifest_sha

    # models:/NAME/1: the same numbers, a newer run, the version's tag moves to it
    cfg = load_evaluate_config(
        None,
        [f"model=models:/{registered}/1", f"shards={shards}", f"out={tmp_path / 'v1'}"]
        + [f"tracking_uri={uri}", "grid_rows=2", "batch_size=4"],
    )
    result = run_evaluate(cfg, log=lambda *_: None)
    assert (result.model_name, result.model_version) == (registered, "1")
    assert result.manifest_sha256 == manifest_sha and result.run_id != record.run_id
    second = _doc(result.json_path)
    assert second["metrics"] == doc["metrics"] and second["per_sample"] == doc["per_sample"]
    assert second["model"]["uri"] == f"models:/{registered}/1"
    assert client.get_run(result.run_id).data.tags[TAG_MODEL_URI] == f"models:/{registered}/1"
    assert find_evaluation(client, registered, "1", manifest_sha).run_id == result.run_id
    assert client.get_model_version(registered, "1").tags[VERSION_TAG_RUN] == result.run_id


def _local_cfg(checkpoint: Path, shards: Path, out: Path, *extra: str):
    return load_evaluate_config(
        None, [f"model={checkpoint}", f"shards={shards}", f"out={out}", *extra]
    )


def test_repeatable_bytes_local_and_ray_and_the_caption_ablation(
    shards, checkpoint, ray_session, tmp_path
):
    logged = []
    cfg = _local_cfg(checkpoint, shards, tmp_path / "a", "mode=local")
    first = run_evaluate(cfg, logged.append)
    assert first.run_id is None and first.mode == "local"
    assert any("not logged" in line for line in logged)
    again = run_evaluate(_local_cfg(checkpoint, shards, tmp_path / "b", "mode=local"), print)
    ray = run_evaluate(_local_cfg(checkpoint, shards, tmp_path / "c", "mode=ray"), print)
    assert ray.mode == "ray"
    data = first.json_path.read_bytes()
    assert data == again.json_path.read_bytes() == ray.json_path.read_bytes()
    assert first.report_path.read_bytes() == ray.report_path.read_bytes()
    for name in sorted(p.name for p in (tmp_path / "a" / "images").iterdir()):
        png = (tmp_path / "a/images" / name).read_bytes()
        assert png == (tmp_path / "c/images" / name).read_bytes()
    assert str(tmp_path) not in data.decode()  # no temp path but the model URI as given
    doc = json.loads(data)
    assert doc["model"] == {
        "uri": str(checkpoint),
        "name": None,
        "version": None,
        "scale": 4,
        "clip_weights": "random (no pretrained weights; clipsr-tiny, init seed 0)",
    }

    # the ablation: the text changes the output, and the gains are the differences
    m, rows = doc["metrics"]["x4"], doc["per_sample"]["x4"]
    assert len(rows) == TEST_SAMPLES == m["samples"]
    assert m["psnr_caption_mismatched"] != m["psnr"] and m["psnr_caption_empty"] != m["psnr"]
    assert m["text_gain_psnr"] == round(m["psnr"] - m["psnr_caption_mismatched"], 6)
    assert m["text_gain_psnr_empty"] == round(m["psnr"] - m["psnr_caption_empty"], 6)
    assert m["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]), abs=1e-5)
    captions = [r["caption"] for r in rows]
    assert len(set(captions)) == TEST_SAMPLES
    for i, row in enumerate(rows):
        assert row["index"] == i
        assert row["caption_mismatched"] == captions[(i + TEST_SAMPLES // 2) % TEST_SAMPLES]
    assert sum(r["psnr"] != r["psnr_caption_mismatched"] for r in rows) >= TEST_SAMPLES // 2
    assert 0 < m["clip_score"] <= 100 and 0 < m["ssim"] <= 1

    # another batch size and limit are other settings, recorded in the JSON
    small = run_evaluate(
        _local_cfg(checkpoint, shards, tmp_path / "d", "limit=4", "batch_size=2"), print
    )
    small_doc = _doc(small.json_path)
    assert small_doc["samples"] == 4 and small_doc["settings"]["batch_size"] == 2
    assert [r["key"] for r in small_doc["per_sample"]["x4"]] == [r["key"] for r in rows[:4]]


def test_prompt_adherence_where_the_shard_set_declares_attributes(ray_session, tiny_clip, tmp_path):
    from pipelines.bundled_corpus import write_shapes

    write_shapes(tmp_path / "corpus", train=2, test=6)
    shards = _preprocess(tmp_path / "corpus", tmp_path / "shards", "[16]", "degradation.kind=box")
    assert read_dataset_manifest(str(shards))["attributes"]["kind"] == "cell-shapes"
    checkpoint = text_sensitive_checkpoint(
        tiny_clip, tmp_path / "ck", 16, "model.generator.lr_pre_upsample=1"
    )
    result = run_evaluate(_local_cfg(checkpoint, shards, tmp_path / "out", "mode=local"), print)
    doc = _doc(result.json_path)
    m, rows = doc["metrics"]["x16"], doc["per_sample"]["x16"]
    assert m["adherence_samples"] == 6 == len(rows) and m["adherence_chance"] == 0.25
    objects = sum(r["objects"] for r in rows)
    assert objects > 6 and all(r["edit_objects"] == 3 * r["objects"] for r in rows)
    assert m["adherence"] == round(sum(r["adherent"] for r in rows) / objects, 6)
    assert m["edit_success"] == round(sum(r["edit_hits"] for r in rows) / (3 * objects), 6)
    assert m["text_gain_shape_psnr"] == round(m["psnr"] - m["psnr_shape_swapped"], 6)
    assert all(len(r["verdicts"]) == 4 for r in rows)
    assert "x16/adherence" in result.metrics and "x16/edit_success" in result.metrics
    report = result.report_path.read_text()
    assert "Prompt adherence" in report and "Zoomed crops" in report
    zooms = sorted((tmp_path / "out" / "images").glob("x16_0000_zoom_*.png"))
    assert len(zooms) == 7  # LR, bicubic, SR true, 3 swapped shapes, HR
    assert Image.open(zooms[0]).size == (128, 128)  # two 16 px cells at 4x


def _lpips_files(directory: Path) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    linear = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
        for i, c in enumerate((64, 128, 256, 512, 512))
    }
    paths = directory / "vgg16.safetensors", directory / "lin.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(paths[0]))
    save_file(linear, str(paths[1]))
    return paths


def test_lpips_only_when_weights_are_configured(shards, checkpoint, tiny_clip, tmp_path):
    backbone, linear = _lpips_files(tmp_path)
    extra = ("limit=2", "mode=local", "grid_rows=0")
    plain = run_evaluate(_local_cfg(checkpoint, shards, tmp_path / "p", *extra), print)
    assert "x4/lpips" not in plain.metrics and "x4/psnr" in plain.metrics
    assert "lpips" not in _doc(plain.json_path)["per_sample"]["x4"][0]
    with_lpips = run_evaluate(
        _local_cfg(
            checkpoint, shards, tmp_path / "l", *extra,
            f"lpips_backbone_weights={backbone}", f"lpips_linear_weights={linear}",
        ),
        print,
    )  # fmt: skip
    m = with_lpips.metrics
    assert m["x4/lpips"] > 0 and m["x4/lpips_bicubic"] > 0
    assert m["x4/lpips"] != m["x4/lpips_bicubic"]
    assert m["x4/psnr"] == plain.metrics["x4/psnr"]
    assert _doc(with_lpips.json_path)["settings"]["lpips"] is True

    # weights named in the model's own metrics config: used; gone: a clear error or lpips=false
    from clipsr.inference import save_generator_checkpoint
    from clipsr.training import build_generator

    cfg = tiny_config(
        4, f"metrics.lpips_backbone_weights={backbone}", f"metrics.lpips_linear_weights={linear}"
    )
    model = save_generator_checkpoint(
        tmp_path / "ck", cfg, build_generator(cfg, tiny_clip), tiny_clip
    )
    own = run_evaluate(_local_cfg(model, shards, tmp_path / "own", *extra), print)
    assert own.metrics["x4/lpips"] > 0
    backbone.rename(tmp_path / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match="metrics.lpips_backbone_weights"):
        run_evaluate(_local_cfg(model, shards, tmp_path / "gone", *extra), print)
    off = run_evaluate(_local_cfg(model, shards, tmp_path / "off", *extra, "lpips=false"), print)
    assert "x4/lpips" not in off.metrics


def test_bad_input_exits_2_with_a_clear_message(
    shards, corpus, registered, checkpoint, mlflow_server, mlflow_tmpdir, tmp_path, capsys
):
    base = ["--shards", str(shards), "--out", str(tmp_path / "o")]
    uri = ["--tracking-uri", mlflow_server.uri]
    assert main(["--model", f"models:/{registered}/7", *base, *uri]) == 2
    err = capsys.readouterr().err
    assert f"models:/{registered}/7" in err and "clipsr evaluate:" in err
    assert main(["--model", f"models:/{registered}@nosuchalias", *base, *uri]) == 2
    assert "nosuchalias" in capsys.readouterr().err
    assert main(["--model", f"models:/{registered}@champion", *base]) == 2  # no tracking URI
    assert "tracking URI" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["--model", f"models:/{registered}@champion", *base, "--tracking-uri", dead]) == 2
    assert f"{dead} is not reachable" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing"), *base]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert main(["--model", "123", *base]) == 2  # a flag's value stays a string
    assert "checkpoint directory not found: 123" in capsys.readouterr().err
    assert main(["--model", str(checkpoint), "--shards", str(tmp_path / "none")]) == 2
    assert "manifest.json missing" in capsys.readouterr().err
    assert main(["--model", str(checkpoint), "--shards", str(shards), "--split", "val"]) == 2
    assert "no shards for split 'val'" in capsys.readouterr().err
    assert main(["--model", str(checkpoint), "--shards", str(shards), "batch_size=0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    x8 = _preprocess(corpus, tmp_path / "x8", "[8]")
    assert main(["--model", str(checkpoint), "--shards", str(x8), *base[2:]]) == 2
    err = capsys.readouterr().err
    assert "4x" in err and "available scales: [8]" in err and str(x8) in err
    assert not (tmp_path / "o" / "evaluation.json").exists()


def test_the_shipped_config_lists_every_default_and_flags_map_onto_fields(tmp_path):
    from clipsr.config_loader import ConfigError, to_dict
    from jobs.evaluate import _parser
    from jobs.evaluate_config import EvaluateConfig

    root = Path(__file__).resolve().parents[2]
    shipped = load_evaluate_config(root / "configs/evaluate/default.yaml", ["model=m", "shards=s"])
    assert to_dict(shipped) == to_dict(EvaluateConfig(model="m", shards="s"))
    args = _parser().parse_args(["--model", "123", "--num-actors", "3", "--crop-border", "2"])
    assert (args.field_model, args.field_num_actors, args.field_crop_border) == ("123", "3", "2")
    for bad, key in [("mode=fast", "mode"), ("limit=-1", "limit"), ("out=s3://b/x", "out")]:
        with pytest.raises(ConfigError, match=key):
            load_evaluate_config(None, ["model=m", "shards=s", bad])
    with pytest.raises(ConfigError, match="set both or none"):
        load_evaluate_config(None, ["model=m", "shards=s", f"lpips_linear_weights={tmp_path}"])
