"""The benchmark's reference-style step computes the same losses and updates as ours.

With CLIP's input set up as the reference does it (nearest resize, the double shift), the same
initial weights, the same VGG16 and plain SGD (so that updates are proportional to gradients),
one reference-style step and one of ours must agree to float rounding: the benchmark compares
equal work done two ways, not two different objectives.
"""

import warnings

import torch

from benchmarks.reference_step import ReferencePerceptual, reference_train_step
from clipsr.clip_backbone import ClipBackbone
from clipsr.training import CLIPSROptimizers, build_models, train_step
from clipsr.vgg import vgg16_features
from tests.conftest import tiny_config


def _sgd(models) -> CLIPSROptimizers:
    return CLIPSROptimizers(
        torch.optim.SGD(models.generator.parameters(), lr=0.1),
        torch.optim.SGD(models.discriminator.parameters(), lr=0.1),
    )


def test_reference_style_step_equals_ours(tmp_path):
    vgg_file = tmp_path / "vgg.pth"
    cfg = tiny_config(
        4,
        "loss.perceptual=vgg16",
        f"loss.vgg16_weights={vgg_file}",
        "model.clip.image_resize=nearest",
        "model.clip.compat_double_shift=true",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(
            {f"features.{k}": v for k, v in vgg16_features(None).state_dict().items()}, vgg_file
        )
        clip = ClipBackbone(cfg.model.clip)  # CLIP's input as the reference prepares it
        ours, ref = build_models(cfg, clip=clip), build_models(cfg, clip=clip)
    # move the zero-initialised D scalars so that every D path carries gradient
    for models in (ours, ref):
        with torch.no_grad():
            for block in [*models.discriminator.blocks, models.discriminator.final_block]:
                block.gamma.fill_(0.5)
                if block.beta is not None:
                    block.beta.fill_(0.3)
    gen = torch.Generator().manual_seed(3)
    # batch 2: the mismatched captions are then the same pairs in both (we roll the batch by +1,
    # the reference by -1; the cost is the same)
    hr = torch.rand(2, 3, 128, 128, generator=gen) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
    captions = ["a red square", "a blue circle"]

    losses = train_step(ours, _sgd(ours), lr, hr, clip.encode_text(captions), cfg.loss.weights)
    err_d, err_g = reference_train_step(
        ref, _sgd(ref), lr, hr, captions, ReferencePerceptual(str(vgg_file), released=False)
    )

    torch.testing.assert_close(err_d, losses["d_loss"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(err_g, losses["g_loss"], rtol=1e-4, atol=1e-6)
    assert losses["d_gradient_penalty"] > 0 and losses["g_perceptual"] > 0
    for name in ("generator", "discriminator"):
        a = dict(getattr(ours, name).named_parameters())
        for key, p in getattr(ref, name).named_parameters():
            torch.testing.assert_close(a[key], p, rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
