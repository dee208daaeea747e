"""In-process training runs for the benchmarks that compare model variants on the bundled sets.

Plain PyTorch, no Ray (``clipsr.training.train_step``, as ``jobs/quickstart.py``): every variant
sees the same batches (one seeded sampler per run), the runs are trained interleaved, a chunk
of steps each in turn, so that the load of a shared machine falls on all of them alike, and
each run's seconds per step are its own chunks' time. Evaluation is the EMA generator's PSNR
(RGB, ``metrics.crop_border``) next to bicubic, with the true and a mismatched caption.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from clipsr.clip_backbone import RandomClipWeightsWarning
from clipsr.config import CLIPSRConfig
from clipsr.degradations import DegradationConfig, make_lr
from clipsr.evaluation import mismatched_captions
from clipsr.metrics import bicubic_upscale, psnr, tensor_to_uint8
from clipsr.training import EMA, build_models, build_optimizers, train_step


@dataclass(frozen=True)
class Item:
    image: np.ndarray  # HR, H x W x 3 uint8
    caption: str


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


class LRCache:
    """MATLAB-bicubic LR images (the preprocessing's default degradation), computed once."""

    def __init__(self):
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, items: list[Item], index: int, scale: int) -> np.ndarray:
        key = (id(items[index]), scale)
        if key not in self._cache:
            self._cache[key] = make_lr(items[index].image, scale, DegradationConfig(), 0)[0]
        return self._cache[key]


@dataclass
class Run:
    """One model variant under training: ``scales`` is the set a scale is drawn from per step
    (seeded by ``seed`` and the step, so every run with the same scales sees the same ones)."""

    name: str
    cfg: CLIPSRConfig
    scales: list[int]
    seed: int = 0
    ema_decay: float = 0.99
    seconds: float = 0.0
    steps: int = 0
    scale_steps: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomClipWeightsWarning)
            self.models = build_models(self.cfg)
        self.optimizers = build_optimizers(self.models, self.cfg.optim)
        self.ema = EMA(self.models.generator, self.ema_decay)
        self.rng = np.random.default_rng(self.seed)

    def scale_at(self, step: int) -> int:
        draw = np.random.default_rng([self.seed, 7, step]).integers(len(self.scales))
        return self.scales[int(draw)]

    def batch(self, items: list[Item], lrs: LRCache, batch: int, scale: int):
        picks = self.rng.integers(0, len(items), batch)
        flips = self.rng.random(batch) < 0.5
        hrs = [items[i].image[:, ::-1] if f else items[i].image for i, f in zip(picks, flips)]
        lr = [
            lrs(items, i, scale)[:, ::-1] if f else lrs(items, i, scale)
            for i, f in zip(picks, flips)
        ]
        return to_tensor(lr), to_tensor(hrs), [items[i].caption for i in picks]

    def train(self, items: list[Item], lrs: LRCache, steps: int, batch: int) -> None:
        for _ in range(steps):
            scale = self.scale_at(self.steps)
            lr, hr, captions = self.batch(items, lrs, batch, scale)
            start = time.perf_counter()
            text = self.models.clip.encode_text(captions)
            weights = self.cfg.loss.weights
            train_step(self.models, self.optimizers, lr, hr, text, weights)
            self.ema.update(self.models.generator)
            self.seconds += time.perf_counter() - start
            self.steps += 1
            self.scale_steps[scale] = self.scale_steps.get(scale, 0) + 1

    @torch.no_grad()
    def evaluate(self, items: list[Item], lrs: LRCache, scale: int, batch: int = 16) -> dict:
        """Mean PSNR of the EMA generator with the true and a mismatched caption, and bicubic's."""
        gen, clip = self.ema.model.eval(), self.models.clip
        border = self.cfg.metrics.crop_border * scale // self.cfg.model.scale
        wrong = mismatched_captions([it.caption for it in items])
        out = {"psnr": [], "psnr_mismatched": [], "psnr_bicubic": []}
        for start in range(0, len(items), batch):
            idx = range(start, min(start + batch, len(items)))
            lr8 = [lrs(items, i, scale) for i in idx]
            lr = to_tensor(lr8)
            for key, caps in (
                ("psnr", [items[i].caption for i in idx]),
                ("psnr_mismatched", [wrong[i] for i in idx]),
            ):
                sr = gen(lr, clip.encode_text(caps), clip).clamp(-1, 1)
                out[key] += [
                    psnr(tensor_to_uint8(s), items[i].image, crop_border=border)
                    for s, i in zip(sr, idx)
                ]
            out["psnr_bicubic"] += [
                psnr(bicubic_upscale(x, scale), items[i].image, crop_border=border)
                for x, i in zip(lr8, idx)
            ]
        return {k: float(np.mean(v)) for k, v in out.items()}


def train_interleaved(
    runs: list[Run],
    items: list[Item],
    lrs: LRCache,
    steps: dict[str, int],
    batch: int,
    chunk: int = 25,
    log=print,
) -> None:
    """Train each run to its ``steps[name]``, ``chunk`` steps at a time, in turn."""
    while any(r.steps < steps[r.name] for r in runs):
        for run in runs:
            todo = min(chunk, steps[run.name] - run.steps)
            if todo > 0:
                run.train(items, lrs, todo, batch)
        done = ", ".join(f"{r.name} {r.steps}/{steps[r.name]}" for r in runs)
        log(f"  steps: {done}")
