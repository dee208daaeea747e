"""Registry operations for ``clipsr promote``, through ``mlflow.MlflowClient`` only.

- Aliases are read from ``get_registered_model(name).aliases`` (a dict alias -> version), never
  by catching "alias not found" errors nor from ``latest_versions`` (which carries no aliases,
  mlflow#9952); "does not exist" is recognised by the error code, not the message.
- Audit tags (``clipsr.promote.*``) go on the model version *before* the alias moves, so the
  champion always carries the tags that a rollback reads.
- :func:`verify_version_artifacts` downloads a version and checks its checkpoint (manifest, every
  part's sha256, the config) without building the model.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
PREFIX = "clipsr.promote."
TAG_ACTION = PREFIX + "action"  # promoted | first_champion
TAG_ALIAS = PREFIX + "alias"
TAG_PREVIOUS = PREFIX + "previous_champion"  # a version, or "none"
TAG_GATES = PREFIX + "gates"  # JSON list of gate results
TAG_REASON = PREFIX + "reason"
TAG_AT = PREFIX + "at"  # UTC ISO 8601
TAG_BY = PREFIX + "by"
TAG_MANIFEST = PREFIX + "manifest_sha256"
TAG_CANDIDATE_RUN = PREFIX + "candidate_eval_run"
TAG_CHAMPION_RUN = PREFIX + "champion_eval_run"  # or "none"
# rollback: on the restored version (from/at) and on the version it replaced (to/at)
TAG_RB_FROM = PREFIX + "rolled_back_from"
TAG_RB_TO = PREFIX + "rolled_back_to"
TAG_RB_AT = PREFIX + "rolled_back_at"
TAG_RB_BY = PREFIX + "rolled_back_by"
TAG_RB_REASON = PREFIX + "rollback_reason"
NONE = "none"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class RegistryError(RuntimeError):
    """The registered model or version does not exist (exit code 2)."""


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def who() -> str:
    """The user for the audit tags: ``CLIPSR_USER`` (e.g. a CI job's actor), else the login
    name (``getpass.getuser()``: LOGNAME, USER, LNAME, USERNAME, else the password database)."""
    try:
        return os.environ.get("CLIPSR_USER") or getpass.getuser()
    except (OSError, KeyError):  # no name in the environment nor in the password database
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", None) == NOT_FOUND


def get_model(client: Any, name: str) -> Any:
    """The RegisteredModel ``name``; :class:`RegistryError` if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if _not_found(err):
            raise RegistryError(
                f"no registered model named {name!r} on this tracking server "
                "(list them with MlflowClient().search_registered_models())"
            ) from None
        raise


def get_version(client: Any, name: str, version: str) -> Any:
    """The ModelVersion; :class:`RegistryError` naming the existing versions if it is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if not _not_found(err):
            raise
    found = sorted(
        (str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int
    )  # MLflow returns the versions as integers here
    raise RegistryError(
        f"model {name!r} has no version {version} (versions: {', '.join(found) or 'none'})"
    )


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None when the alias is not set."""
    version = get_model(client, name).aliases.get(alias)
    return None if version is None else str(version)


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    client.set_registered_model_alias(name, alias, str(version))


def delete_alias(client: Any, name: str, alias: str) -> None:
    if alias_version(client, name, alias) is not None:
        client.delete_registered_model_alias(name, alias)


def version_tags(client: Any, name: str, version: str) -> dict[str, str]:
    return dict(get_version(client, name, version).tags)


def set_tags(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def restore_tags(client: Any, name: str, version: str, old: dict[str, str], keys: list) -> None:
    """Put ``keys`` back as they were in ``old`` (deleting those that were not there)."""
    for key in keys:
        if key in old:
            client.set_model_version_tag(name, str(version), key, old[key])
        else:
            client.delete_model_version_tag(name, str(version), key)


def move_alias(
    client: Any,
    name: str,
    alias: str,
    version: str,
    expected: str | None,
    tags: dict[str, str],
) -> None:
    """Write ``tags`` on ``version``, then point ``alias`` at it, if the alias still points at
    ``expected`` (another promotion in between is refused, and the tags are put back)."""
    old = version_tags(client, name, version)
    set_tags(client, name, version, tags)
    current = alias_version(client, name, alias)
    if current != expected:
        restore_tags(client, name, version, old, list(tags))
        raise RuntimeError(
            f"{name}@{alias} moved from {expected or 'nothing'} to {current} while promoting; "
            "nothing was changed, run the command again"
        )
    try:
        set_alias(client, name, alias, version)
    except Exception:
        restore_tags(client, name, version, old, list(tags))
        raise


def rollback_tags(restored: str, demoted: str, reason: str) -> tuple[dict, dict]:
    """(tags for the restored version, tags for the demoted one)."""
    at, by = now_utc(), who()
    common = {TAG_RB_AT: at, TAG_RB_BY: by, TAG_RB_REASON: reason}
    return {TAG_RB_FROM: demoted, **common}, {TAG_RB_TO: restored, **common}


def _checkpoint_dir(model_dir: Path, uri: str) -> Path:
    from jobs.tracking import checkpoint_in

    return checkpoint_in(model_dir, uri)


def verify_version_artifacts(tracking_uri: str, name: str, version: str) -> None:
    """Download ``models:/name/version`` and check its checkpoint: the manifest, every part's
    file and sha256, the config. Raise :class:`CheckpointError` naming the URI and the problem."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from clipsr.checkpoint import CheckpointError, load_config_from_checkpoint, read_manifest
    from clipsr.shards import sha256_file

    uri = f"models:/{name}/{version}"
    dst = tempfile.mkdtemp(prefix="clipsr-promote-")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    bar = os.environ.get(PROGRESS_BAR)
    os.environ.setdefault(PROGRESS_BAR, "false")  # a check, not a download to watch
    try:
        try:  # models:/ URIs resolve against the global URIs
            mlflow.set_tracking_uri(tracking_uri)
            path = Path(mlflow.artifacts.download_artifacts(uri, dst_path=dst))
        except (MlflowException, OSError) as err:
            message = getattr(err, "message", None) or str(err)
            raise CheckpointError(f"{uri}: cannot download its artifacts ({message})") from None
        checkpoint = _checkpoint_dir(path, uri)
        try:
            manifest = read_manifest(checkpoint)
            for part, entry in sorted(manifest["parts"].items()):
                file = checkpoint / entry["file"]
                if not file.is_file():
                    raise CheckpointError(f"{part} weights file {entry['file']} is missing")
                if sha256_file(file) != entry["sha256"]:
                    raise CheckpointError(
                        f"{entry['file']}: sha256 mismatch, the file is corrupt or was modified"
                    )
            load_config_from_checkpoint(checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"{uri}: {str(err).replace(str(checkpoint), '.')}") from None
    finally:
        mlflow.set_tracking_uri(saved)
        if bar is None:
            os.environ.pop(PROGRESS_BAR, None)
        shutil.rmtree(dst, ignore_errors=True)
