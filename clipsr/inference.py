"""Inference: :class:`SuperResolver` loads a checkpoint directory and upscales images by caption.

>>> sr = SuperResolver.from_checkpoint("runs/x/checkpoint")
>>> out = sr.upscale(Image.open("lr.png"), "a small red bird on a branch")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipsr.checkpoint import (
    CheckpointError,
    load_config_from_checkpoint,
    load_part,
    read_manifest,
    save_checkpoint,
)
from clipsr.clip_backbone import ClipBackbone
from clipsr.config import CLIPSRConfig
from clipsr.generator import CLIPSRGenerator
from clipsr.metrics import clip_score, tensor_to_uint8


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a (3, H, W) float tensor in [-1, 1] (RGB)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(tensor_to_uint8(x.detach().cpu()))


def save_generator_checkpoint(
    directory: str | Path,
    cfg: CLIPSRConfig,
    generator: torch.nn.Module,
    clip: ClipBackbone,
    meta: dict | None = None,
    extra_parts: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Save G (unwrapped from DDP) with the config; CLIP's weights too when they are not
    reproducible from the config (a random init, or weights that came from a checkpoint)."""
    generator = getattr(generator, "module", generator)
    parts = {"generator": generator.state_dict()}
    if clip.weights_source in ("random", "checkpoint"):
        parts["clip"] = clip.weights_state_dict()
    parts.update(extra_parts or {})
    info = {"clip_weights": clip.weights_source, **(meta or {})}
    return save_checkpoint(directory, cfg, parts, info)


class ScaleView(torch.nn.Module):
    """A generator called at one of its scales: ``view(lr, text, clip)`` is
    ``base(lr, text, clip, scale=view.scale)`` (what :meth:`SuperResolver.for_scale` gives the
    code that calls ``resolver.generator`` without a scale, e.g. the evaluation)."""

    def __init__(self, base: CLIPSRGenerator, scale: int):
        super().__init__()
        self.base = base
        self.scale = base.check_scale(scale)
        self.scales = base.scales

    def check_input(self, lr: torch.Tensor) -> None:
        self.base.check_input(lr)

    def forward(self, lr, text, clip=None, scale: int | None = None) -> torch.Tensor:
        return self.base(lr, text, clip, scale=self.scale if scale is None else scale)


