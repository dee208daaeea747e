"""MLflow tracking and registry for the training and evaluation jobs (call from rank 0 only).

- :func:`resolve_tracking_uri`: the configured URI, else ``MLFLOW_TRACKING_URI``, else an embedded
  sqlite store in the storage root (one per root, shared by its runs); :func:`default_tracking_uri`
  is what the commands after ``clipsr train`` use without flags; :func:`check_tracking_uri` fails
  fast on a dead server; :func:`run_link` says where to see a run.
- :class:`RunTracker`: one MLflow run per training run name; a restarted job resumes it.
- :func:`log_generator_model`: a checkpoint as a pyfunc *from code* (safetensors + config, no
  pickle), registered with version tags; :func:`load_resolver` reads it back with clipsr's loader.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from clipsr.checkpoint import CheckpointError, read_manifest
from clipsr.config_loader import flatten
from clipsr.inference import SuperResolver

RUN_NAME_TAG = "clipsr.run_name"
# A rerun with the same run name continues its training (Ray resumes the latest checkpoint),
# so it continues the same MLflow run too, whatever that run's status.
RESUMABLE = ("RUNNING", "FAILED", "KILLED", "FINISHED")
PYFUNC_FILE = Path(__file__).resolve().with_name("mlflow_pyfunc.py")
CLIPSR_DIR = Path(__file__).resolve().parents[1] / "clipsr"
PINNED = ["torch==2.14.1", "torchvision==0.29.1", "open_clip_torch==3.3.0"]
UNPINNED = ["safetensors", "numpy", "pillow", "pyyaml", "pandas"]
MAX_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH


# The embedded store of `clipsr train` under its default storage root (run.storage_path: runs).
DEFAULT_STORE = Path("runs") / "mlflow.db"


class TrackingUnavailable(RuntimeError):
    """The configured MLflow tracking server does not answer."""


class ModelNotFound(RuntimeError):
    """A model URI names no model, version or alias (or its artifacts cannot be fetched)."""


def resolve_tracking_uri(configured: str, run_dir: str | Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments): ``configured``, else
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///<run_dir>/mlflow.db`` with artifacts in
    ``<run_dir>/mlartifacts``. A sqlite URI keeps its artifacts beside the database."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri and "://" in str(run_dir):
        raise ValueError(
            f"the embedded MLflow store needs a local run directory, not {run_dir}: "
            "set the tracking URI (config or MLFLOW_TRACKING_URI) to an MLflow server"
        )
    if not uri:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
    if not uri.startswith("sqlite:///"):
        return uri, None
    db = Path(uri.removeprefix("sqlite:///")).resolve()  # absolute: workers run elsewhere
    return f"sqlite:///{db}", (db.parent / "mlartifacts").as_uri()


def default_tracking_uri(configured: str = "") -> str:
    """``configured``, else ``MLFLOW_TRACKING_URI``, else the embedded store that ``clipsr train``
    makes under its default storage root (``./runs/mlflow.db``) when it exists, else ``""``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri and DEFAULT_STORE.is_file():
        uri = f"sqlite:///{DEFAULT_STORE.resolve()}"
    return uri


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> tuple[str, str]:
    """(URL of a run's page, the command that serves it first or ""): the server's page, or for
    an embedded store the page that ``mlflow ui`` serves on 127.0.0.1:5000."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}", ""
    serve = f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    return f"http://127.0.0.1:5000/{page}", serve


def run_link(tracking_uri: str, experiment_id: str, run_id: str | None) -> str:
    """Where to open a run, in one line (see :func:`run_page`)."""
    if not run_id:
        return "none"
    url, serve = run_page(tracking_uri, experiment_id, run_id)
    return f"{serve}, then {url}" if serve else url


def check_tracking_uri(uri: str, timeout_s: float = 10) -> None:
    """Raise :class:`TrackingUnavailable` unless the http(s) tracking server at ``uri`` answers."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    error: Exception | None = None
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout_s):
                return
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):  # it answers; credentials are MLflow's business
                return
            error = err
        except (urllib.error.URLError, OSError) as err:
            error = err
            break  # nothing listens there: no point trying another path
    raise TrackingUnavailable(
        f"MLflow tracking server {uri} is not reachable ({error}). Start one, e.g. `mlflow server"
        " --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`, or unset the "
        "tracking URI (config and MLFLOW_TRACKING_URI) to use the embedded store in the run dir."
    )


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class RunTracker:
    """One MLflow run: params, metrics, artifacts, system metrics; resumable by run name."""

    def __init__(self, tracking_uri: str):
        import mlflow

        self.tracking_uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri)
        self.run_id: str | None = None

    def start(
        self,
        experiment: str,
        run_name: str,
        params: dict,
        artifact_location: str | None,
        tags: dict | None = None,
        run_id: str | None = None,
        system_metrics: bool = True,
    ) -> str:
        """Start (or resume ``run_id``, or the latest unfinished run tagged with ``run_name``)
        and log ``params`` flattened to dotted keys; returns the run id."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)  # for start_run (it also sets the env var)
        exp = self.client.get_experiment_by_name(experiment)
        create = self.client.create_experiment
        exp_id = exp.experiment_id if exp else create(experiment, artifact_location)
        run_id = run_id or self._resumable(exp_id, run_name)
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else exp_id,
            run_name=run_name,
            tags={RUN_NAME_TAG: run_name, **(tags or {})},
            log_system_metrics=system_metrics,
        )
        self.run_id = run.info.run_id
        self.log_params(params)
        return self.run_id

    def _resumable(self, experiment_id: str, run_name: str) -> str | None:
        quoted = f'"{run_name}"' if "'" in run_name else f"'{run_name}'"
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{RUN_NAME_TAG}` = {quoted}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs and runs[0].info.status in RESUMABLE else None

    def log_params(self, params: dict) -> None:
        """Flattened, stringified params in batches; on a resumed run, values already logged are
        skipped and changed ones are warned about (MLflow params are immutable)."""
        from mlflow.entities import Param

        logged = self.client.get_run(self._id).data.params
        values = {k: _param_value(v) for k, v in flatten(params).items()}
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            warnings.warn(f"run {self._id}: params kept: {', '.join(changed)}", stacklevel=2)
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self._id, params=new[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self._id, metrics=rows)  # up to 1000 per batch

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a directory (its contents) under ``artifact_path``."""
        log = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
        log(self._id, str(path), artifact_path)

    def log_dict(self, d: dict, name: str) -> None:
        self.client.log_dict(self._id, d, name)

    def log_image(self, pil_image: Any, name: str) -> None:
        self.client.log_image(self._id, pil_image, artifact_file=name)

    def end(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED`` or ``FAILED``; a ``FAILED`` run is resumed next start)."""
        import mlflow

        if self.run_id is not None:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)  # also stops the system metrics monitor
            else:
                self.client.set_terminated(self.run_id, status)
            self.run_id = None

    @property
    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("RunTracker.start() has not been called")
        return self.run_id


def _pin(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def log_generator_model(
    checkpoint_dir: str | Path,
    registered_name: str | None,
    tags: dict[str, str],
    artifact_path: str = "model",
) -> tuple[str, str | None]:
    """Log ``checkpoint_dir`` as a pyfunc from code (into the active run, if any), register it
    as a new version of ``registered_name`` with ``tags``; returns (model URI, version)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    manifest = read_manifest(checkpoint_dir)  # refuse an incomplete checkpoint up front
    signature = ModelSignature(  # what jobs/mlflow_pyfunc.py takes and returns
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "caption")]),
        outputs=Schema([ColSpec("binary", "sr_png")]),
        params=ParamSchema([ParamSpec("scale", "long", int(manifest["scale"]))]),
    )
    tags = {k: str(v) for k, v in tags.items()}
    with warnings.catch_warnings():  # the signature is given; an example would run the model
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=str(PYFUNC_FILE),
            artifacts={"checkpoint": str(Path(checkpoint_dir).resolve())},
            code_paths=[str(CLIPSR_DIR)],
            pip_requirements=PINNED + [_pin(name) for name in UNPINNED],
            signature=signature,
            registered_model_name=registered_name,
            tags=tags,
        )
    version = None if info.registered_model_version is None else str(info.registered_model_version)
    for key, value in tags.items() if registered_name and version else ():
        mlflow.MlflowClient().set_model_version_tag(registered_name, version, key, value)
    return info.model_uri, version


