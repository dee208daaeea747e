"""Starting a training run from the weights of a checkpoint (``run.init_from``).

Any clipsr checkpoint directory can start a run: an inference checkpoint (``generator``), a
training checkpoint (``generator_live`` and its EMA ``generator``, ``discriminator``) or the
output of ``clipsr convert-reference`` (``generator``, ``discriminator``, ``clip``). The run
takes its weights, not its state: the step, the optimizers and the data position start afresh
(a rerun of the same ``run.name`` resumes from the run's own checkpoints instead).

- G (live) <- ``generator_live`` if present, else ``generator``; the EMA <- ``generator``;
- D + text head <- ``discriminator`` if present (else D starts from ``seed``);
- CLIP <- the checkpoint's ``clip`` part if present (the G and D were trained against it), which
  must be the same network as the run's ``model.clip`` (architecture and QuickGELU).

:func:`check_init_checkpoint` checks all this from the files' headers and the configs, without
building the models, so that ``clipsr train`` refuses a mismatch before Ray starts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from clipsr.checkpoint import (
    CheckpointError,
    load_config_from_checkpoint,
    load_part,
    read_manifest,
)
from clipsr.config import ClipConfig, CLIPSRConfig


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def _network(clip: ClipConfig) -> tuple[str, bool]:
    return clip.arch, clip.uses_quick_gelu


def _clip_dims(cfg: ClipConfig) -> tuple[int, int, tuple[int, int]] | None:
    """(text embedding dim, ViT width, ViT grid) of the architecture, from open_clip's config
    (None for hf-hub:/local-dir: architectures, whose config is not local to read)."""
    import open_clip

    import clipsr.clip_backbone  # noqa: F401  (registers the bundled configs)

    model = open_clip.get_model_config(cfg.arch)
    if model is None:
        return None
    vision = model["vision_cfg"]
    size, patch = vision["image_size"], vision["patch_size"]
    size = size if isinstance(size, int) else size[0]
    grid = size // (patch if isinstance(patch, int) else patch[0])
    return int(model["embed_dim"]), int(vision["width"]), (grid, grid)


def _header_shapes(directory: Path, manifest: dict, part: str) -> dict[str, tuple[int, ...]]:
    path = directory / manifest["parts"][part]["file"]
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _compare(name: str, found: dict, module: torch.nn.Module, where: str) -> None:
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    wrong = [k for k in sorted(set(wanted) & set(found)) if wanted[k] != found[k]]
    if missing or extra or wrong:
        detail = (
            f"{len(missing)} missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} unexpected (e.g. {extra[0]})"
            if extra
            else f"{wrong[0]} is {list(found[wrong[0]])}, the run's needs {list(wanted[wrong[0]])}"
        )
        raise CheckpointError(
            f"run.init_from: the {name} weights in {where} do not fit the run's model: {detail} "
            "(start from a checkpoint of the same model settings)"
        )


def check_init_checkpoint(directory: str | Path, cfg: CLIPSRConfig) -> list[str]:
    """Raise CheckpointError when the checkpoint cannot start a run of ``cfg``; return the parts
    the run will take from it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    parts = manifest["parts"]
    if "generator" not in parts:
        raise CheckpointError(f"run.init_from: {directory} has no generator weights")
    if "clip" in parts:
        theirs = _network(load_config_from_checkpoint(directory).model.clip)
        ours = _network(cfg.model.clip)
        if theirs != ours:
            raise CheckpointError(
                f"run.init_from: {directory} was trained with CLIP {theirs[0]} (QuickGELU "
                f"{theirs[1]}), the run's model.clip is {ours[0]} (QuickGELU {ours[1]}); set "
                "model.clip.arch and model.clip.quick_gelu to match (its config.yaml has them)"
            )
    dims = _clip_dims(cfg.model.clip)
    if dims is not None:
        from clipsr.discriminator import CLIPDiscriminator
        from clipsr.generator import CLIPSRGenerator

        text_dim, width, grid = dims
        with torch.device("meta"):
            gen = CLIPSRGenerator(cfg.model, text_dim, width, grid)
            disc = CLIPDiscriminator(cfg.model, width, text_dim, grid)
        for part, module in (
            ("generator", gen),
            ("generator_live", gen),
            ("discriminator", disc),
        ):
            if part in parts:
                _compare(part, _header_shapes(directory, manifest, part), module, str(directory))
    return [p for p in ("generator", "generator_live", "discriminator", "clip") if p in parts]


def initial_clip(cfg: CLIPSRConfig, directory: str | Path):
    """A :class:`~clipsr.clip_backbone.ClipBackbone` (``model.clip``'s network) with the
    checkpoint's CLIP weights, or None when it has none (CLIP then comes from ``model.clip``)."""
    from clipsr.clip_backbone import ClipBackbone

    manifest = read_manifest(directory)
    if "clip" not in manifest["parts"]:
        return None
    return ClipBackbone(cfg.model.clip, state_dict=load_part(directory, "clip", manifest=manifest))


def load_initial_weights(directory: str | Path, models, ema=None) -> list[str]:
    """Load G (live), the EMA and D from the checkpoint into ``models``/``ema`` (before DDP
    wrapping or after: the modules are unwrapped); returns the parts loaded."""
    manifest = read_manifest(directory)
    parts = manifest["parts"]

    def part(name: str) -> dict[str, torch.Tensor]:
        return load_part(directory, name, manifest=manifest)

    live = "generator_live" if "generator_live" in parts else "generator"
    _unwrap(models.generator).load_state_dict(part(live))
    loaded = [live]
    if ema is not None:
        ema.model.load_state_dict(part("generator"))
        if live == "generator":
            loaded = ["generator (also EMA)"]
        else:
            loaded.append("generator (EMA)")
    if "discriminator" in parts:
        _unwrap(models.discriminator).load_state_dict(part("discriminator"))
        loaded.append("discriminator")
    return loaded
