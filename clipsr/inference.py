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


class SuperResolver:
    """A generator with its frozen CLIP, ready to upscale images guided by captions."""

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
        return self.cfg.model.scale

    def check_size(self, width: int, height: int, name: str = "image") -> None:
        """Raise ValueError naming ``name`` when the LR size does not fit the model."""
        try:
            self.generator.check_input(torch.empty(1, 3, height, width, device="meta"))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    @torch.no_grad()
    def upscale_tensor(self, lr: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, 3, h, w) [-1, 1] LR and B captions -> (B, 3, h*s, w*s) SR, clamped to [-1, 1]."""
        if len(prompts) != lr.shape[0]:
            raise ValueError(f"{lr.shape[0]} images but {len(prompts)} prompts")
        text = self.clip.encode_text(prompts)
        return self.generator(lr.to(self.device), text, self.clip).clamp(-1, 1)

    def upscale(self, image: Image.Image, prompt: str) -> Image.Image:
        self.check_size(*image.size)
        return tensor_to_image(self.upscale_tensor(image_to_tensor(image)[None], [prompt])[0])

    @torch.no_grad()
    def prompt_edit(
        self, image: Image.Image, prompts: list[str]
    ) -> tuple[list[Image.Image], list[float]]:
        """One SR per prompt, and each SR's CLIP-score against its own prompt."""
        if not prompts:
            raise ValueError("prompt editing needs at least one prompt")
        self.check_size(*image.size)
        lr = image_to_tensor(image)[None].expand(len(prompts), -1, -1, -1)
        sr = self.upscale_tensor(lr, prompts)
        scores = clip_score(self.clip.image_embedding(sr), self.clip.encode_text(prompts))
        return [tensor_to_image(x) for x in sr], [float(s) for s in scores]


def prompt_grid(
    lr: Image.Image, results: list[Image.Image], prompts: list[str], scores: list[float]
) -> Image.Image:
    """Side by side: the LR (nearest-upscaled) then one SR per prompt, each labelled with its
    prompt and CLIP-score."""
    w, h = results[0].size
    label_h = 36
    grid = Image.new("RGB", (w * (len(results) + 1), h + label_h), "white")
    grid.paste(lr.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (0, 0))
    draw = ImageDraw.Draw(grid)
    draw.text((4, h + 4), "LR input", fill="black")
    for k, (img, prompt, score) in enumerate(zip(results, prompts, scores), start=1):
        grid.paste(img, (k * w, 0))
        text = prompt if len(prompt) <= w // 6 else prompt[: w // 6 - 1] + "…"
        draw.text((k * w + 4, h + 4), text or "(empty prompt)", fill="black")
        draw.text((k * w + 4, h + 20), f"CLIP-score {score:.1f}", fill="black")
    return grid
