from pathlib import Path

import pytest
import yaml

from clipsr.config import CLIPSRConfig, load_clipsr_config
from clipsr.config_loader import ConfigError, flatten, from_dict, parse_override, to_dict, to_yaml
from tests.conftest import CONFIGS

SHIPPED = sorted(Path(CONFIGS).glob("*.yaml"))


def test_presets_exist_for_each_scale():
    names = {p.stem for p in SHIPPED}
    for size in ("tiny", "base"):
        for scale in (4, 8, 16):
            assert f"{size}-x{scale}" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_clipsr_config(path)
    scale = int(path.stem.split("-x")[1].removesuffix("-reference"))
    assert cfg.model.scale == scale
    assert cfg.model.lr_size * scale == cfg.model.hr_size
    # the resolved config round-trips through YAML unchanged
    assert from_dict(CLIPSRConfig, yaml.safe_load(to_yaml(cfg))) == cfg


def test_base_presets_are_the_paper_setting():
    for scale, lr in ((4, 64), (8, 32), (16, 16)):
        cfg = load_clipsr_config(Path(CONFIGS) / f"base-x{scale}.yaml")
        assert cfg.model.clip.arch == "ViT-B-32"
        assert cfg.model.clip.image_taps == [1, 4, 8]
        assert cfg.model.generator.encoder_channels == [256, 512, 512, 512]
        assert cfg.model.hr_size == 256 and cfg.model.lr_size == lr
        w = cfg.loss.weights
        assert (w.reconstruction, w.perceptual, w.adversarial, w.clip_similarity) == (
            1.0,
            1.0,
            0.01,
            0.04,
        )
        assert cfg.optim.betas == (0.0, 0.9)


def test_presets_are_native_and_the_reference_presets_pre_upsample_to_the_4x_lr_size():
    """tiny/base-x{8,16} read their LR as it is (the head upsamples the whole factor); the
    -reference presets nearest-upsample it to the 4x model's LR size (64 px at base), as the
    reference code does."""
    for size in ("tiny", "base"):
        for scale in (4, 8, 16):
            native = load_clipsr_config(Path(CONFIGS) / f"{size}-x{scale}.yaml")
            assert native.model.generator.lr_pre_upsample == 1
    for name, pre in (("base-x8", 2), ("base-x16", 4), ("tiny-x16", 4)):
        native = load_clipsr_config(Path(CONFIGS) / f"{name}.yaml")
        reference = load_clipsr_config(Path(CONFIGS) / f"{name}-reference.yaml")
        assert reference.model.generator.lr_pre_upsample == pre
        four = 64 if name.startswith("base") else 32
        assert reference.model.lr_size * pre == four
        reference.model.generator.lr_pre_upsample = 1
        assert reference == native  # nothing else differs


def test_overrides_set_nested_typed_values():
    cfg = load_clipsr_config(
        Path(CONFIGS) / "tiny-x4.yaml",
        [
            "model.generator.wiring=release",
            "model.clip.image_taps=[0,2,3]",
            "optim.generator_lr=3e-4",
            "optim.discriminator_lr=1",
            "model.clip.quick_gelu=true",
        ],
    )
    assert cfg.model.generator.wiring == "release"
    assert cfg.model.clip.image_taps == [0, 2, 3]
    assert cfg.optim.generator_lr == 3e-4
    assert cfg.optim.discriminator_lr == 1.0 and isinstance(cfg.optim.discriminator_lr, float)
    assert cfg.model.clip.quick_gelu is True


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.generator.widht=3", "unknown key 'model.generator.widht'"),
        ("nope=1", "unknown key 'nope'"),
        ("model.scale=four", "model.scale: expected an integer"),
        ("model.generator.wiring=both", "model.generator.wiring: expected one of"),
        ("model.clip.image_taps=[1,x]", "model.clip.image_taps[1]: expected an integer"),
        ("model.generator.text_softmax=1", "model.generator.text_softmax: expected true or false"),
        ("model.clip=3", "model.clip: expected a mapping"),
        ("model.scale=3", "model.scale: must be one of"),
        ("model.hr_size=130", "model.scale: 4 does not divide model.hr_size 130"),
        ("model.hr_size=136", "must be a multiple of 8"),
        ("model.generator.lr_pre_upsample=3", "model.generator.lr_pre_upsample"),
        ("model.clip.checkpoint=/no/such/file.pt", "model.clip.checkpoint: file not found"),
        ("model.clip.image_taps=[3,1]", "model.clip.image_taps: must be increasing"),
        ("optim.betas=[0.5]", "optim.betas: expected 2 items"),
        ("model.generator", "must look like key.sub=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_clipsr_config(Path(CONFIGS) / "tiny-x4.yaml", [override])
    assert needle in str(err.value)
    assert "tiny-x4.yaml" in str(err.value)


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  generator:\n    chanels: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.generator.chanels'"):
        load_clipsr_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_clipsr_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_clipsr_config(tmp_path / "list.yaml")


def test_parse_override_and_flatten():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("a=") == {"a": ""}
    flat = flatten(CLIPSRConfig())
    assert flat["model.generator.wiring"] == "paper"
    assert flat["loss.weights.adversarial"] == 0.01
    assert to_dict(CLIPSRConfig())["model"]["clip"]["image_taps"] == [1, 4, 8]


def test_an_override_keeps_the_other_values_of_a_nested_default_factory():
    import dataclasses

    from clipsr.config_loader import from_dict

    @dataclasses.dataclass
    class Inner:
        a: int = 0
        b: str = ""

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=lambda: Inner(a=5, b="x"))

    assert from_dict(Outer, {}, ["inner.b=y"]).inner == Inner(a=5, b="y")
    assert from_dict(Outer, {}).inner == Inner(a=5, b="x")


def test_a_string_field_takes_an_integer_as_its_text_but_not_a_float_or_bool():
    import dataclasses

    from clipsr.config_loader import ConfigError, from_dict

    @dataclasses.dataclass
    class Cfg:
        version: str = ""

    assert from_dict(Cfg, {}, ["version=3"]).version == "3"
    for bad in ("version=1.10", "version=true"):
        with pytest.raises(ConfigError, match="version: expected a string"):
            from_dict(Cfg, {}, [bad])
