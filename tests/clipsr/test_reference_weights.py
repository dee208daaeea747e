"""The reference checkpoint's name map, on meta tensors of the exact reference layout."""

import json
import re
from pathlib import Path

import open_clip
import pytest
import torch

from clipsr.discriminator import CLIPDiscriminator
from clipsr.generator import CLIPSRGenerator
from clipsr.reference_weights import (
    ReferenceFormatError,
    clipsr_name,
    convert,
    dropped_summary,
    read_reference_file,
    reference_clip_keys,
    reference_config,
    reference_name,
)

KEYS = Path(__file__).resolve().parents[1] / "data" / "reference-checkpoint-keys.json"
# What the reference builds but never runs (reference-checkpoint.md), written independently of
# the converter's own table.
NEVER_RUN = re.compile(
    r"netG\.(fc_code|mapping\.FBlocks|GBlocks\.[45]|to_rgb)\.|netD\.DBlocks\.\d+\.conv_s\."
)


def reference_layout(device="meta") -> dict[str, dict[str, torch.Tensor]]:
    layout = json.loads(KEYS.read_text())
    return {
        part: {k: torch.empty(shape, device=device) for k, shape in keys.items()}
        for part, keys in layout.items()
    }


@pytest.fixture(scope="module")
def expected():
    """The state dicts of clipsr's base release model, on the meta device (no memory)."""
    cfg = reference_config(4)
    clip_cfg = open_clip.get_model_config("ViT-B-32")
    with torch.device("meta"):
        gen = CLIPSRGenerator(cfg.model, 512, 768, (7, 7))
        disc = CLIPDiscriminator(cfg.model, 768, 512, (7, 7))
        clip = open_clip.model.CLIP(**clip_cfg, quick_gelu=True)
    return {
        "generator": gen.state_dict(),
        "discriminator": disc.state_dict(),
        "clip": reference_clip_keys(clip.state_dict()),
    }


def test_the_layout_is_the_documented_one():
    layout = reference_layout()
    assert {p: len(k) for p, k in layout.items()} == {"netG": 586, "netD": 17, "netC": 2}
    values = sum(t.numel() for t in layout["netG"].values())
    assert values == 147_509_496  # the parameter count train.py prints (with the CLIP trunk)


def test_every_clipsr_tensor_has_one_reference_source_and_the_rest_is_never_run(expected):
    conversion = convert(reference_layout(), expected)
    assert conversion.unplaced == []
    assert {t: len(w) for t, w in conversion.weights.items()} == {
        "generator": 213,
        "discriminator": 15,
        "clip": 149,
    }
    for target, state in expected.items():  # every clipsr key, from exactly one source
        assert set(conversion.sources[target]) == set(state)
    used = [s for sources in conversion.sources.values() for s in sources.values()]
    assert len(used) == len(set(used))
    dropped = {k for keys in conversion.dropped.values() for k in keys}
    every = {f"{p}.{k}" for p, keys in reference_layout().items() for k in keys}
    assert dropped == {k for k in every if NEVER_RUN.match(k)}
    assert set(used) == every - dropped
    assert dropped_summary(conversion.dropped) == [
        "netG fc_code.* (2 keys)",
        "netG mapping.FBlocks.* (144 keys)",
        "netG GBlocks.4-5.* (76 keys)",
        "netG to_rgb.* (2 keys)",
        "netD DBlocks.*.conv_s.* (4 keys)",
    ]


