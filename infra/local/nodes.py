"""``services.sh add-node``: more Ray nodes on 127.0.0.1 that join the local head.

Each node is ``ray_node.py worker`` in its own process group (``<state>/node-N.pid``, log
``<state>/logs/node-N.log``) with its own CPUs, custom resources and Ray temp dir. ``--hide DIR``
starts it in a private mount namespace (``unshare --mount``, needs root) with an empty directory
mounted over DIR, so that the node cannot see the head's files there, as a second machine could
not. ``down`` stops the nodes before the head.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from procs import HOST, log, running_group, stop_group

NODE_SCRIPT = Path(__file__).resolve().with_name("ray_node.py")
MARKER = "ray_node.py"
STARTED = "Ray runtime started"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="services.sh add-node", description=__doc__.split("\n")[0])
    p.add_argument("--num-cpus", type=int, default=1, help="CPUs the node offers (1)")
    p.add_argument("--resources", default="{}", help="custom resources, JSON: '{\"big\": 1}'")
    p.add_argument("--hide", action="append", default=[], metavar="DIR", help="hide DIR")
    args = p.parse_args(argv)
    try:
        resources = json.loads(args.resources)
        if not isinstance(resources, dict):
            raise ValueError
    except ValueError:
        p.error(f"--resources: {args.resources!r} is not a JSON object")
    args.resources = resources
    if args.num_cpus < 0:
        p.error("--num-cpus: must be >= 0")
    for path in args.hide:
        if not Path(path).is_dir():
            p.error(f"--hide: {path} is not a directory")
    return args


def node_names(state: Path) -> list[str]:
    return sorted((p.stem for p in state.glob("node-*.pid")), key=lambda n: int(n[5:]))


def hidden(cmd: list[str], dirs: list[str], empty: Path) -> list[str]:
    """``cmd`` in a private mount namespace with ``empty`` mounted over each of ``dirs``."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(empty))} {shlex.quote(str(Path(d).resolve()))}"
        for d in dirs
    )
    script = f"{mounts} && exec {shlex.join(cmd)}"
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]


def check_unshare() -> None:
    try:
        res = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        raise SystemExit(f"services: --hide needs 'unshare' (util-linux): {err}") from None
    if res.returncode:
        raise SystemExit(
            "services: --hide needs a private mount namespace ('unshare --mount'), which this "
            f"user may not create: {res.stderr.decode().strip()}; run as root or drop --hide"
        )


def add_node(cfg, argv: list[str], ray_port: int, temp_base: str, spawn: Callable) -> int:
    """Start one more node against the running head; prints its name (node-N)."""
    args = parse(argv)
    if running_group(cfg.state / "ray.pid", "ray") is None:
        log("the Ray head is not running: 'infra/local/services.sh up' first")
        return 1
    if args.hide:
        check_unshare()
    names = node_names(cfg.state)
    index = 1 + max((int(n[5:]) for n in names), default=0)
    name = f"node-{index}"
    cmd = [
        sys.executable, str(NODE_SCRIPT), "worker", "--address", f"{HOST}:{ray_port}",
        "--temp-dir", f"{temp_base}-n{index}", "--num-cpus", str(args.num_cpus),
        "--resources", json.dumps(args.resources),
    ]  # fmt: skip
    if args.hide:
        empty = cfg.state / name / "empty"
        empty.mkdir(parents=True, exist_ok=True)
        cmd = hidden(cmd, args.hide, empty)
    proc = spawn(cfg, name, cmd)
    log_path = cfg.state / "logs" / f"{name}.log"
    deadline = time.monotonic() + cfg.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            log(f"{name} exited with code {proc.returncode}\n--- {log_path} (tail) ---\n{tail}")
            (cfg.state / f"{name}.pid").unlink(missing_ok=True)
            return 1
        if STARTED in log_path.read_text(errors="replace"):
            extra = f", hiding {', '.join(args.hide)}" if args.hide else ""
            log(f"{name}: Ray node up on {HOST}, {args.num_cpus} CPU(s){extra}")
            print(name)
            return 0
        time.sleep(0.3)
    log(f"{name} did not start within {cfg.timeout_s:.0f}s; stopping it (log: {log_path})")
    stop_group(name, proc.pid, timeout_s=30, leader_only=True)
    (cfg.state / f"{name}.pid").unlink(missing_ok=True)
    return 1


def stop_nodes(cfg) -> int:
    stopped = 0
    for name in reversed(node_names(cfg.state)):
        pgid = running_group(cfg.state / f"{name}.pid", MARKER)
        if pgid is not None:
            stop_group(name, pgid, timeout_s=40, leader_only=True)
            log(f"{name}: stopped (process group {pgid})")
            stopped += 1
        (cfg.state / f"{name}.pid").unlink(missing_ok=True)
    return stopped


def node_status(cfg) -> list[tuple[str, bool, str]]:
    """(name, running, line) for each added node."""
    out = []
    for name in node_names(cfg.state):
        pgid = running_group(cfg.state / f"{name}.pid", MARKER)
        state = f"up (process group {pgid})" if pgid else "stopped"
        out.append((name, pgid is not None, f"{name:<7} {state:<34} {HOST}  Ray node"))
    return out
