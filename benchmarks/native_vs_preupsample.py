"""Native 16x heads vs the reference's nearest pre-upsampling, on the demo's 16x shapes set.

The demo's 16x model (``configs/demo/shapes-x16.yaml``: the tiny preset, generator lr 1e-3,
EMA 0.99) trained in-process (no Ray) at the same number of steps and batches with
``model.generator.lr_pre_upsample`` = 1 (native: the 8 px LR goes into the encoder, the head
upsamples x16; the shipped default), 2 (the tiny-x16 preset before native became the default)
and 4 (the reference's way: the LR is nearest-upsampled to the 4x model's 32 px, head x4;
``tiny-x16-reference``). Prints per variant: seconds per training step (interleaved, so the
machine's load falls on all alike), inference seconds per image, and on the held-out shapes
PSNR with the true caption, with a mismatched one, and bicubic's.

    python benchmarks/native_vs_preupsample.py                 # 300 steps each, a few minutes
    python benchmarks/native_vs_preupsample.py --steps 1000    # the demo's length
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)] if str(ROOT) not in sys.path else []

import torch  # noqa: E402

from benchmarks.sr_runs import Item, LRCache, Run, to_tensor, train_interleaved  # noqa: E402
from jobs.train_config import load_train_config  # noqa: E402
from pipelines.generated_shapes import generated_shapes  # noqa: E402

DEMO = ROOT / "configs" / "demo" / "shapes-x16.yaml"


def _inference_seconds(run: Run, items: list[Item], lrs: LRCache, repeat: int = 5) -> float:
    gen, clip = run.ema.model.eval(), run.models.clip
    lr = to_tensor([lrs(items, 0, 16)])
    text = clip.encode_text([items[0].caption])
    times = []
    with torch.no_grad():
        for _ in range(repeat + 1):
            start = time.perf_counter()
            gen(lr, text, clip)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeat // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=512, help="training images (demo: 512)")
    parser.add_argument("--test", type=int, default=64, help="held-out images (demo: 64)")
    parser.add_argument("--pre", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = [Item(g.image, g.caption) for g in generated_shapes(args.train, seed=0)]
    test = [Item(g.image, g.caption) for g in generated_shapes(args.test, seed=1)]
    lrs = LRCache()
    runs = []
    for pre in args.pre:
        cfg = load_train_config(
            DEMO, ["data.shards=unused", f"model.generator.lr_pre_upsample={pre}"]
        )
        runs.append(
            Run(f"pre-upsample x{pre}", cfg, [16], seed=cfg.seed, ema_decay=cfg.run.ema_decay)
        )
    print(
        f"load at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    train_interleaved(runs, train, lrs, {r.name: args.steps for r in runs}, args.batch)
    print(f"load at end: {os.getloadavg()[0]:.2f}")
    print(
        f"\n16x on {len(test)} held-out shapes after {args.steps} steps of batch {args.batch} "
        "(PSNR dB, RGB, 16 px border):"
    )
    print(
        f"{'variant':<20} {'s/step':>7} {'vs x1':>6} {'infer s':>8} {'PSNR':>7} "
        f"{'mismatched':>10} {'bicubic':>8}"
    )
    base = runs[0].seconds / runs[0].steps
    for run in runs:
        m = run.evaluate(test, lrs, 16)
        per_step = run.seconds / run.steps
        infer = _inference_seconds(run, test, lrs)
        print(
            f"{run.name:<20} {per_step:>7.3f} {per_step / base:>6.2f} {infer:>8.4f} "
            f"{m['psnr']:>7.2f} {m['psnr_mismatched']:>10.2f} {m['psnr_bicubic']:>8.2f}"
        )


if __name__ == "__main__":
    main()
