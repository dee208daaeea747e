"""Shared fixtures. Runtime settings go first: offline hubs, Ray on loopback."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The S3 server's fake credentials from the start: a Ray that any test starts before the
# s3_server fixture would otherwise have workers without them, whose S3 requests go out
# anonymous (refused, or stored as raw aws-chunked bodies) for the rest of the session.
# Tests never reach a real AWS (endpoints are the local server's).
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)

import warnings

import pytest
import torch

from clipsr.config import CLIPSRConfig, load_clipsr_config

pytest_plugins = ["tests.services"]  # the real S3 (moto) and MLflow servers

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def tiny_config(scale: int = 4, *overrides: str) -> CLIPSRConfig:
    """The shipped tiny preset for ``scale`` with overrides."""
    return load_clipsr_config(os.path.join(CONFIGS, f"tiny-x{scale}.yaml"), list(overrides))


@pytest.fixture(scope="session")
def tiny_clip():
    """One random-init tiny CLIP for the session (its warning is expected here)."""
    from clipsr.clip_backbone import ClipBackbone, RandomClipWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWeightsWarning)
        return ClipBackbone(tiny_config().model.clip)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def text_sensitive_checkpoint(clip, directory, scale: int = 4, *overrides: str):
    """A tiny checkpoint whose identity-initialised affines (and zero-initialised output
    conv) have been moved, so that the prompt changes the output; returns its directory."""
    from clipsr.inference import save_generator_checkpoint
    from clipsr.training import build_generator

    cfg = tiny_config(scale, *overrides)
    gen = build_generator(cfg, clip)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if "affine" in name or "to_rgb" in name:
                p.add_(0.05 * torch.randn_like(p))
    return save_generator_checkpoint(directory, cfg, gen, clip)


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (2 CPUs), started once the S3 server's credentials
    are in the environment, so that Ray's workers inherit them."""
    from pipelines.ray_cluster import init_ray

    ray = init_ray("", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
