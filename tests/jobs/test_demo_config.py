"""The demo's config: shipped files load, bad values fail fast naming the key."""

from __future__ import annotations

import pytest

from clipsr.config_loader import ConfigError
from jobs.demo_config import load_demo_config
from jobs.train_config import load_train_config
from pipelines.preprocess_config import load_preprocess_config


def test_default_demo_config_and_the_configs_it_names_load():
    cfg = load_demo_config(None)
    for model in (cfg.photos, cfg.shapes):
        tcfg = load_train_config(model.train_config, ["data.shards=/tmp/x"])
        tcfg.validate()
        assert tcfg.tracking.registered_model.startswith("clipsr-demo-x")
    assert load_train_config(cfg.shapes.train_config).model.scale == 16
    assert load_train_config(cfg.photos.train_config).model.scale == 4
    for model, scales in ((cfg.photos, [4]), (cfg.shapes, [16])):
        pcfg = load_preprocess_config(model.preprocess_config, ["source.path=/x", "output=/y"])
        pcfg.validate()
        assert pcfg.source.folder_split_dirs and pcfg.hr_size == 128 and pcfg.scales == scales
    # the shapes are leak-free only with box downsampling (tests/pipelines/test_generated_shapes)
    shapes = load_preprocess_config(cfg.shapes.preprocess_config, ["source.path=/x", "output=/y"])
    assert shapes.degradation.kind == "box"
    from jobs.pretrain_clip_config import load_pretrain_clip_config

    ccfg = load_pretrain_clip_config(cfg.shapes.clip_config, ["data.shards=/tmp/x"])
    ccfg.validate()
    assert ccfg.clip.arch == load_train_config(cfg.shapes.train_config).model.clip.arch


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("workdir=s3://bucket/demo", "workdir"),
        ("storage=gs://bucket/x", "storage"),
        ("photos.train_config=configs/nope.yaml", "photos.train_config"),
        ("num_workers=0", "num_workers"),
        ("shapes.steps=-1", "shapes.steps"),
    ],
)
def test_bad_demo_config_fails_fast(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_demo_config(None, [override])


def test_prompt_editing_swaps_one_attribute_word():
    from jobs.demo import edited_prompts

    swaps = ["circles", "squares", "triangles"]
    caption = "purple squares on a white background"
    assert edited_prompts(["{caption}", "a cat"], swaps, caption) == [
        caption,
        "a cat",
        "purple circles on a white background",
        "purple triangles on a white background",
    ]
    assert edited_prompts(["{caption}"], swaps, "a tabby cat") == ["a tabby cat"]


def test_the_demo_promote_configs_load():
    from jobs.promote_config import load_promote_config

    cfg = load_demo_config(None)
    photos = load_promote_config(cfg.photos.promote_config, ["model=m", "version=1"])
    shapes = load_promote_config(cfg.shapes.promote_config, ["model=m", "version=1"])
    assert "text_gain_psnr" not in {g.metric for g in photos.gates}
    gated = {g.metric for g in shapes.gates}
    assert {"x16/adherence", "x16/edit_success", "x16/text_gain_shape_psnr"} <= gated


def test_a_fresh_demo_forgets_finished_stages_and_training_runs(tmp_path):
    from jobs.demo import STATE, Demo

    workdir = tmp_path / "demo"
    for name in ("demo-photos-x4", "demo-shapes-x16", "demo-clip-shapes"):
        (workdir / "runs" / name / "checkpoint_000001").mkdir(parents=True)
    (workdir / "runs" / "unrelated").mkdir()
    (workdir / STATE).write_text('{"corpus": {"fingerprint": "x", "result": {}}}')
    kept = Demo(load_demo_config(None, [f"workdir={workdir}"]))
    assert "corpus" in kept.stages.state and (workdir / "runs" / "demo-photos-x4").is_dir()
    fresh = Demo(load_demo_config(None, [f"workdir={workdir}", "fresh=true"]))
    assert fresh.stages.state == {}
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["unrelated"]


def _results(x16: dict) -> dict:
    x4 = {"x4/psnr": 28.0, "x4/psnr_bicubic": 27.4}
    return {"photos": {"evaluate": {"metrics": x4}}, "shapes": {"evaluate": {"metrics": x16}}}


def test_check_fails_when_the_caption_is_ignored():
    """--check: a 16x model that draws one blob for every caption (adherence and edit success at
    chance, no shape-only gain) fails, however well it beats bicubic; one that follows passes."""
    from jobs.demo_summary import checks

    following = {
        "x16/psnr": 27.5,
        "x16/psnr_bicubic": 16.9,
        "x16/adherence": 1.0,
        "x16/edit_success": 0.99,
        "x16/text_gain_shape_psnr": 8.8,
    }
    assert all(checks(_results(following)).values())
    ignoring = following | {
        "x16/adherence": 0.26,
        "x16/edit_success": 0.25,
        "x16/text_gain_shape_psnr": 0.01,
    }
    failed = [k for k, ok in checks(_results(ignoring)).items() if not ok]
    assert len(failed) == 2 and all("chance 25%" in k for k in failed)
    no_metrics = {"x16/psnr": 27.5, "x16/psnr_bicubic": 16.9}  # a set without attributes
    assert not all(checks(_results(no_metrics)).values())
