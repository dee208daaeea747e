"""VGG16 feature stacks from local weight files (perceptual loss, LPIPS), and the safe loader.

Weights are never downloaded and never unpickled: ``.safetensors`` or a torch file read with
``weights_only=True``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchvision.models.vgg import cfgs, make_layers


def load_state_dict_file(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors or a weights-only torch file.

    A checkpoint-style ``{"state_dict": {...}}`` wrapper is unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError) as err:
        raise ValueError(
            f"could not read {what} file {path} as a tensor state dict "
            f"(.safetensors, or a torch file loadable with weights_only=True): "
            f"{type(err).__name__}"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{what} file {path} must contain a flat dict of name -> tensor")
    return dict(state)


def vgg16_features(path: str | Path | None, what: str = "VGG16") -> nn.Sequential:
    """torchvision's ``vgg16().features`` (no classifier is built) with weights from ``path``
    (a torchvision VGG16 state dict: ``features.N.weight|bias``; other keys ignored), or left
    randomly initialised when ``path`` is None."""
    features = make_layers(cfgs["D"])
    if path is None:
        return features
    state = load_state_dict_file(path, what)
    wanted = {f"features.{k}": k for k in features.state_dict()}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(
            f"{what} file {path} is not a torchvision VGG16 state dict: it lacks "
            f"{missing[:4]}{' ...' if len(missing) > 4 else ''} (expected 'features.N.weight/bias')"
        )
    try:
        features.load_state_dict({k: state[full] for full, k in wanted.items()})
    except RuntimeError as err:
        raise ValueError(f"{what} file {path} does not match VGG16: {err}") from err
    return features
