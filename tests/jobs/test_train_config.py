from pathlib import Path

import pytest

from clipsr.config import CLIPSRConfig
from clipsr.config_loader import ConfigError, load_config
from jobs.train_config import load_train_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_train_config_loads(path):
    cfg = load_train_config(path)
    preset = load_config(CLIPSRConfig, ROOT / "configs" / path.name)
    assert cfg.model == preset.model  # 'extends' brings in the preset unchanged
    assert cfg.scales == cfg.model.all_scales and cfg.data.shards and cfg.run.name


def test_extends_merges_and_detects_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nmodel:\n  scale: 8\n")
    (tmp_path / "b.yaml").write_text("model:\n  hr_size: 128\n  scale: 4\n")
    cfg = load_config(CLIPSRConfig, tmp_path / "a.yaml")
    assert (cfg.model.scale, cfg.model.hr_size) == (8, 128)
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(CLIPSRConfig, tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.shards=", "data.shards: required"),
        ("data.scales=[8]", "data.scales"),
        ("run.precision=bf16", "run.precision"),
        ("run.steps=0", "run.steps"),
        ("run.ema_decay=1.0", "run.ema_decay"),
    ],
)
def test_bad_train_settings_fail_fast(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_train_config(ROOT / "configs" / "train" / "tiny-x4.yaml", [override])


def test_data_scales_default_to_the_model_scales_and_must_be_served():
    path = ROOT / "configs" / "train" / "tiny-multiscale.yaml"
    assert load_train_config(path).scales == [4, 8, 16]
    assert load_train_config(path, ["data.scales=[16]"]).scales == [16]
    with pytest.raises(ConfigError, match=r"data.scales: \[2\] has \[2\], which the model"):
        load_train_config(path, ["data.scales=[2]"])
