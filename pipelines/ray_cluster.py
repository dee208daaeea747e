"""Connecting the jobs to Ray: one ``init_ray`` for every job, loopback-only for local clusters.

Ray 2.60 rewrites ``127.0.0.1`` to the host's network address wherever it meets it (the address
to join, ``ray start --node-ip-address``, ``ray.init(_node_ip_address=...)``) unless its
"local only" flag is off, the flag that ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets for a whole
environment (and with it refuses ``ray start --address``, i.e. every multi-node cluster). So
instead of that variable, :func:`init_ray` turns the flag off in the driver process only, and
only when the cluster is on this machine's loopback: a local Ray it starts itself, or an
address on 127.0.0.1 (``infra/local/services.sh``'s head and the nodes of ``add-node``). Ray's
processes then bind 127.0.0.1 and advertise it. Any other address (a real cluster, ``ray://``)
goes to Ray unchanged.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

LOOPBACK = "127.0.0.1"


def cluster_address(configured: str = "") -> str:
    """The address a job connects to: the configured one, else ``RAY_ADDRESS``, else ""
    (a new local Ray)."""
    return (configured or os.environ.get("RAY_ADDRESS", "")).strip()


def is_loopback(address: str) -> bool:
    """True for "" (a Ray started here) and for ``host:port`` with a loopback host."""
    if not address:
        return True
    if "://" in address or address in ("auto", "local"):
        return address == "local"
    if address.startswith("["):  # [IPv6]:port
        host = address[1:].partition("]")[0]
    else:
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_only() -> None:
    """Ray's own "local only" switch, for this process (see the module docstring)."""
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str = "", **kwargs: Any):
    """``ray.init`` for a job, unless Ray is already initialised; returns the ``ray`` module.

    ``address``: "" means ``RAY_ADDRESS`` or else a new local Ray (then without the dashboard,
    which a one-job Ray has no use for). Loopback clusters are joined on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return ray
    address = cluster_address(address)
    if is_loopback(address):
        _loopback_only()
        kwargs.setdefault("_node_ip_address", LOOPBACK)
        if not address or address == "local":
            kwargs.setdefault("include_dashboard", False)
    ray.init(address=address or None, **kwargs)
    return ray


def alive_nodes(ray: Any) -> list[dict]:
    """The cluster's alive nodes (``ray.nodes()`` entries)."""
    return [n for n in ray.nodes() if n.get("Alive")]
