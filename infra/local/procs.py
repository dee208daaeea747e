"""Process groups and ports of the local services (standard library and psutil only)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil

HOST = "127.0.0.1"
# Ray's default worker-port range (`ray start --min-worker-port/--max-worker-port`): Ray's
# workers take ports there at any time, so no service of ours may listen inside it.
RAY_WORKER_PORTS = (10002, 19999)


def log(msg: str) -> None:
    print(f"services: {msg}", file=sys.stderr, flush=True)


def check_port(var: str, value: str) -> int:
    """The port in ``value`` (from ``var``), or SystemExit naming the variable and the fix."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"services: {var}={value!r} is not a port number (1..65535)")
    low, high = RAY_WORKER_PORTS
    if low <= int(value) <= high:
        raise SystemExit(
            f"services: {var}={value} lies in Ray's worker-port range {low}-{high}, where Ray "
            f"starts its workers at any time; choose a port outside it (below {low} or above "
            f"{high})"
        )
    return int(value)


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def running_group(pid_path: Path, marker: str) -> int | None:
    """The process group recorded in ``pid_path`` if one of its members' command lines still
    names ``marker``, else None."""
    try:
        pgid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    for proc in group_members(pgid):
        try:
            if any(marker in part for part in proc.cmdline()):
                return pgid
        except psutil.Error:
            continue
    return None


def stop_group(name: str, pgid: int, timeout_s: float, leader_only: bool = False) -> None:
    """SIGTERM the group (or only its leader, which then stops its own processes in order),
    wait, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        if leader_only:
            os.kill(pgid, signal.SIGTERM)
        else:
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        log(f"{name}: still running after {timeout_s:.0f}s, killing process group {pgid}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid
            if listening and conn.laddr.port == port:
                return f" (by pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def free_port_after(port: int) -> int:
    """A free port above ``port`` (and outside Ray's worker-port range), or 0."""
    low, high = RAY_WORKER_PORTS
    return next(
        (p for p in range(port + 1, port + 100) if not low <= p <= high and port_free(p)), 0
    )
