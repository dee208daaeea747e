"""CPU cost of one full CLIP-SR training step and of inference, with parameter counts.

For each preset (tiny, base) and scale (4x, 16x): seconds per full training step (D step with
matching-aware hinge + MA-GP, G step with L1 + VGG16 perceptual + adversarial + CLIP cosine,
batch 4), inference latency (batch 1), and parameter counts next to the reference's.

Baselines:
- measured in the same run: a reference-style step for ``base`` (the released code rebuilds
  and reloads VGG16 on every call, with trainable VGG parameters, so each step also builds a
  graph through the HR branch and computes VGG gradients);
- stated in the issue for this machine kind: the reference implementation's full step (batch 4,
  4x, random ViT-B/32, fp32) takes ~24 s as released and ~22 s with VGG built once.

    python benchmarks/model_step.py                      # tiny + base, 4x and 16x
    python benchmarks/model_step.py --presets tiny --repeat 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from clipsr.clip_backbone import RandomClipWeightsWarning
from clipsr.config import load_clipsr_config
from clipsr.training import (
    build_models,
    build_optimizers,
    count_parameters,
    train_step,
)
from clipsr.vgg import vgg16_features

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REFERENCE_STEP_S = 22.0  # the issue's figure: reference step with VGG built once, 2-core CPU
REFERENCE_COUNTS = {  # clipsr-spec.md section 1.4 (the reference at 4x, ViT-B/32)
    "G trainable, live in paper wiring (no_clip.py)": 55_238_564,
    "G trainable, live in the release": 38_215_556,
    "G as train.py prints it (incl. frozen CLIP-ViT)": 147_509_496,
    "D + text head": 30_806_021,
    "CLIP ViT-B/32 (frozen)": 151_277_313,
}


def _batch(cfg, clip, batch: int):
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(batch, 3, cfg.model.hr_size, cfg.model.hr_size, generator=gen) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, size=cfg.model.lr_size, mode="area")
    text = clip.encode_text([f"caption number {i}" for i in range(batch)])
    return lr, hr, text


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (allocator, first-call costs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class ReferenceStyleVGG(torch.nn.Module):
    """The released perceptual loss: VGG16 rebuilt and reloaded per call, parameters trainable."""

    def __init__(self, weights_file: str):
        super().__init__()
        self.weights_file = weights_file

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        vgg = vgg16_features(self.weights_file)[:31]
        return torch.nn.functional.mse_loss(vgg(sr), vgg(hr))


def bench(preset: str, scale: int, batch: int, repeat: int, vgg_file: str, reference: bool):
    path = CONFIGS / f"{preset}-x{scale}.yaml"
    shipped = load_clipsr_config(path, [f"loss.vgg16_weights={vgg_file}"])
    cfg = load_clipsr_config(path, ["loss.perceptual=vgg16", f"loss.vgg16_weights={vgg_file}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        models = build_models(cfg)
    opts = build_optimizers(models, cfg.optim)
    lr, hr, text = _batch(cfg, models.clip, batch)
    step = _time(lambda: train_step(models, opts, lr, hr, text, cfg.loss.weights), repeat)
    step_shipped = step
    if shipped.loss.perceptual != cfg.loss.perceptual:  # e.g. tiny: no VGG in the preset
        perceptual, models.perceptual = models.perceptual, None
        step_shipped = _time(
            lambda: train_step(models, opts, lr, hr, text, cfg.loss.weights), repeat
        )
        models.perceptual = perceptual
    ref_step = None
    if reference:
        models.perceptual = ReferenceStyleVGG(vgg_file)
        ref_step = _time(lambda: train_step(models, opts, lr, hr, text, cfg.loss.weights), repeat)
    gen = models.generator.eval()
    with torch.no_grad():
        infer = _time(lambda: gen(lr[:1], text[:1], models.clip), repeat)
    counts = {
        "G trainable": count_parameters(gen)[1],
        "D + text head": count_parameters(models.discriminator)[1],
        "CLIP (frozen)": count_parameters(models.clip)[0],
        "CLIP-ViT trunk inside G's fusion path (frozen, shared)": count_parameters(
            models.clip.visual.transformer
        )[0],
    }
    return step, step_shipped, ref_step, infer, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--scales", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median) after 1 warm-up")
    parser.add_argument("--no-reference", action="store_true", help="skip the same-run baseline")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, fp32, CPU")

    with tempfile.TemporaryDirectory() as tmp:
        vgg_file = str(Path(tmp) / "vgg16_random.pth")
        torch.save(
            {f"features.{k}": v for k, v in vgg16_features(None).state_dict().items()}, vgg_file
        )
        rows, base_counts = [], None
        for preset in args.presets:
            for scale in args.scales:
                reference = preset == "base" and not args.no_reference
                step, shipped, ref, infer, counts = bench(
                    preset, scale, args.batch, args.repeat, vgg_file, reference
                )
                rows.append((preset, scale, step, shipped, ref, infer))
                if preset == "base" and scale == 4:
                    base_counts = counts
                print(
                    f"  {preset}-x{scale}: step {step:.3f} s, inference {infer * 1e3:.1f} ms",
                    flush=True,
                )

    print(
        "\n| preset | scale | train step, all losses (s) | step, preset's losses (s) | "
        "ref-style step, same run (s) | ratio | "
        f"vs issue's {REFERENCE_STEP_S:.0f} s | inference batch 1 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset, scale, step, shipped, ref, infer in rows:
        ref_s = f"{ref:.2f}" if ref else "-"
        ratio = f"{step / ref:.2f}x" if ref else "-"
        vs_issue = f"{step / REFERENCE_STEP_S:.2f}x" if preset == "base" else "-"
        print(
            f"| {preset} | {scale}x | {step:.3f} | {shipped:.3f} | {ref_s} | {ratio} | "
            f"{vs_issue} | {infer * 1e3:.1f} |"
        )
    if base_counts:
        print("\nParameter counts, base 4x (ours) and the reference (clipsr-spec.md 1.4):")
        for name, value in base_counts.items():
            print(f"  ours  {name:<55} {value:>13,}")
        for name, value in REFERENCE_COUNTS.items():
            print(f"  ref   {name:<55} {value:>13,}")


if __name__ == "__main__":
    main()
