"""Validation during training: the EMA generator's PSNR/SSIM next to bicubic, and a sample grid."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipsr.metrics import bicubic_upscale, psnr, ssim, tensor_to_uint8


@torch.no_grad()
def validate(
    generator: torch.nn.Module,
    clip,
    batches,
    device: torch.device,
    crop_border: int,
    test_y_channel: bool,
    grid_rows: int = 4,
) -> tuple[dict[str, float], Image.Image | None]:
    """Metrics over ``batches`` (from ``iter_eval_batches``) and a grid (LR, bicubic, SR, HR)."""
    scores = {"psnr": [], "ssim": [], "psnr_bicubic": [], "ssim_bicubic": []}
    rows = []
    for batch in batches:
        scale = batch["scale"]
        text = clip.encode_text(batch["captions"])
        sr = generator(batch["lr"].to(device), text, clip).clamp(-1, 1).float().cpu()
        for i in range(sr.shape[0]):
            hr = tensor_to_uint8(batch["hr"][i])
            lr = tensor_to_uint8(batch["lr"][i])
            out = tensor_to_uint8(sr[i])
            bic = bicubic_upscale(lr, scale)
            kw = {"crop_border": crop_border, "test_y_channel": test_y_channel}
            scores["psnr"].append(psnr(out, hr, **kw))
            scores["ssim"].append(ssim(out, hr, **kw))
            scores["psnr_bicubic"].append(psnr(bic, hr, **kw))
            scores["ssim_bicubic"].append(ssim(bic, hr, **kw))
            if len(rows) < grid_rows:
                rows.append((lr, bic, out, hr, batch["captions"][i]))
    metrics = {f"val/{k}": float(np.mean(v)) for k, v in scores.items() if v}  # grouped
    return metrics, sample_grid(rows) if rows else None


def sample_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]):
    """One row per sample: LR (nearest), bicubic, SR, HR, with the caption underneath."""
    h, w, _ = rows[0][3].shape
    label = 18
    grid = Image.new("RGB", (4 * w, len(rows) * (h + label)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (lr, bic, sr, hr, caption) in enumerate(rows):
        y = r * (h + label)
        images = [Image.fromarray(lr).resize((w, h), Image.Resampling.NEAREST)]
        images += [Image.fromarray(a) for a in (bic, sr, hr)]
        for c, img in enumerate(images):
            grid.paste(img, (c * w, y))
        text = "LR | bicubic | SR | HR: " + caption
        draw.text((2, y + h + 3), text[: 4 * w // 6], fill="black")
    return grid