class SuperResolver:
    """A generator with its frozen CLIP, ready to upscale images guided by captions.

    ``scale`` is the scale it upscales by (the model's default); a model serving several
    (``scales``) gives a resolver for another with :meth:`for_scale`, and the upscale methods
    take ``scale=`` too.
    """

    def __init__(
        self,
        cfg: CLIPSRConfig,
        generator: CLIPSRGenerator,
        clip: ClipBackbone,
        device: str | torch.device = "cpu",
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.clip = clip.to(self.device).eval()

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, device: str | torch.device | None = None
    ) -> SuperResolver:
        directory = Path(directory)
        manifest = read_manifest(directory)
        cfg = load_config_from_checkpoint(directory)
        clip_state = (
            load_part(directory, "clip", manifest=manifest)
            if ("clip" in manifest["parts"])
            else None
        )
        origin = str(manifest.get("clip_weights") or "checkpoint")
        clip = ClipBackbone(cfg.model.clip, state_dict=clip_state, origin=origin)
        generator = CLIPSRGenerator(cfg.model, clip.embed_dim, clip.width, clip.grid_size)
        state = load_part(directory, "generator", manifest=manifest)
        try:
            generator.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{directory}: generator weights do not match its config.yaml: {err}"
            ) from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(cfg, generator, clip, device)

    @property
    def scale(self) -> int:
        return self.generator.scale

    @property
    def scales(self) -> list[int]:
        """Every scale the model serves."""
        return list(self.generator.scales)

    def for_scale(self, scale: int | None) -> SuperResolver:
        """This model upscaling by ``scale`` (None: the default); ValueError naming the scales
        it serves when it does not serve ``scale``."""
        if scale is None or scale == self.scale:
            return self
        base = getattr(self.generator, "base", self.generator)
        return SuperResolver(self.cfg, ScaleView(base, scale), self.clip, self.device)

    def check_size(self, width: int, height: int, name: str = "image") -> None:
        """Raise ValueError naming ``name`` when the LR size does not fit the model."""
        try:
            self.generator.check_input(torch.empty(1, 3, height, width, device="meta"))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    @torch.no_grad()
    def upscale_tensor(
        self, lr: torch.Tensor, prompts: list[str], scale: int | None = None
    ) -> torch.Tensor:
        """(B, 3, h, w) [-1, 1] LR and B captions -> (B, 3, h*s, w*s) SR, clamped to [-1, 1]."""
        if len(prompts) != lr.shape[0]:
            raise ValueError(f"{lr.shape[0]} images but {len(prompts)} prompts")
        text = self.clip.encode_text(prompts)
        return self.generator(lr.to(self.device), text, self.clip, scale=scale).clamp(-1, 1)

    def upscale(self, image: Image.Image, prompt: str, scale: int | None = None) -> Image.Image:
        self.check_size(*image.size)
        sr = self.upscale_tensor(image_to_tensor(image)[None], [prompt], scale)
        return tensor_to_image(sr[0])

    @torch.no_grad()
    def prompt_edit(
        self, image: Image.Image, prompts: list[str], scale: int | None = None
    ) -> tuple[list[Image.Image], list[float]]:
        """One SR per prompt, and each SR's CLIP-score against its own prompt."""
        if not prompts:
            raise ValueError("prompt editing needs at least one prompt")
        self.check_size(*image.size)
        lr = image_to_tensor(image)[None].expand(len(prompts), -1, -1, -1)
        sr = self.upscale_tensor(lr, prompts, scale)
        scores = clip_score(self.clip.image_embedding(sr), self.clip.encode_text(prompts))
        return [tensor_to_image(x) for x in sr], [float(s) for s in scores]


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters (words kept whole where they fit)."""
    lines: list[str] = []
    for word in text.split():
        while len(word) > width:  # a word longer than a line is cut
            lines.append(word[:width])
            word = word[width:]
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def prompt_grid(
    lr: Image.Image,
    results: list[Image.Image],
    prompts: list[str],
    scores: list[float],
    hr: Image.Image | None = None,
    verdicts: list[str | None] | None = None,
    clip_label: str = "",
) -> Image.Image:
    """Side by side: the LR (nearest-upscaled), one SR per prompt, and the HR when given. Under
    each SR its full prompt (wrapped), its CLIP-score and, when given, a verdict (e.g. the shape
    the adherence classifier sees); ``clip_label`` (which CLIP scored) under the LR."""
    w, h = results[0].size
    scale_up = max(1, 256 // w)  # small images are shown at least 256 px wide, pixels kept
    cw, ch = w * scale_up, h * scale_up
    chars = max(12, cw // 7)
    texts = [_wrap(p or "(empty prompt)", chars) for p in prompts]
    extra = 2 if verdicts else 1
    rows = max(len(t) for t in texts) + extra
    label_h = 6 + 14 * max(rows, 3 + len(_wrap(clip_label, chars)))
    columns = len(results) + 1 + (hr is not None)
    grid = Image.new("RGB", (cw * columns, ch + label_h), "white")
    draw = ImageDraw.Draw(grid)

    def put(k: int, image: Image.Image, lines: list[str]) -> None:
        grid.paste(image.convert("RGB").resize((cw, ch), Image.Resampling.NEAREST), (k * cw, 0))
        for j, line in enumerate(lines):
            draw.text((k * cw + 4, ch + 4 + 14 * j), line, fill="black")

    put(0, lr, ["LR input (nearest)", *_wrap(clip_label, chars)])
    for k, (img, text, score) in enumerate(zip(results, texts, scores), start=1):
        lines = [*text, f"CLIP-score {score:.1f}"]
        if verdicts:
            lines.append(f"drawn: {verdicts[k - 1] or 'no shape'}")
        put(k, img, lines)
    if hr is not None:
        put(columns - 1, hr, ["HR (ground truth)"])
    return grid
