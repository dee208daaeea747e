"""One Ray node on 127.0.0.1, in the foreground: the local head, or a node joining it.

    python infra/local/ray_node.py head   --port 6379 --temp-dir DIR [--num-cpus N]
                                          [--dashboard-port P]
    python infra/local/ray_node.py worker --address 127.0.0.1:6379 --temp-dir DIR [--num-cpus N]
                                          [--resources '{"name": 1}']

Ray 2.60's ``ray start`` rewrites ``--node-ip-address=127.0.0.1`` (and a 127.0.0.1 ``--address``)
to the host's network address, and refuses to join a cluster at all when told to stay local
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). Ray's node API, which ``ray start`` and
``ray.cluster_utils.Cluster`` use underneath, takes the address as given: nodes started here
advertise 127.0.0.1 and their servers listen there only. Like ``ray start --block``, this
process stays in the foreground, stops its node on SIGTERM, and stops the rest of the node
and exits 1 when one of the node's processes dies (a killed raylet: the node is gone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

HOST = "127.0.0.1"
STARTED = "Ray runtime started"  # what infra/local/services.py waits for in the log


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ray_node.py", description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=("head", "worker"))
    p.add_argument("--port", type=int, help="head: the GCS port")
    p.add_argument("--address", help="worker: the head's GCS address (127.0.0.1:PORT)")
    p.add_argument("--temp-dir", required=True, help="this node's Ray temp dir (short path)")
    p.add_argument("--num-cpus", type=float, help="CPUs this node offers (default: all)")
    p.add_argument("--resources", default="{}", help="custom resources, JSON")
    p.add_argument("--dashboard-port", type=int, help="head: serve the dashboard (job server)")
    args = p.parse_args(argv)
    if (args.role == "head") != (args.port is not None) or (args.role == "worker") != bool(
        args.address
    ):
        p.error("head needs --port, worker needs --address")
    return args


def ray_params(args: argparse.Namespace):
    from ray._private.parameter import RayParams

    params = RayParams(
        node_ip_address=HOST,
        node_name=f"{HOST}-{args.role}-{os.getpid()}",
        num_cpus=None if args.num_cpus is None else int(args.num_cpus),
        resources=json.loads(args.resources) or None,
        temp_dir=os.path.abspath(args.temp_dir),
        include_log_monitor=True,
    )
    if args.role == "head":
        params.gcs_server_port = args.port
        params.include_dashboard = args.dashboard_port is not None
        if args.dashboard_port is not None:
            params.dashboard_host = HOST
            params.dashboard_port = args.dashboard_port
    else:
        params.gcs_address = args.address
        params.node_manager_port = 0
        params.dashboard_agent_listen_port = None  # a random one: the head's is taken
    return params


def main(argv: list[str]) -> int:
    args = parse(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray._private.node
    import ray._private.utils

    node = ray._private.node.Node(
        ray_params(args), head=args.role == "head", shutdown_at_exit=True, spawn_reaper=True
    )
    if args.role == "head":
        ray._private.utils.write_ray_address(node.gcs_address, node.get_temp_dir_path())
    print(
        f"{STARTED}: {args.role} node {node.node_id} on {HOST}, GCS {node.gcs_address}, "
        f"session {node.get_session_dir_path()}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # atexit stops the node's processes
    expected = (0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM)
    while True:
        time.sleep(1)
        dead = [(kind, p) for kind, p in node.dead_processes() if p.returncode not in expected]
        if dead:
            names = ", ".join(f"{kind} (exit code {p.returncode})" for kind, p in dead)
            print(f"ray node: {names} died; stopping this node", flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
