"""Training checkpoints: everything an exact resume needs, as safetensors + JSON (no pickle).

A training checkpoint is also an inference checkpoint: its ``generator`` part holds the EMA
generator (what validation and export use), so ``SuperResolver.from_checkpoint`` loads it
directly. The other parts:

- ``generator_live`` (the trained weights), ``discriminator`` (D + text head),
- ``optimizer_generator`` / ``optimizer_discriminator`` (Adam moments and step counts),
- ``rng`` (torch CPU/CUDA generator states), ``clip`` (when CLIP was randomly initialised),

and ``checkpoint.json`` carries the step, the data position, optimizer hyper-parameters, the
GradScaler states and the Python/NumPy RNG states.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsr.checkpoint import load_part, read_manifest, save_checkpoint
from clipsr.config import CLIPSRConfig
from clipsr.training import EMA, CLIPSRModels, CLIPSROptimizers, Precision


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict):
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group in opt.param_groups:  # moments in their parameter's memory layout (channels_last)
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    opt.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_training_checkpoint(
    directory: str | Path,
    cfg: CLIPSRConfig,
    models: CLIPSRModels,
    optimizers: CLIPSROptimizers,
    ema: EMA,
    precision: Precision,
    step: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    opt_g, opt_g_meta = optimizer_tensors(optimizers.generator)
    opt_d, opt_d_meta = optimizer_tensors(optimizers.discriminator)
    rng, rng_meta = _rng_state()
    parts = {
        "generator": ema.model.state_dict(),
        "generator_live": _unwrap(models.generator).state_dict(),
        "discriminator": _unwrap(models.discriminator).state_dict(),
        "optimizer_generator": opt_g,
        "optimizer_discriminator": opt_d,
        "rng": rng,
    }
    if models.clip.weights_source in ("random", "checkpoint"):
        parts["clip"] = models.clip.weights_state_dict()
    scalers = {
        name: scaler.state_dict() if scaler is not None else None
        for name, scaler in (
            ("generator", precision.generator_scaler),
            ("discriminator", precision.discriminator_scaler),
        )
    }
    state = {
        "step": step,
        "data_position": step,  # global batches consumed per rank
        "optimizer_generator": opt_g_meta,
        "optimizer_discriminator": opt_d_meta,
        "scalers": scalers,
        "rng": rng_meta,
    }
    info = {"clip_weights": models.clip.weights_source, "training_state": state, **(meta or {})}
    return save_checkpoint(directory, cfg, parts, info)


def load_training_checkpoint(
    directory: str | Path,
    models: CLIPSRModels,
    optimizers: CLIPSROptimizers,
    ema: EMA,
    precision: Precision,
    device: torch.device | str = "cpu",
) -> int:
    """Restore every piece of training state in place; returns the step to continue from."""
    manifest = read_manifest(directory)
    state = manifest["training_state"]

    def part(name: str) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in load_part(directory, name, manifest=manifest).items()}

    _unwrap(models.generator).load_state_dict(part("generator_live"))
    _unwrap(models.discriminator).load_state_dict(part("discriminator"))
    ema.model.load_state_dict(part("generator"))
    load_optimizer(optimizers.generator, part("optimizer_generator"), state["optimizer_generator"])
    load_optimizer(
        optimizers.discriminator, part("optimizer_discriminator"), state["optimizer_discriminator"]
    )
    for name, scaler in (
        ("generator", precision.generator_scaler),
        ("discriminator", precision.discriminator_scaler),
    ):
        if scaler is not None and state["scalers"].get(name):
            scaler.load_state_dict(state["scalers"][name])
    _set_rng_state(load_part(directory, "rng", manifest=manifest), state["rng"])
    return int(state["step"])
