"""Checkpoint directories: safetensors weights + the resolved config + a JSON manifest. No pickle.

Layout::

    DIR/config.yaml          the resolved CLIPSRConfig
    DIR/<part>.safetensors   one file per part (generator, clip when it was randomly initialised,
                             discriminator, ... in training checkpoints)
    DIR/checkpoint.json      format version, parts with sha256, scale (the default) and scales (all
                             it serves), wiring, CLIP weights source;
                             written last, so a directory without it is incomplete
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipsr.config import CLIPSRConfig
from clipsr.config_loader import ConfigError, from_dict, to_yaml
from clipsr.shards import sha256_file

FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
CONFIG = "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or of another format (bad input:
    a command exits 2 on it)."""


def save_checkpoint(
    directory: str | Path,
    cfg: CLIPSRConfig,
    parts: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``parts`` (name -> state dict) as safetensors, the config, then the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # incomplete until rewritten at the end
    entries = {}
    for name, state in parts.items():
        path = directory / f"{name}.safetensors"
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(path))
        entries[name] = {"file": path.name, "sha256": sha256_file(path), "tensors": len(tensors)}
    (directory / CONFIG).write_text(to_yaml(cfg))
    manifest = {
        "format_version": FORMAT_VERSION,
        "parts": entries,
        "scale": cfg.model.scale,
        "scales": cfg.model.all_scales,
        "wiring": cfg.model.generator.wiring,
        **(meta or {}),
    }
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a complete clipsr checkpoint: {MANIFEST} is missing "
            "(an interrupted save, or not a checkpoint directory)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt manifest ({err})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r}, this clipsr reads format {FORMAT_VERSION}"
        )
    return manifest


def load_config_from_checkpoint(directory: str | Path) -> CLIPSRConfig:
    import yaml

    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: {CONFIG} is missing")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        # a training checkpoint also records its job's sections (data, run, tracking) for
        # provenance; the model needs only the library's own
        known = {f.name for f in dataclasses.fields(CLIPSRConfig)}
        return from_dict(CLIPSRConfig, {k: v for k, v in data.items() if k in known})
    except (ConfigError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: invalid config ({err})") from None


def load_part(
    directory: str | Path, name: str, verify: bool = True, manifest: dict | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of one part; ``verify`` checks its sha256 against the manifest first."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    entry = manifest["parts"].get(name)
    if entry is None:
        raise CheckpointError(
            f"{directory}: no '{name}' weights in this checkpoint "
            f"(it has: {', '.join(sorted(manifest['parts'])) or 'nothing'})"
        )
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing")
    if verify and sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 mismatch, the file is corrupt or was modified")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors ({err})") from None


def has_part(directory: str | Path, name: str) -> bool:
    return name in read_manifest(directory)["parts"]


INFERENCE_PARTS = ("generator", "clip")  # the EMA generator, and CLIP when not reproducible


def inference_files(manifest: dict[str, Any]) -> list[str]:
    """The files of a training checkpoint that its inference checkpoint is made of."""
    parts = [e["file"] for n, e in sorted(manifest["parts"].items()) if n in INFERENCE_PARTS]
    return [MANIFEST, CONFIG, *parts]


def write_inference_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """An inference checkpoint in ``dst`` from the training checkpoint in ``src`` (which needs
    only :func:`inference_files`): the EMA generator and CLIP parts copied and verified against
    their sha256, the config, and a manifest without the training state (its step is kept as
    ``exported_from_step``)."""
    import shutil

    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    if "generator" not in manifest["parts"]:
        raise CheckpointError(f"{src}: no generator weights to export")
    dst.mkdir(parents=True, exist_ok=True)
    parts = {}
    for name, entry in sorted(manifest["parts"].items()):
        if name not in INFERENCE_PARTS:
            continue
        source = src / entry["file"]
        if not source.is_file() or sha256_file(source) != entry["sha256"]:
            raise CheckpointError(f"{source}: missing, or does not match its sha256")
        shutil.copyfile(source, dst / entry["file"])
        parts[name] = entry
    shutil.copyfile(src / CONFIG, dst / CONFIG)
    info = {k: v for k, v in manifest.items() if k not in ("parts", "training_state")}
    info["parts"] = parts
    info["exported_from_step"] = manifest.get("training_state", {}).get("step")
    tmp = dst / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(tmp, dst / MANIFEST)
    return dst
