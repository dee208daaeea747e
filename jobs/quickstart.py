"""``python -m jobs.quickstart``: train the tiny model on bundled photographs and upscale.

A single-process, plain-PyTorch run on the CPU (no Ray, no services): random 128 px crops of
scikit-image's photographs with their captions, MATLAB-bicubic LR, the full CLIP-SR GAN step;
then PSNR/SSIM on held-out photographs against bicubic, a checkpoint, and prompt-editing grids.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsr.clip_backbone import RandomClipWeightsWarning
from clipsr.config import load_clipsr_config
from clipsr.degradations import DegradationConfig, make_lr
from clipsr.inference import SuperResolver, prompt_grid, save_generator_checkpoint
from clipsr.metrics import bicubic_upscale, psnr, ssim, tensor_to_uint8
from clipsr.training import build_models, build_optimizers, train_step
from pipelines.bundled_photos import bundled_photos

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("clipsr.quickstart")


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _lr(hr: np.ndarray, scale: int) -> np.ndarray:
    return make_lr(hr, scale, DegradationConfig(), seed=0)[0]


def _held_out_crops(size: int) -> list[tuple[np.ndarray, str]]:
    crops = []
    for photo in bundled_photos("test"):
        h, w, _ = photo.image.shape
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                crops.append((photo.image[y : y + size, x : x + size], photo.caption))
    return crops


def evaluate(resolver: SuperResolver, scale: int, size: int, border: int) -> dict[str, float]:
    sr_psnr, bic_psnr, sr_ssim, bic_ssim = [], [], [], []
    for hr, caption in _held_out_crops(size):
        lr = _lr(hr, scale)
        sr = tensor_to_uint8(resolver.upscale_tensor(_to_tensor([lr]), [caption])[0])
        bic = bicubic_upscale(lr, scale)
        sr_psnr.append(psnr(sr, hr, crop_border=border))
        bic_psnr.append(psnr(bic, hr, crop_border=border))
        sr_ssim.append(ssim(sr, hr, crop_border=border))
        bic_ssim.append(ssim(bic, hr, crop_border=border))
    return {
        "crops": len(sr_psnr),
        "psnr_sr": float(np.mean(sr_psnr)),
        "psnr_bicubic": float(np.mean(bic_psnr)),
        "ssim_sr": float(np.mean(sr_ssim)),
        "ssim_bicubic": float(np.mean(bic_ssim)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.quickstart", description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny-x4.yaml"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "quickstart"))
    parser.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_clipsr_config(args.config, args.overrides)
    scale, size = cfg.model.scale, cfg.model.hr_size
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)  # logged once by the backbone
        models = build_models(cfg)
    optimizers = build_optimizers(models, cfg.optim)
    photos = bundled_photos("train")
    log.info(
        "training %s on %d bundled photographs for %d steps", args.config, len(photos), args.steps
    )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        hrs, captions = [], []
        for i in rng.integers(0, len(photos), args.batch):
            h, w, _ = photos[i].image.shape
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            hrs.append(photos[i].image[y : y + size, x : x + size])
            captions.append(photos[i].caption)
        text = models.clip.encode_text(captions)
        lr = _to_tensor([_lr(hr, scale) for hr in hrs])
        losses = train_step(models, optimizers, lr, _to_tensor(hrs), text, cfg.loss.weights)
        if step % 100 == 0 or step == args.steps:
            rate = step / (time.perf_counter() - start)
            log.info(
                "step %d/%d  %.1f steps/s  L1 %.4f  D %.3f",
                step,
                args.steps,
                rate,
                losses["g_reconstruction"],
                losses["d_loss"],
            )
    train_s = time.perf_counter() - start

    out = Path(args.out)
    checkpoint = save_generator_checkpoint(out / "checkpoint", cfg, models.generator, models.clip)
    resolver = SuperResolver(cfg, models.generator, models.clip)
    metrics = evaluate(resolver, scale, size, cfg.metrics.crop_border)
    cat = bundled_photos("test")[-1]
    lr_image = Image.fromarray(_lr(cat.image[:256, 96:352], scale))
    prompts = [cat.caption, "a black cat with yellow eyes", "a red sports car"]
    results, scores = resolver.prompt_edit(lr_image, prompts)
    grid = out / "prompt_editing.png"
    prompt_grid(lr_image, results, prompts, scores).save(grid)
    summary = {
        "train_seconds": round(train_s, 1),
        "steps": args.steps,
        **metrics,
        "checkpoint": str(checkpoint),
        "prompt_grid": str(grid),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{scale}x on {metrics['crops']} held-out crops of real photographs "
        f"(after {args.steps} steps, {train_s:.0f} s):"
    )
    print(f"  PSNR  SR {metrics['psnr_sr']:.2f} dB   bicubic {metrics['psnr_bicubic']:.2f} dB")
    print(f"  SSIM  SR {metrics['ssim_sr']:.4f}     bicubic {metrics['ssim_bicubic']:.4f}")
    print(f"  checkpoint: {checkpoint}\n  prompt editing grid: {grid}")
    print(
        f"  try: .venv/bin/clipsr upscale --checkpoint {checkpoint} --scale {scale} "
        "--prompt 'a cat' --prompt 'a dog' LR.png --out sr/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
