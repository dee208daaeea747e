"""clipsr: text-guided large-factor image super-resolution (CLIP-SR).

The library: config schema, frozen CLIP backbone, generator, discriminator, losses,
degradations, metrics, shard format, checkpoints and inference. No Ray, MLflow or boto3 here.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import-time PyPI check

try:
    __version__ = version("clipsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
