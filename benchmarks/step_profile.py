"""Where the seconds of a training step go: exclusive time per part, by wrapping the callables
that make each part (G's forward, CLIP's image passes, D+C, MA-GP, the perceptual net, backward,
the optimisers). Works for our step and the reference-style one alike, without touching either.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks import reference_step
from clipsr.training import CLIPSRModels, CLIPSROptimizers


class StepProfile:
    """Exclusive seconds per label (time inside nested labelled calls goes to the inner label)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.totals: Counter[str] = Counter()
        self._stack: list[list[Any]] = []  # [label, start, time spent in nested labels]

    def wrap(self, label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([label, self.clock(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, start, nested = self._stack.pop()
                elapsed = self.clock() - start
                self.totals[name] += elapsed - nested
                if self._stack:
                    self._stack[-1][2] += elapsed

        return timed

    def measure(self, step: Callable[[], Any], rounds: int) -> dict[str, float]:
        """Mean seconds per step for each part; ``other`` is what no label covers."""
        self.totals.clear()
        whole = self.wrap("other", step)
        for _ in range(rounds):
            whole()
        return {k: v / rounds for k, v in self.totals.items()}


@contextlib.contextmanager
def _patched(targets: list[tuple[Any, str, str]], profile: StepProfile) -> Iterator[None]:
    saved = []
    try:
        for obj, attr, label in targets:
            if obj is None or not hasattr(obj, attr):
                continue
            in_dict = attr in vars(obj)
            saved.append((obj, attr, in_dict, vars(obj).get(attr)))
            setattr(obj, attr, profile.wrap(label, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, in_dict, original in reversed(saved):
            if in_dict:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


def instrumented(models: CLIPSRModels, opts: CLIPSROptimizers, profile: StepProfile):
    """A context in which the parts of a step on ``models`` are timed into ``profile``."""
    clip, disc = models.clip, models.discriminator
    targets = [
        (models.generator, "forward", "G forward"),
        (clip, "image_features", "CLIP image passes"),
        (clip, "image_taps", "CLIP image passes"),
        (reference_step, "reference_clip_image", "CLIP image passes"),
        (clip.model, "encode_text", "CLIP text"),
        (disc, "forward", "D+C forward"),
        (disc.text_head, "forward", "D+C forward"),
        (reference_step, "_d_features", "D+C forward"),
        (torch.autograd, "grad", "MA-GP gradient"),
        (torch.Tensor, "backward", "backward"),
        (opts.generator, "step", "optimizers"),
        (opts.discriminator, "step", "optimizers"),
    ]
    if models.perceptual is not None:
        targets.append((models.perceptual, "forward", "VGG forward"))
    return _patched(targets, profile)


def print_profile(title: str, parts: dict[str, float]) -> None:
    total = sum(parts.values())
    print(f"\n{title}: {total:.3f} s per step")
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {seconds:8.3f} s  {seconds / total:6.1%}")
