import pytest
import torch

from clipsr.training import build_generator
from tests.conftest import tiny_config


@pytest.mark.parametrize("wiring", ["paper", "release"])
@pytest.mark.parametrize("scale", [4, 8, 16])
def test_output_shape_for_every_scale_and_wiring(tiny_clip, scale, wiring):
    cfg = tiny_config(scale, f"model.generator.wiring={wiring}")
    gen = build_generator(cfg, tiny_clip)
    lr_size = cfg.model.lr_size
    text = tiny_clip.encode_text(["a cat", "a dog"])
    out = gen(torch.rand(2, 3, lr_size, lr_size) * 2 - 1, text, tiny_clip)
    assert out.shape == (2, 3, cfg.model.hr_size, cfg.model.hr_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("scale", "pre", "r4"),
    [(4, 1, 8), (8, 1, 4), (16, 1, 2), (8, 2, 8), (16, 4, 8)],
    ids=["native-4x", "native-8x", "native-16x", "reference-8x", "reference-16x"],
)
def test_base_sizes_native_and_with_the_reference_pre_upsampling(tiny_clip, scale, pre, r4):
    """LR 64, 32, 16 -> 256 (narrow channels to stay fast): native heads upsample the whole
    factor from the LR's own size; with the reference's pre-upsampling to 64 px the encoder
    runs at 64 px (its 1/8 map R4 is 8x8) and the head upsamples x4."""
    cfg = tiny_config(scale, "model.hr_size=256", f"model.generator.lr_pre_upsample={pre}")
    gen = build_generator(cfg, tiny_clip)
    seen = []
    hook = gen.image_encoder.register_forward_hook(lambda m, a, out: seen.append(out[3]))
    lr = torch.zeros(1, 3, 256 // scale, 256 // scale)
    try:
        out = gen(lr, torch.zeros(1, 64), tiny_clip)
    finally:
        hook.remove()
    assert out.shape == (1, 3, 256, 256)
    assert seen[0].shape[-2:] == (r4, r4)
    assert (
        sum(isinstance(m, torch.nn.PixelShuffle) for m in gen.head.modules())
        == {
            4: 2,
            8: 3,
            16: 4,
        }[scale // pre]
    )


def test_any_lr_size_multiple_of_8_and_non_square(tiny_clip):
    gen = build_generator(tiny_config(4), tiny_clip)
    text = torch.randn(1, tiny_clip.embed_dim)
    assert gen(torch.zeros(1, 3, 24, 40), text, tiny_clip).shape == (1, 3, 96, 160)
    assert gen(torch.zeros(1, 3, 72, 72), text, tiny_clip).shape == (1, 3, 288, 288)
    with pytest.raises(ValueError, match="LR size 30x32 does not fit this 4x model"):
        gen(torch.zeros(1, 3, 30, 32), text, tiny_clip)


def test_wirings_share_state_dict_keys(tiny_clip):
    paper = build_generator(tiny_config(4), tiny_clip)
    release = build_generator(tiny_config(4, "model.generator.wiring=release"), tiny_clip)
    assert paper.state_dict().keys() == release.state_dict().keys()
    release.load_state_dict(paper.state_dict())  # the same weights load into either wiring


def test_release_wiring_bypasses_the_clip_branch(tiny_clip):
    gen = build_generator(tiny_config(4, "model.generator.wiring=release"), tiny_clip)
    lr = torch.rand(2, 3, 32, 32)
    text = tiny_clip.encode_text(["a", "b"])
    out = gen(lr, text, None)  # no CLIP needed
    out.square().mean().backward()
    assert all(p.grad is None for p in gen.clip_fusion.parameters())
    assert gen.image_encoder.conv1.weight.grad is not None


def test_paper_wiring_uses_the_clip_branch_and_the_caption(tiny_clip):
    gen = build_generator(tiny_config(4, "model.generator.lr_residual=none"), tiny_clip)
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    a = gen(lr, tiny_clip.encode_text(["a small red bird"]), tiny_clip)
    b = gen(lr, tiny_clip.encode_text(["a large blue truck"]), tiny_clip)
    assert (a - b).abs().max() > 1e-6
    with pytest.raises(ValueError, match="needs the CLIP backbone"):
        gen(lr, torch.zeros(1, 64), None)


def test_two_captions_give_different_outputs_in_release_wiring_once_trained(tiny_clip):
    """Release: text acts only through the affines, identity at init -> differs once moved."""
    gen = build_generator(tiny_config(4, "model.generator.wiring=release"), tiny_clip)
    lr = torch.rand(1, 3, 32, 32) * 2 - 1
    texts = tiny_clip.encode_text(["a small red bird", "a large blue truck"])
    assert torch.equal(gen(lr, texts[:1]), gen(lr, texts[1:]))  # identity init
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if "affine" in name or "to_rgb" in name:
                p.add_(0.01 * torch.randn_like(p))
    assert (gen(lr, texts[:1]) - gen(lr, texts[1:])).abs().max() > 1e-6


def test_lr_residual_starts_at_the_interpolated_lr(tiny_clip):
    gen = build_generator(tiny_config(4), tiny_clip)  # tiny presets: lr_residual=bicubic
    lr = torch.rand(2, 3, 32, 32) * 2 - 1
    out = gen(lr, torch.randn(2, tiny_clip.embed_dim), tiny_clip)
    expected = torch.nn.functional.interpolate(lr, size=(128, 128), mode="bicubic")
    assert torch.allclose(out, expected, atol=1e-6)
    plain = build_generator(tiny_config(4, "model.generator.lr_residual=none"), tiny_clip)
    assert not torch.allclose(plain(lr, torch.randn(2, 64), tiny_clip), expected, atol=1e-2)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_clip_output_resize_mode(tiny_clip, mode):
    """F_U is resized to F_I's size as configured (the reference's no_clip.py: nearest)."""
    cfg = tiny_config(4, f"model.generator.clip_output_resize={mode}")
    gen = build_generator(cfg, tiny_clip)
    f_i = torch.randn(2, cfg.model.generator.encoder_channels[3], 4, 4)
    text = torch.randn(2, tiny_clip.embed_dim)
    seen = []
    hook = gen.clip_fusion.from_vit.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        f_u = gen.clip_fusion(f_i, text, tiny_clip)
    finally:
        hook.remove()
    assert seen[0].shape[-2:] == tiny_clip.grid_size != f_u.shape[-2:]
    extra = {} if mode == "nearest" else {"align_corners": False}
    torch.testing.assert_close(
        f_u, torch.nn.functional.interpolate(seen[0], (4, 4), mode=mode, **extra)
    )
    other = "nearest" if mode == "bilinear" else "bilinear"
    assert not torch.allclose(f_u, torch.nn.functional.interpolate(seen[0], (4, 4), mode=other))


def test_release_wiring_freezes_the_unused_branch_and_counts_the_reference_live_parameters():
    """At the base widths: 55,238,564 trainable in paper wiring (the reference's live count with
    the CLIP branch wired) and 38,215,556 in release (what affects the reference's output)."""
    from clipsr.config import CLIPSRConfig
    from clipsr.generator import CLIPSRGenerator
    from clipsr.training import count_parameters

    counts = {}
    for wiring in ("paper", "release"):
        cfg = CLIPSRConfig()
        cfg.model.generator.wiring = wiring
        with torch.device("meta"):  # ViT-B/32 dims: text 512, width 768, grid 7x7
            gen = CLIPSRGenerator(cfg.model, 512, 768, (7, 7))
        counts[wiring] = count_parameters(gen)[1]
        if wiring == "release":
            assert not any(p.requires_grad for p in gen.clip_fusion.parameters())
    assert counts == {"paper": 55_238_564, "release": 38_215_556}
