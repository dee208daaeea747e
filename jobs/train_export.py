"""What ``clipsr train`` registers: an inference checkpoint, not the training checkpoint.

The training checkpoint (the live and EMA generators, the discriminator, both optimizers' states,
RNG states: everything an exact resume needs) stays in the run storage; the MLflow run links to
it (tag ``clipsr.training_checkpoint``). The registered model holds only what inference needs:
the EMA generator, CLIP's weights when they are not reproducible from the config, the config
and the checksums (``clipsr.checkpoint.write_inference_checkpoint``). Only those files are
fetched from the run storage, so evaluate and upscale actors download a fraction of it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TRAINING_CHECKPOINT_TAG = "clipsr.training_checkpoint"


def fetch_inference_files(checkpoint_uri: str, opts: Any, directory: Path) -> Path:
    """The files of the training checkpoint at ``checkpoint_uri`` (local or an object store)
    that its inference checkpoint needs, copied into ``directory``."""
    from clipsr.checkpoint import MANIFEST, inference_files
    from pipelines import storage

    directory.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(storage.read_bytes(storage.join(checkpoint_uri, MANIFEST), opts))
    for name in inference_files(manifest):
        (directory / name).write_bytes(storage.read_bytes(storage.join(checkpoint_uri, name), opts))
    return directory


def register_inference_model(
    checkpoint_uri: str, opts: Any, tracker: Any, registered_name: str | None, tags: dict
) -> tuple[str, str | None]:
    """Log (and register) the inference checkpoint of ``checkpoint_uri`` in the tracker's run,
    linking the run to the training checkpoint; returns (model URI, version)."""
    from clipsr.checkpoint import write_inference_checkpoint
    from jobs.tracking import log_generator_model

    tracker.client.set_tag(tracker.run_id, TRAINING_CHECKPOINT_TAG, checkpoint_uri)
    with tempfile.TemporaryDirectory(prefix="clipsr-export-") as tmp:
        training = fetch_inference_files(checkpoint_uri, opts, Path(tmp) / "training")
        inference = write_inference_checkpoint(training, Path(tmp) / "checkpoint")
        return log_generator_model(inference, registered_name, tags)
