"""Bad input across the six commands: each case exits non-zero with one line on stderr (no
traceback), and writes nothing anywhere (the whole temporary tree, the working directory
included, is compared before and after). Every case runs in this process through the CLI's
``main``, before Ray or MLflow work starts; the one that needs Ray (a corpus whose every sample
is rejected) is a separate test below."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from clipsr.shards import FORMAT_VERSION
from jobs.cli import main
from tests.conftest import text_sensitive_checkpoint
from tests.pipelines.conftest import image_bytes


def _bomb_png() -> bytes:
    """A PNG header that claims 20000 x 20000 pixels (over twice Pillow's limit): a
    decompression bomb as far as anything that opens it can tell."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip):
    """Inputs the cases point at: configs, a tiny checkpoint, shards with only a manifest, a
    corpus, images (one a decompression bomb), an existing file, and a registry with model
    ``m`` version 1 in a sqlite store."""
    root = tmp_path_factory.mktemp("world")
    (root / "cwd").mkdir()
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a.png").write_bytes(image_bytes("PNG", size=(96, 96)))
    (corpus / "a.txt").write_text("a caption\n")
    (root / "pre.yaml").write_text(
        f"source: {{kind: folder, path: '{corpus}'}}\noutput: '{root / 'shards-out'}'\n"
        "hr_size: 64\nscales: [4]\n"
    )
    (root / "train.yaml").write_text(
        "extends: " + str(Path(__file__).resolve().parents[2] / "configs/train/tiny-x4.yaml")
        + f"\ndata: {{shards: '{root / 'shards'}'}}\nrun: {{storage_path: '{root / 'runs'}'}}\n"
    )  # fmt: skip
    (root / "bad.yaml").write_text("source: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    shards = root / "shards"
    shards.mkdir()
    entries = [{"split": s, "tar": f"{s}-000000.tar", "samples": 1} for s in ("train", "test")]
    manifest = {"format_version": FORMAT_VERSION, "scales": [4], "hr_size": 128, "shards": entries}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    small = root / "small-shards"
    small.mkdir()
    (small / "manifest.json").write_text(json.dumps({**manifest, "hr_size": 64}))
    checkpoint = text_sensitive_checkpoint(tiny_clip, root / "ck")
    (root / "lr.png").write_bytes(image_bytes("PNG", size=(32, 32)))
    (root / "bomb.png").write_bytes(_bomb_png())
    (root / "images").mkdir()
    (root / "images" / "x.png").write_bytes(image_bytes("PNG", size=(32, 32)))
    (root / "taken").write_text("a file, not a directory\n")
    (root / "archive.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)
    import mlflow

    store = f"sqlite:///{root / 'registry' / 'mlflow.db'}"
    (root / "registry").mkdir()
    client = mlflow.MlflowClient(store, registry_uri=store)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(checkpoint))
    return {"root": root, "ck": str(checkpoint), "store": store}


DEAD = "http://127.0.0.1:9"  # nothing listens there
REALESRGAN = "degradation.kind=realesrgan"
R = "degradation.realesrgan"
# (command line with {root} {ck} {store}, exit code, text the one line must contain)
CASES = [
    # preprocess
    ("preprocess", 2, "the following arguments are required: config"),
    ("preprocess {root}/nope.yaml", 2, "config file not found"),
    ("preprocess {root}/bad.yaml", 2, "not valid YAML"),
    ("preprocess {root}/list.yaml", 2, "top level must be a mapping"),
    ("preprocess {root}/pre.yaml sourc.path=x", 2, "did you mean 'source'"),
    ("preprocess {root}/pre.yaml scales=[4,6]", 2, "override 'scales=[4,6]'"),
    ("preprocess {root}/pre.yaml output={root}/taken", 2, "exists and is not a directory"),
    ("preprocess {root}/pre.yaml output={root}/taken/sub", 2, "exists and is not a directory"),
    ("preprocess {root}/pre.yaml source.kind=laion", 2, "source.kind"),
    ("preprocess {root}/pre.yaml source.path={root}/nowhere", 2, "directory not found"),
    ("preprocess {root}/pre.yaml hr_quality=0", 2, "hr_quality"),
    ("preprocess {root}/pre.yaml test_fraction=1.5", 2, "test_fraction"),
    ("preprocess {root}/pre.yaml samples_per_shard=0", 2, "samples_per_shard"),
    (f"preprocess {{root}}/pre.yaml {REALESRGAN} {R}.sinc_prob=1.5", 2, "sinc_prob is a prob"),
    (f"preprocess {{root}}/pre.yaml {R}.gray_noise_prob=-1", 2, "gray_noise_prob is a prob"),
    (f"preprocess {{root}}/pre.yaml {R}.resize_range=[0.3,0.9]", 2, "resize_range must hold 1"),
    (f"preprocess {{root}}/pre.yaml {R}.resize_range2=[1.1,1.2]", 2, "resize_range2 must hold"),
    (f"preprocess {{root}}/pre.yaml {R}.betap_range=[1.5,2.0]", 2, "betap_range must hold 1"),
    (f"preprocess {{root}}/pre.yaml {R}.kernel_list2=[iso]", 2, "kernel_prob2 must be 1"),
    (f"preprocess {{root}}/pre.yaml {R}.kernel_list2=[box]", 2, "unknown kernel type 'box'"),
    (
        "preprocess {root}/pre.yaml source.kind=webdataset source.path={root}/archive.tar",
        2,
        "compressed",
    ),
    ("preprocess {root}/pre.yaml --bogus", 2, "unrecognized arguments: --bogus"),
    # train
    ("train", 2, "the following arguments are required: config"),
    ("train {root}/nope.yaml", 2, "config file not found"),
    ("train {root}/train.yaml run.stpes=3", 2, "did you mean 'run.steps'"),
    ("train {root}/train.yaml data.shards=", 2, "data.shards: required"),
    ("train {root}/train.yaml data.shards={root}/nowhere", 2, "run clipsr preprocess first"),
    ("train {root}/train.yaml run.steps=0", 2, "run.steps"),
    ("train {root}/train.yaml run.precision=bf16", 2, "needs run.use_gpu"),
    ("train {root}/train.yaml model.scale=3", 2, "model.scale: must be one of"),
    ("train {root}/train.yaml data.scales=[8]", 2, "data.scales"),
    ("train {root}/train.yaml run.ema_decay=1.5", 2, "run.ema_decay"),
    ("train {root}/train.yaml model.clip.checkpoint={root}/no.pt", 2, "file not found"),
    (
        "train {root}/train.yaml loss.perceptual=vgg16 loss.vgg16_weights={root}/no.pth",
        2,
        "loss.vgg16_weights: file not found",
    ),
    ("train {root}/train.yaml data.shards={root}/small-shards", 2, "HR size 64"),
    ("train {root}/train.yaml tracking.tracking_uri=" + DEAD, 2, "is not reachable"),
    # evaluate
    ("evaluate", 2, "model: required"),
    ("evaluate --model x", 2, "shards: required"),
    ("evaluate --model {ck} --shards {root}/shards --out {root}/taken", 2, "not a directory"),
    ("evaluate --model {ck} --shards {root}/shards --out s3://b/x", 2, "out: a local directory"),
    ("evaluate --model {ck} --shards {root}/shards --limit -1", 2, "limit: must be >= 0"),
    ("evaluate --model {ck} --shards {root}/shards --mode fast", 2, "mode: expected one of"),
    ("evaluate --model {ck} --shards {root}/shards --batch-size 0", 2, "batch_size: must be"),
    ("evaluate --model {ck} --shards {root}/shards --device tpu", 2, "device:"),
    ("evaluate --model {ck} --shards {root}/shards grid_rows=-1", 2, "grid_rows"),
    ("evaluate --model {ck} --shards {root}/shards limt=3", 2, "did you mean 'limit'"),
    ("evaluate --model {root}/no-ck --shards {root}/shards", 2, "checkpoint directory not found"),
    ("evaluate --model {ck} --shards {root}/nowhere", 2, "run clipsr preprocess first"),
    ("evaluate --model x --shards y --lpips-linear-weights {root}/taken", 2, "set both or none"),
    ("evaluate --config {root}/nope.yaml --model x --shards y", 2, "config file not found"),
    ("evaluate --model models:/m/1 --shards y --tracking-uri " + DEAD, 2, "is not reachable"),
    # promote
    ("promote", 2, "model: give the registered model name"),
    ("promote --model m", 2, "version: give the candidate version"),
    ("promote --model m --version 99 --tracking-uri {store}", 2, "has no version 99 (versions: 1)"),
    ("promote --model nope --version 1 --tracking-uri {store}", 2, "no registered model named"),
    ("promote --model m --version v3", 2, "a registered model version number"),
    ("promote --model m --version 2 --rollback", 2, "give no version"),
    ("promote --model m --version 1 --alias a.b", 2, "alias:"),
    ("promote --model m --version 1 --tracking-uri " + DEAD, 2, "is not reachable"),
    ('promote --model m --version 1 gates=[{{"metric":"fid"}}]', 2, "unknown metric 'fid'"),
    ("promote --config {root}/nope.yaml --model m --version 1", 2, "config file not found"),
    ("promote --model m --version 1", 2, "no MLflow tracking store"),
    # upscale
    ("upscale --out o --prompt p {root}/lr.png", 2, "give the model as --model"),
    ("upscale --model {ck} --out o", 2, "give image files"),
    ("upscale --model {ck} --out {root}/taken --prompt p {root}/lr.png", 2, "not a directory"),
    ("upscale --model {ck} --out o {root}/lr.png", 2, "--prompt is required"),
    ("upscale --model a --checkpoint b --out o --prompt p {root}/lr.png", 2, "once"),
    ("upscale --model {ck} --out o --prompt a --prompt b --input-dir {root}", 2, "grid"),
    ("upscale --model {ck} --out o --out-format shards --prompt p {root}/lr.png", 2, "needs"),
    ("upscale --model {ck} --out s3://b/x --prompt p {root}/lr.png", 2, "local directory"),
    ("upscale --model {root}/no-ck --out o --prompt p {root}/lr.png", 2, "not found"),
    ("upscale --model {ck} --out o --prompt p --scale 8 {root}/lr.png", 2, "a 4x model"),
    ("upscale --model {ck} --out o --prompt p {root}/bomb.png", 1, "skipped"),
    ("upscale --model {ck} --out o --prompt p {root}/missing.png", 1, "skipped"),
    ("upscale --model {ck} --out o --input-dir {root}/nowhere", 2, "--input-dir"),
    ("upscale --model {ck} --out o --shards {root}/nowhere", 2, "--shards"),
    ("upscale --model {ck} --out o --input-dir {root}/images --batch-size 0", 2, ">= 1"),
    (
        "upscale --model models:/m@x --out o --prompt p --tracking-uri " + DEAD + " {root}/lr.png",
        2,
        "is not reachable",
    ),  # fmt: skip
    # demo
    ("demo workdir=s3://b/x", 2, "workdir: a local directory"),
    ("demo num_workers=0", 2, "num_workers >= 1"),
    ("demo photos.train_config={root}/nope.yaml", 2, "no such file"),
    ("demo {root}/nope.yaml", 2, "config file not found"),
    ("demo shapes_trian=3", 2, "did you mean 'shapes_train'"),
    ("demo storage=gs://b/x", 2, "storage:"),
    ("demo eval_limit=-1", 2, "eval_limit >= 0"),
    ("demo --bogus", 2, "unrecognized arguments: --bogus"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_table_covers_every_command_with_50_cases():
    commands = {line.split()[0] for line, _, _ in CASES}
    assert commands == {"preprocess", "train", "evaluate", "promote", "upscale", "demo"}
    assert len(CASES) >= 50


@pytest.mark.parametrize(("line", "code", "needle"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(world, line, code, needle, capsys, monkeypatch):
    root = world["root"]
    monkeypatch.chdir(root / "cwd")  # relative defaults (runs/, outputs/) would land here
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CLIPSR_VERBOSE"):
        monkeypatch.delenv(name, raising=False)
    argv = line.format(root=root, ck=world["ck"], store=world["store"]).split()
    before = _tree(root)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        rc = exit_.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning: ")]
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clipsr {argv[0]}:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err
    assert _tree(root) == before, "something was written"


def test_verbose_shows_the_traceback_and_a_deprecated_flag_warns(world, capsys, monkeypatch):
    from clipsr.config_loader import ConfigDeprecationWarning

    monkeypatch.chdir(world["root"] / "cwd")
    with pytest.warns(ConfigDeprecationWarning, match="'num_actors' is deprecated, use 'conc"):
        rc = main(["evaluate", "--model", "x", "--shards", "y", "--num-actors", "0", "-v"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "clipsr evaluate: concurrency: must be >= 1, got 0"


def test_a_preprocess_that_writes_no_sample_exits_1(ray_session, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a", "b"):
        (corpus / f"{name}.png").write_bytes(b"not an image at all")
        (corpus / f"{name}.txt").write_text("a caption\n")
    config = tmp_path / "pre.yaml"
    config.write_text(f"source: {{kind: folder, path: '{corpus}'}}\nhr_size: 64\nscales: [4]\n")
    out = tmp_path / "out"
    assert main(["preprocess", str(config), f"output={out}", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "0 written, 2 rejected (not_an_image 2)" in captured.out
    err = captured.err.strip().splitlines()
    # the error is one line, the last; before it only the planning line (the job's progress)
    assert "no sample was written" in err[-1] and "rejects.jsonl" in err[-1]
    assert all(line.endswith("already committed") for line in err[:-1]), err
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 2
