"""What clipsr writes to MLflow beyond params and metrics, in MLflow's own terms:

- :func:`shard_set_input`: a shard set's split as an MLflow dataset input (the run page's
  "Datasets"): name ``<shard dir>/<split>``, the manifest's sha256 as digest (its first 36
  characters, MLflow's limit; the whole hash in the profile), the local or ``s3://`` URI as
  source, the shard members as schema, samples and shards as profile;
- :func:`describe_version` / :func:`describe_model`: descriptions of registered versions and
  models;
- :func:`run_context_tags`: ``mlflow.user`` (the real user), ``mlflow.source.*`` and the git
  commit, for runs created through ``MlflowClient.create_run`` (which sets none of them).
"""

from __future__ import annotations

import json
from typing import Any

DIGEST_SIZE = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE
CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT


def shard_set_input(shards: str, split: str, manifest: dict, manifest_sha: str, context: str):
    """An ``mlflow.entities.DatasetInput`` for ``split`` of the shard set at ``shards``
    (``context``: training, validation, evaluation)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    entries = [s for s in manifest.get("shards", []) if s.get("split") == split]
    scales = sorted(manifest.get("scales", []))
    schema = Schema(
        [ColSpec("binary", "hr"), *(ColSpec("binary", f"lr_x{s}") for s in scales)]
        + [ColSpec("string", "caption"), ColSpec("string", "captions"), ColSpec("string", "meta")]
    )
    profile = {
        "num_rows": sum(int(s.get("samples", 0)) for s in entries),
        "shards": len(entries),
        "split": split,
        "hr_size": manifest.get("hr_size"),
        "scales": scales,
        "manifest_sha256": manifest_sha,
        "format_version": manifest.get("format_version"),
    }
    dataset = Dataset(
        name=f"{shards.rstrip('/').rsplit('/', 1)[-1] or shards}/{split}",
        digest=manifest_sha[:DIGEST_SIZE],
        source_type="s3" if shards.startswith("s3://") else "local",
        source=json.dumps({"uri": shards}),
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])


def dataset_key(dataset_input: Any) -> dict[str, str]:
    """The ``dataset_name``/``dataset_digest`` of metrics computed on that dataset."""
    return {
        "dataset_name": dataset_input.dataset.name,
        "dataset_digest": dataset_input.dataset.digest,
    }


def describe_version(scale: int, run_name: str, steps: int, shards: str, sha: str, clip: str):
    """The description of a model version registered by ``clipsr train``."""
    return (
        f"{scale}x CLIP-SR generator (EMA weights) from the clipsr train run '{run_name}' "
        f"({steps} steps) on the shard set {shards} (manifest sha256 {sha[:12]}). CLIP weights: "
        f"{clip}. Input: an LR image and a caption; output: the {scale}x SR image. Evaluate it "
        "with clipsr evaluate, make it the champion with clipsr promote."
    )


def describe_model(name: str) -> str:
    """The description of a registered model created by ``clipsr train``."""
    return (
        "Text-guided image super-resolution generators (CLIP-SR), one version per finished "
        "clipsr train run: a pyfunc over a safetensors checkpoint that takes an LR image and a "
        f"caption. Serve models:/{name}@champion: clipsr promote moves the alias behind metric "
        "gates (audit tags clipsr.promote.* on the versions)."
    )


def set_descriptions(client: Any, name: str, version: str, description: str) -> None:
    """The version's description, and the model's when it has none yet."""
    client.update_model_version(name, str(version), description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=describe_model(name))


def run_context_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with MLflow's own context tags added (user, source name and type, git commit):
    what ``mlflow.start_run`` adds and ``MlflowClient.create_run`` does not. The user is the
    audit user of ``clipsr promote`` (``CLIPSR_USER``, else the login name)."""
    from mlflow.tracking.context.registry import resolve_tags

    from jobs.registry import who

    return {**resolve_tags(tags), "mlflow.user": who()}
