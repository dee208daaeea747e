"""The MLflow side of ``clipsr evaluate`` (the record's contract is jobs/evaluation_record.py):
the evaluation run, created with MLflow's context tags (user, source, git commit), with the test
shards as its dataset input, the evaluated model version's logged model as its model input, and
its metrics attached to both (what ``mlflow.evaluate`` does), so the model's page in MLflow lists
the evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ARTIFACT_DIR = "evaluation"


def resolve_registered(model_uri: str, tracking_uri: str) -> tuple[str | None, str | None]:
    """(name, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI (checked to
    exist); (None, None) for other URIs. Raises ModelNotFound."""
    from jobs.tracking import ModelNotFound

    if not model_uri.startswith("models:/"):
        return None, None
    import mlflow
    from mlflow.exceptions import MlflowException

    path = model_uri.removeprefix("models:/").strip("/")
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in path:
            name, alias = path.rsplit("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, ref = path.partition("/")
        if ref.isdigit():
            return name, str(client.get_model_version(name, ref).version)
        if ref == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if versions:
                return name, str(max(int(v.version) for v in versions))
    except MlflowException as err:
        msg = f"cannot find model {model_uri} at {tracking_uri}: {err.message}"
        raise ModelNotFound(msg) from None
    raise ModelNotFound(
        f"{model_uri}: name a version or an alias (models:/NAME/VERSION, models:/NAME@ALIAS)"
    )


def start_run(client: Any, cfg: Any, tracking_uri: str, tags: dict) -> str:
    """A new evaluation run in ``cfg.experiment`` (created with an artifact location beside an
    embedded store), named after the model version and split."""
    from jobs.evaluation_record import TAG_MODEL_NAME, TAG_MODEL_VERSION
    from jobs.mlflow_record import run_context_tags
    from jobs.tracking import resolve_tracking_uri

    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = resolve_tracking_uri(tracking_uri, cfg.out)[1]
        exp_id = client.create_experiment(cfg.experiment, location)
    else:
        exp_id = exp.experiment_id
    name = tags.get(TAG_MODEL_NAME)
    label = f"{name}-v{tags[TAG_MODEL_VERSION]}" if name else Path(cfg.model).name or "model"
    run = client.create_run(
        exp_id, tags=run_context_tags(tags), run_name=f"eval-{label}-{cfg.split}"
    )
    return run.info.run_id


def model_id_of(client: Any, name: str | None, version: str | None) -> str | None:
    """The logged model (MLflow 3's ``model_id``) behind a registered version, if any: the
    version's ``model_id``, or the ``models:/m-...`` source it was registered from (what
    ``log_model(registered_model_name=...)`` leaves)."""
    if not name:
        return None
    found = client.get_model_version(name, version)
    model_id = getattr(found, "model_id", None)
    source = str(getattr(found, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/")[0]
    return model_id or None


def log_run(
    client: Any,
    run_id: str,
    cfg: Any,
    metrics: dict,
    out: Path,
    manifest: dict,
    manifest_sha: str,
    model_id: str | None,
    artifacts: tuple[str, ...],
) -> None:
    """Params, inputs (the test shards; the model), metrics linked to both, artifacts."""
    from mlflow.entities import LoggedModelInput, Metric, Param

    from clipsr.config_loader import flatten, to_dict
    from jobs.mlflow_record import dataset_key, shard_set_input

    params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(to_dict(cfg)).items())]
    client.log_batch(run_id, params=params)
    dataset = shard_set_input(cfg.shards, cfg.split, manifest, manifest_sha, "evaluation")
    models = [LoggedModelInput(model_id)] if model_id else None
    client.log_inputs(run_id, datasets=[dataset], models=models)
    now = int(time.time() * 1000)
    link = {"model_id": model_id, **dataset_key(dataset)}
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0, **link) for k, v in metrics.items()]
    )
    client.log_dict(run_id, manifest, "dataset/manifest.json")
    for name in artifacts:
        client.log_artifact(run_id, str(out / name), ARTIFACT_DIR)
    if (out / "images").is_dir():
        client.log_artifacts(run_id, str(out / "images"), f"{ARTIFACT_DIR}/images")