def checkpoint_in(model_dir: Path, model_uri: str) -> Path:
    """The checkpoint directory of a downloaded pyfunc model (or ``model_dir`` itself)."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        if (model_dir / "checkpoint.json").is_file():
            return model_dir
        raise CheckpointError(f"{model_uri}: neither an MLflow model nor a clipsr checkpoint")
    try:
        flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
        rel = flavor["artifacts"]["checkpoint"]["path"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise CheckpointError(f"{model_uri}: not a clipsr model (no checkpoint)") from None
    path = (model_dir / rel).resolve()
    if model_dir.resolve() not in path.parents:
        raise CheckpointError(f"{model_uri}: checkpoint path {rel!r} leaves the model directory")
    if not path.is_dir():
        raise CheckpointError(f"{model_uri}: its checkpoint artifact {rel} is missing")
    return path


def load_resolver(
    model_uri: str, device: str | None = None, *, tracking_uri: str | None = None
) -> SuperResolver:
    """A :class:`SuperResolver` from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/...``, another artifact URI or a local checkpoint/model directory; ``tracking_uri``
    (also the registry) defaults to MLflow's current one."""
    local = Path(model_uri.removeprefix("file://"))
    if model_uri.startswith("file://") or ("://" not in model_uri and ":/" not in model_uri):
        if not local.exists():
            raise CheckpointError(f"checkpoint directory not found: {local}")
        return SuperResolver.from_checkpoint(checkpoint_in(local, model_uri), device)
    import mlflow
    from mlflow.exceptions import MlflowException

    registry = model_uri.startswith(("models:", "runs:"))  # without a URI: a new ./mlflow.db
    if registry and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ModelNotFound(f"{model_uri}: no tracking URI (pass one or set MLFLOW_TRACKING_URI)")
    dst = tempfile.mkdtemp(prefix="clipsr-model-")
    saved = os.environ.get("MLFLOW_TRACKING_URI")  # what set_tracking_uri(None) would drop
    try:
        try:  # models:/ URIs resolve against the global URIs whatever download_artifacts is told
            if tracking_uri:
                mlflow.set_tracking_uri(tracking_uri)
            path = mlflow.artifacts.download_artifacts(model_uri, dst_path=dst)
        except (MlflowException, OSError) as err:
            message = getattr(err, "message", None) or str(err)
            raise ModelNotFound(f"cannot fetch model {model_uri}: {message}") from None
        checkpoint = checkpoint_in(Path(path), model_uri)
        try:
            return SuperResolver.from_checkpoint(checkpoint, device)
        except CheckpointError as err:
            raise CheckpointError(f"{model_uri}: {err}") from None
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(saved)
        shutil.rmtree(dst, ignore_errors=True)
