"""One model for 4x, 8x and 16x vs three single-scale models, at equal total training steps.

On the bundled sets (128 px tiles of the scikit-image photographs and the generated shapes,
mixed; their held-out parts evaluated separately): ``tiny-x4``, ``tiny-x8`` and ``tiny-x16``
trained ``--steps`` steps each, and ``tiny-multiscale`` (tiny-x4's body with a head per scale)
trained 3 x ``--steps`` steps with a scale drawn per batch, so both sides take the same number
of training steps in total. In-process (no Ray), interleaved (the multi-scale model trains 3
steps for each single-scale model's one, so both sides share the machine's load alike; see
``benchmarks/sr_runs.py``), generator lr ``--lr`` for all. Prints per set and scale the EMA
generator's PSNR (true caption) for the single-scale model and the multi-scale one, bicubic's,
and the total training time of each side.

    python benchmarks/multiscale_vs_single.py                # 100 steps per scale
    python benchmarks/multiscale_vs_single.py --steps 300
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)] if str(ROOT) not in sys.path else []

import torch  # noqa: E402

from benchmarks.sr_runs import Item, LRCache, Run, train_interleaved  # noqa: E402
from clipsr.config import load_clipsr_config  # noqa: E402
from pipelines.bundled_photos import bundled_photos  # noqa: E402
from pipelines.generated_shapes import generated_shapes  # noqa: E402

CONFIGS = ROOT / "configs"
SCALES = (4, 8, 16)


def photo_tiles(split: str, size: int = 128, stride: int = 96) -> list[Item]:
    tiles = []
    for photo in bundled_photos(split):
        h, w, _ = photo.image.shape
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                tiles.append(Item(photo.image[y : y + size, x : x + size], photo.caption))
    return tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per scale")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="generator learning rate")
    parser.add_argument("--shapes", type=int, default=256, help="training shapes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = photo_tiles("train") + [Item(g.image, g.caption) for g in generated_shapes(args.shapes)]
    tests = {
        "photos": photo_tiles("test", stride=128),
        "shapes": [Item(g.image, g.caption) for g in generated_shapes(32, seed=1)],
    }
    lrs, lr = LRCache(), f"optim.generator_lr={args.lr}"
    runs = [
        Run(f"x{s}", load_clipsr_config(CONFIGS / f"tiny-x{s}.yaml", [lr]), [s]) for s in SCALES
    ]
    multi = Run("multi", load_clipsr_config(CONFIGS / "tiny-multiscale.yaml", [lr]), list(SCALES))
    steps = {r.name: args.steps for r in runs} | {"multi": len(SCALES) * args.steps}
    print(
        f"train: {len(train)} tiles/shapes; load at start {os.getloadavg()[0]:.2f} (1 min), "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    train_interleaved([*runs, multi], train, lrs, steps, args.batch)
    print(
        f"load at end: {os.getloadavg()[0]:.2f}; multi-scale steps per scale: "
        f"{dict(sorted(multi.scale_steps.items()))}"
    )
    print("\nPSNR (dB, RGB, border = scale px) of the EMA generators, true caption:")
    print(f"{'set':<7} {'scale':>5} {'single':>7} {'multi':>7} {'bicubic':>8} {'samples':>8}")
    for name, items in tests.items():
        for single in runs:
            scale = single.scales[0]
            one, both = single.evaluate(items, lrs, scale), multi.evaluate(items, lrs, scale)
            print(
                f"{name:<7} {scale:>4}x {one['psnr']:>7.2f} {both['psnr']:>7.2f} "
                f"{one['psnr_bicubic']:>8.2f} {len(items):>8}"
            )
    single_s, single_steps = sum(r.seconds for r in runs), sum(r.steps for r in runs)
    print(
        f"\ntraining time: 3 single-scale models {single_s:.0f} s ({single_steps} steps, "
        f"{single_s / single_steps:.3f} s/step), one multi-scale model {multi.seconds:.0f} s "
        f"({multi.steps} steps, {multi.seconds / multi.steps:.3f} s/step; "
        f"{multi.seconds / single_s:.2f}x the single-scale total); parameters: single "
        f"{sum(sum(p.numel() for p in r.models.generator.parameters()) for r in runs):,} "
        f"(3 generators), multi {sum(p.numel() for p in multi.models.generator.parameters()):,}"
    )


if __name__ == "__main__":
    main()
