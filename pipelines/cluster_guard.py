"""Guardrails of every job on a multi-node Ray cluster, checked before any work starts.

On a cluster of more than one alive node, Ray runs tasks, actors and training ranks wherever it
has room, and a local path names a different directory on each node: a job would then fail
late, or worse, scatter its output over the nodes' disks. So each job lists the paths its
workers read (:class:`WorkerPath` ``writes=False``) and write (``writes=True``), and the tracking
store its workers log to, and :func:`check_cluster_paths` refuses local ones (naming the config
key and what to use instead) unless the job's ``shared_filesystem`` switch declares that local
paths are a filesystem mounted at the same place on every node. That declaration is verified:
a marker file written by the driver into each written directory must be read back with the same
content by a task on every node, and every read path must look the same (type, size, mtime)
from every node. One node (or object-store URIs only): nothing to check.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.ray_cluster import alive_nodes

STORES = "an object store (s3://bucket/prefix, gs://bucket/prefix or abfs://...)"
MARKER_PREFIX = ".clipsr-shared-check-"
PROBE_TIMEOUT_S = 300.0  # generous: a busy node may take long to start a worker


class SharedStorageError(ValueError):
    """A local path (or tracking store) that the workers on other nodes cannot reach."""


@dataclass(frozen=True)
class WorkerPath:
    """A path the job's workers use: ``key`` names it in the config (or the CLI flag)."""

    key: str
    uri: str
    writes: bool = False


def local_path(uri: str) -> str:
    """``uri`` when it is a local path (a model directory, say), else "" (registry, stores)."""
    return "" if "://" in uri or ":/" in uri else uri


def local_tracking_path(tracking_uri: str) -> str | None:
    """The local file/dir behind a ``sqlite:`` or ``file:`` (or plain path) MLflow store."""
    if tracking_uri.startswith("sqlite:"):  # sqlite:///relative or sqlite:////absolute
        return tracking_uri.removeprefix("sqlite:///") or None
    if tracking_uri.startswith("file:"):
        return tracking_uri.removeprefix("file:").removeprefix("//") or None
    if tracking_uri and "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        return tracking_uri
    return None


def check_cluster_paths(
    ray: Any,
    switch: str,
    shared_filesystem: bool,
    reads: dict[str, str | None],
    writes: dict[str, str | None],
    tracking_uri: str | None = None,
    tracking_key: str = "tracking.tracking_uri",
) -> int:
    """Refuse what the workers of a multi-node cluster cannot share (module docstring);
    returns the number of alive nodes. ``reads``/``writes``: config key (or CLI flag) -> path
    the workers read/write ("" or None: unused); ``switch``: the job's shared-filesystem key;
    ``tracking_uri``: the MLflow store the workers log to, if they do."""
    paths = [WorkerPath(k, v) for k, v in reads.items() if v]
    paths += [WorkerPath(k, v, writes=True) for k, v in writes.items() if v]
    nodes = alive_nodes(ray)
    if len(nodes) < 2:
        return len(nodes)
    local = [p for p in paths if not storage.is_remote(p.uri)]
    store = local_tracking_path(tracking_uri) if tracking_uri is not None else None
    if not shared_filesystem:
        where = f"the Ray cluster has {len(nodes)} alive nodes and each has its own disk"
        hint = f"or, if it is on a filesystem mounted at the same path on every node, {switch}=true"
        if local:
            p = local[0]
            raise SharedStorageError(
                f"{p.key}: {p.uri} is a local path, but {where}; use {STORES} ({hint})"
            )
        if store is not None:
            raise SharedStorageError(
                f"{tracking_key}: the MLflow store {tracking_uri or '(embedded sqlite)'} is a "
                f"local file that the training workers on other nodes cannot reach, but {where};"
                f" use an MLflow server (http://HOST:PORT, or MLFLOW_TRACKING_URI) ({hint})"
            )
        return len(nodes)
    if store is not None:
        local.append(WorkerPath(tracking_key, os.path.dirname(store) or ".", writes=True))
    verify_shared(ray, nodes, local, switch)
    return len(nodes)


def _signature(path: str) -> list:
    """What every node must see the same of ``path``."""
    try:
        st = os.stat(path)
    except OSError as err:
        return ["missing", type(err).__name__]
    kind = "dir" if os.path.isdir(path) else "file"
    return [kind, 0 if kind == "dir" else st.st_size, st.st_mtime_ns]


def _probe(checks: list[list]) -> list[list]:
    """On one node: each check's view, ``[path, what it read or its signature]``."""
    out = []
    for path, is_marker in checks:
        if is_marker:
            try:
                with open(path, encoding="utf-8") as f:
                    out.append([path, f.read()])
            except OSError as err:
                out.append([path, f"unreadable ({type(err).__name__})"])
        else:
            out.append([path, _signature(path)])
    return out


def verify_shared(ray: Any, nodes: list[dict], paths: list[WorkerPath], switch: str) -> None:
    """Marker files in the written directories and the signatures of the read paths, seen the
    same from every node; raise :class:`SharedStorageError` naming the first difference."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not paths:
        return
    token = uuid.uuid4().hex
    checks, expected, markers = [], {}, []
    for p in paths:
        path = os.path.abspath(p.uri)
        if p.writes:
            os.makedirs(path, exist_ok=True)
            marker = os.path.join(path, f"{MARKER_PREFIX}{token}")
            with open(marker, "w", encoding="utf-8") as f:
                f.write(token)
            markers.append(marker)
            checks.append([marker, True])
            expected[marker] = (p, token)
        else:
            checks.append([path, False])
            expected[path] = (p, _signature(path))
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        refs = {
            n["NodeID"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(checks)
            for n in nodes
        }
        seen = {node: ray.get(ref, timeout=PROBE_TIMEOUT_S) for node, ref in refs.items()}
    finally:
        for marker in markers:
            storage.delete(marker)
    for node, views in seen.items():
        for path, view in views:
            p, want = expected[path]
            if view != want:
                raise SharedStorageError(
                    f"{p.key}: {p.uri} is not shared: node {node[:12]} does not see what the "
                    f"driver sees there ({switch}=true declares a filesystem mounted at the same "
                    f"path on every node); use {STORES}, or mount it on every node"
                )
