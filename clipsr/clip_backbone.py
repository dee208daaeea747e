"""The frozen CLIP backbone (open_clip) shared by the generator, the discriminator and the losses.

- text: the sentence embedding F_T = ln_final(x)[EOT] @ text_projection (not L2-normalised);
- image: patch-token maps after the configured ViT blocks (the discriminator's input) and the
  global embedding, differentiable with respect to the image (the weights stay frozen);
- the ViT trunk run on a feature grid with prompt tokens appended before chosen blocks (the
  generator's CLIP-ViT fusion path).

Weights come from an open_clip tag, a local file or an HF cache directory (``model.clip.*``).
With none configured the backbone is randomly initialised from ``model.clip.init_seed`` and says
so with a :class:`RandomClipWeightsWarning`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipsr.config import ClipConfig

log = logging.getLogger(__name__)

open_clip.add_model_config(Path(__file__).parent / "model_configs")


class RandomClipWeightsWarning(UserWarning):
    """CLIP runs on random weights: text guidance and CLIP losses carry no pretrained meaning."""


class ClipWeightsError(RuntimeError):
    """The configured CLIP weights cannot be loaded."""


class _OpenClipRandomNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" (it logs it
    through the root logger): the RandomClipWeightsWarning says so where it is true, and a
    model whose CLIP weights then come from a checkpoint is not random at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _without_open_clip_notice():
    root, notice = logging.getLogger(), _OpenClipRandomNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def random_clip_message(cfg: ClipConfig, saved: bool = False) -> str:
    """The text of the :class:`RandomClipWeightsWarning`: no weights configured (``saved``
    False), or a model whose checkpoint carries the random CLIP it was trained with."""
    if saved:
        return (
            f"CLIP '{cfg.arch}' of this model is RANDOMLY INITIALISED (seed {cfg.init_seed}; "
            "saved in its checkpoint): it was trained without CLIP weights, so its text "
            "guidance and CLIP-scores carry no pretrained meaning."
        )
    return (
        f"CLIP '{cfg.arch}' is RANDOMLY INITIALISED (seed {cfg.init_seed}): no weights are "
        "configured. Set model.clip.pretrained (an open_clip tag, e.g. openai) or "
        "model.clip.checkpoint (a local file). Text guidance and the CLIP losses mean "
        "nothing pretrained; the random weights are saved with every checkpoint."
    )


def describe_clip_weights(cfg: ClipConfig, source: str) -> str:
    """Which CLIP weights a model runs on, for reports and tags: ``source`` is a
    :attr:`ClipBackbone.weights_source` (or a checkpoint manifest's ``clip_weights``)."""
    if source == "random":
        return f"random (no pretrained weights; {cfg.arch}, init seed {cfg.init_seed})"
    if source == "checkpoint":
        return f"from the model's checkpoint ({cfg.arch})"
    return f"{source} ({cfg.arch})" if source != cfg.arch else source


def _create_open_clip(cfg: ClipConfig) -> tuple[nn.Module, str]:
    """Build the open_clip model; returns it and a description of where its weights came from."""
    schema = cfg.arch.startswith(("hf-hub:", "local-dir:"))
    quick_gelu = cfg.uses_quick_gelu
    kwargs = dict(force_quick_gelu=quick_gelu, cache_dir=cfg.cache_dir or None)
    if not cfg.has_weights:
        if cfg.arch not in open_clip.list_models():
            raise ClipWeightsError(
                f"model.clip.arch: unknown open_clip architecture '{cfg.arch}' "
                "(see open_clip.list_models(), or use hf-hub:org/repo / local-dir:/path)"
            )
        warnings.warn(random_clip_message(cfg), RandomClipWeightsWarning, stacklevel=3)
        with torch.random.fork_rng(devices=[]), _without_open_clip_notice():
            torch.manual_seed(cfg.init_seed)
            model = open_clip.create_model(cfg.arch, pretrained=None, **kwargs)
        return model, "random"
    source = cfg.arch if schema else (cfg.checkpoint or cfg.pretrained)
    if cfg.checkpoint and not Path(cfg.checkpoint).expanduser().is_file():
        raise ClipWeightsError(f"model.clip.checkpoint: file not found: {cfg.checkpoint}")
    try:
        model = open_clip.create_model(
            cfg.arch,
            pretrained=None if schema else source,
            require_pretrained=True,
            **kwargs,
        )
    except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError variously
        key = (
            "model.clip.arch"
            if schema
            else ("model.clip.checkpoint" if cfg.checkpoint else "model.clip.pretrained")
        )
        raise ClipWeightsError(
            f"{key}: cannot load CLIP weights '{source}' for '{cfg.arch}': {err}. "
            "Offline machines need the weights in model.clip.cache_dir (an HF cache) or a "
            "local file in model.clip.checkpoint."
        ) from err
    log.info("CLIP %s: weights from %s (QuickGELU %s)", cfg.arch, source, quick_gelu)
    return model, source


class ClipBackbone(nn.Module):
    """Frozen open_clip model with the three views CLIP-SR needs (text, image taps, ViT trunk)."""

    def __init__(
        self,
        cfg: ClipConfig,
        state_dict: dict[str, torch.Tensor] | None = None,
        origin: str = "checkpoint",
    ):
        """``state_dict``: weights saved with a checkpoint; ``origin`` says where they first
        came from (the checkpoint's ``clip_weights``: ``random`` for a random init, which is
        then warned about as such)."""
        super().__init__()
        self.cfg = cfg
        if state_dict is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RandomClipWeightsWarning)
                model, _ = _create_open_clip(_without_weights(cfg))
            model.load_state_dict(state_dict)
            self.weights_source = origin
            if origin == "random":
                message = random_clip_message(cfg, saved=True)
                warnings.warn(message, RandomClipWeightsWarning, stacklevel=2)
        else:
            model, self.weights_source = _create_open_clip(cfg)
        model.requires_grad_(False)
        self.model = model.eval()
        visual = model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ClipWeightsError(
                f"model.clip.arch: '{cfg.arch}' has no ViT image tower; CLIP-SR needs a ViT"
            )
        self.visual = visual
        self.width = visual.transformer.width
        self.num_layers = len(visual.transformer.resblocks)
        self.grid_size = tuple(visual.grid_size)
        self.image_size = tuple(visual.image_size)
        self.embed_dim = (
            int(model.text_projection.shape[1])
            if hasattr(model, "text_projection") and model.text_projection is not None
            else int(visual.output_dim)
        )
        if max(cfg.image_taps) >= self.num_layers:
            raise ClipWeightsError(
                f"model.clip.image_taps: {cfg.image_taps} reaches past the {self.num_layers} "
                f"blocks of '{cfg.arch}'"
            )
        self.tokenizer = open_clip.get_tokenizer(cfg.arch, cache_dir=cfg.cache_dir or None)
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipBackbone:
        """Always eval: CLIP is frozen (no dropout, fixed statistics)."""
        return super().train(False)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Sentence embeddings (B, embed_dim), not normalised, of a list of captions."""
        tokens = self.tokenizer(list(captions)).to(self.mean.device)
        return self.model.encode_text(tokens, normalize=False).float()

    # ----------------------------------------------------------------- image
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> CLIP's normalised input at its image size."""
        x = (images + 1) * 0.5
        if self.cfg.compat_double_shift:  # the reference's quirk: the shift applied twice
            x = (x + 1) * 0.5
        if tuple(x.shape[-2:]) != self.image_size:
            mode = self.cfg.image_resize
            extra = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=self.image_size, mode=mode, **extra)
        return (x - self.mean) / self.std

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch-token maps after ``image_taps`` stacked (B, T, width, g, g) and the global
        embedding (B, embed_dim); gradients flow to ``images``, never into CLIP."""
        out = self.visual.forward_intermediates(
            self.preprocess(images), indices=list(self.cfg.image_taps), output_fmt="NCHW"
        )
        return torch.stack(out["image_intermediates"], dim=1), out["image_features"]

    def image_taps(self, images: torch.Tensor) -> torch.Tensor:
        """Only the patch-token maps after ``image_taps`` (B, T, width, g, g): the blocks after
        the last tap, ln_post and the projection are not run (the discriminator's input)."""
        out = self.visual.forward_intermediates(
            self.preprocess(images),
            indices=list(self.cfg.image_taps),
            stop_early=True,
            intermediates_only=True,
            output_fmt="NCHW",
        )
        return torch.stack(out["image_intermediates"], dim=1)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(self.preprocess(images))

    # ------------------------------------------------------------ ViT trunk
    def run_trunk(
        self, grid: torch.Tensor, prompts: torch.Tensor, prompt_blocks: list[int]
    ) -> torch.Tensor:
        """Run the ViT blocks on a feature grid (B, width, gh, gw) in place of patch embeddings.

        Prompt token ``k`` (``prompts`` is (B, P, width)) is appended to the sequence before block
        ``prompt_blocks[k]`` and dropped after it. Returns the patch tokens as (B, width, gh, gw),
        without ln_post or projection (GALIP's/CLIP-SR's CLIP mapper).
        """
        v = self.visual
        b, c, gh, gw = grid.shape
        if (gh, gw) != self.grid_size:
            raise ValueError(f"grid {gh}x{gw} does not match the ViT's {self.grid_size}")
        x = grid.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        slot = {blk: k for k, blk in enumerate(prompt_blocks)}
        for i, block in enumerate(v.transformer.resblocks):
            if i in slot:
                x = torch.cat([x, prompts[:, slot[i] : slot[i] + 1].to(x.dtype)], dim=1)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            if i in slot:
                x = x[:, :-1]
        return x[:, 1:].transpose(1, 2).reshape(b, c, gh, gw)

    def weights_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    @property
    def weights_description(self) -> str:
        """Which weights this CLIP runs on, in words (:func:`describe_clip_weights`)."""
        return describe_clip_weights(self.cfg, self.weights_source)


def check_clip_weights(cfg: ClipConfig) -> None:
    """What can be checked of the configured CLIP weights without building the model (for jobs
    that must fail before any work): the architecture, the tag, the file; and on an offline
    machine (``HF_HUB_OFFLINE=1``) that the tag's weights are in the cache. Raises
    :class:`ClipWeightsError` naming the config key."""
    import os

    if cfg.arch.startswith("local-dir:"):
        path = Path(cfg.arch.removeprefix("local-dir:")).expanduser()
        if not path.is_dir():
            raise ClipWeightsError(f"model.clip.arch: directory not found: {path}")
        return
    if cfg.arch.startswith("hf-hub:"):
        return  # resolved by the hub client on load
    if cfg.arch not in open_clip.list_models():
        raise ClipWeightsError(
            f"model.clip.arch: unknown open_clip architecture '{cfg.arch}' "
            "(see open_clip.list_models(), or use hf-hub:org/repo / local-dir:/path)"
        )
    if cfg.checkpoint:
        if not Path(cfg.checkpoint).expanduser().is_file():
            raise ClipWeightsError(f"model.clip.checkpoint: file not found: {cfg.checkpoint}")
        return
    if not cfg.pretrained or Path(cfg.pretrained).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(cfg.arch)
    if cfg.pretrained not in tags:
        raise ClipWeightsError(
            f"model.clip.pretrained: '{cfg.pretrained}' is not a pretrained tag of "
            f"'{cfg.arch}' (its tags: {', '.join(tags) or 'none'})"
        )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        try:  # offline: finds the cached file, or fails at once
            found = download_pretrained(
                get_pretrained_cfg(cfg.arch, cfg.pretrained), cache_dir=cfg.cache_dir or None
            )
        except Exception as err:  # the hub client raises several kinds
            found, reason = "", f"{type(err).__name__}: {err}"
        else:
            reason = "not downloaded"
        if not found:
            raise ClipWeightsError(
                f"model.clip.pretrained: the weights of '{cfg.pretrained}' for '{cfg.arch}' are "
                f"not in the cache and the hub is offline (HF_HUB_OFFLINE=1; {reason}); put them "
                "in model.clip.cache_dir or set model.clip.checkpoint to a local file"
            )


def _without_weights(cfg: ClipConfig) -> ClipConfig:
    from dataclasses import replace

    # the same network: QuickGELU as resolved from the weights source (OpenAI: on)
    quick_gelu = cfg.uses_quick_gelu
    return replace(cfg, pretrained="", checkpoint="", arch=_plain_arch(cfg), quick_gelu=quick_gelu)


def _plain_arch(cfg: ClipConfig) -> str:
    if cfg.arch.startswith(("hf-hub:", "local-dir:")):
        raise ClipWeightsError(
            f"model.clip.arch: cannot rebuild '{cfg.arch}' without its source; "
            "load it from the hub cache or directory instead"
        )
    return cfg.arch


def create_open_clip(cfg: ClipConfig) -> tuple[nn.Module, str]:
    """The open_clip model ``cfg`` names (weights from its tag/file, or a random init from
    ``init_seed`` with a warning) and where its weights came from; trainable as returned."""
    return _create_open_clip(cfg)