@pytest.mark.parametrize(
    ("part", "key", "target", "ours"),
    [
        ("netG", "c1.weight", "generator", "image_encoder.conv1.weight"),
        ("netG", "c4.bias", "generator", "image_encoder.conv4.bias"),
        ("netG", "R.weight", "generator", "image_encoder.act.weight"),
        ("netG", "head.0.weight", "generator", "head.lr_skip.weight"),
        ("netG", "tail.0.bias", "generator", "head.to_rgb.bias"),
        ("netG", "upsample.2.weight", "generator", "head.upsample.2.weight"),
        ("netG", "GBlocks.3.c_sc.weight", "generator", "refinement.stages.3.shortcut.weight"),
        ("netG", "GBlocks.0.c1.weight", "generator", "refinement.stages.0.fuse1.conv.weight"),
        (
            "netG",
            "GBlocks.2.fuse2.affine1.fc_beta.linear2.bias",
            "generator",
            "refinement.stages.2.fuse2.affine2.beta.2.bias",
        ),
        (  # TBlocks' second DFBLK (512 channels) is the first modulation in clipsr's order
            "netG",
            "TBlocks.fuse2.affine0.fc_gamma.linear1.weight",
            "generator",
            "clip_fusion.image_fusion.fuse1.affine1.gamma.0.weight",
        ),
        ("netG", "mapping.conv_fuse.weight", "generator", "clip_fusion.to_vit.weight"),
        ("netG", "mapping.CLIP_ViT.ln_pre.bias", "clip", "visual.ln_pre.bias"),
        ("netD", "main.conv_s.weight", "discriminator", "final_block.shortcut.weight"),
        ("netD", "DBlocks.1.beta", "discriminator", "blocks.1.beta"),
        ("netC", "joint_conv.2.weight", "discriminator", "text_head.net.2.weight"),
    ],
)
def test_names(part, key, target, ours):
    assert clipsr_name(part, key) == (target, ours)
    assert reference_name(target, ours) == f"{part}.{key}"


def test_a_missing_or_misshaped_key_is_named(expected):
    layout = reference_layout()
    del layout["netG"]["c2.bias"]
    layout["netC"]["joint_conv.0.weight"] = torch.empty(128, 1000, 4, 4, device="meta")
    with pytest.raises(ReferenceFormatError) as err:
        convert(layout, expected, source="x.pth")
    message = str(err.value)
    assert "\n" not in message
    assert "x.pth: 1 key(s) missing (netG.c2.bias)" in message
    assert "netC.joint_conv.0.weight is [128, 1000, 4, 4]" in message
    assert "needs [128, 1024, 4, 4]" in message


def test_reading_strips_module_prefixes_and_refuses_other_files(tmp_path):
    state = {
        "model": {
            "netG": {"module.c1.weight": torch.ones(2)},
            "netD": {"module.main.gamma": torch.zeros(1)},
            "netC": {"module.joint_conv.0.weight": torch.zeros(1)},
        },
        "epoch": 220,
    }
    torch.save(state, tmp_path / "state_epoch_220.pth")
    parts, info = read_reference_file(tmp_path / "state_epoch_220.pth")
    assert list(parts["netG"]) == ["c1.weight"] and info == {"epoch": 220, "module_prefix": True}

    torch.save({"model": {"netG": {}}}, tmp_path / "partial.pth")
    with pytest.raises(ReferenceFormatError, match="no netD, netC state dict"):
        read_reference_file(tmp_path / "partial.pth")
    torch.save({"model": state["model"], "args": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(ReferenceFormatError, match=r"weights_only=True"):
        read_reference_file(tmp_path / "pickled.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ReferenceFormatError, match="cannot be read"):
        read_reference_file(tmp_path / "text.pth")


def test_reference_config():
    cfg = reference_config(16)
    g, clip = cfg.model.generator, cfg.model.clip
    assert (cfg.model.scale, g.lr_pre_upsample, g.wiring) == (16, 4, "release")
    assert (clip.arch, clip.pretrained, clip.uses_quick_gelu) == ("ViT-B-32", "openai", True)
    assert clip.compat_double_shift and clip.image_resize == "nearest"
    local = reference_config(4, ["model.clip.checkpoint=" + str(KEYS)])
    assert local.model.clip.pretrained == "" and local.model.clip.uses_quick_gelu
