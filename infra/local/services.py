"""Local services for clipsr on 127.0.0.1: an S3-compatible store, an MLflow server, a Ray head.

    infra/local/services.sh up | down | status | add-node [--num-cpus N] [--hide DIR]

``up`` starts what is not running yet, waits until each service answers, creates the bucket and
prints the environment to use (also written to ``<state>/env.sh``: ``source .services/env.sh``).
``down`` stops every process group it started (idempotent); ``status`` reports each service and
exits non-zero unless all are up. Settings come from the environment (see ``Settings``).

- S3: ``moto_server`` (in memory: a new ``up`` of the store starts with an empty bucket, and
  then with a new MLflow store too, so that runs never point at lost artifacts).
- MLflow: ``mlflow server``, sqlite store in the state dir, artifacts proxied to
  ``s3://<bucket>/mlartifacts`` on the local store.
- Ray: a head node on 127.0.0.1 (``ray_node.py head``, see there why not ``ray start``) with
  the same S3/MLflow environment, so that Ray workers reach the services too. Drivers connect
  with ``RAY_ADDRESS`` (GCS address). ``add-node`` joins more nodes to it (``nodes.py``).

Nothing here imports the product: only the standard library, psutil and boto3 (the venv's).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nodes import add_node, node_status, stop_nodes
from procs import (
    HOST,
    check_port,
    free_port_after,
    log,
    port_free,
    port_owner,
    running_group,
    stop_group,
)

ROOT = Path(__file__).resolve().parents[2]
# Fake credentials: the local moto store accepts any; never real keys.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "clipsr-local",
    "AWS_SECRET_ACCESS_KEY": "clipsr-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


PORT_VARS = {"s3": "CLIPSR_S3_PORT", "mlflow": "CLIPSR_MLFLOW_PORT", "ray": "CLIPSR_RAY_PORT"}
DEFAULT_PORTS = {"s3": 9000, "mlflow": 5000, "ray": 6379}


@dataclass(frozen=True)
class Settings:
    """From the environment: CLIPSR_SERVICES_DIR (state dir, default .services/), the ports
    (PORT_VARS), CLIPSR_S3_BUCKET, CLIPSR_SERVICES_TIMEOUT (s), CLIPSR_RAY_NUM_CPUS and
    CLIPSR_RAY_TEMP_DIR (default: <state>/ray when short enough for Ray's socket paths)."""

    state: Path
    ports: dict[str, int]
    bucket: str
    timeout_s: float
    ray_num_cpus: str
    ray_temp_dir: str

    @classmethod
    def from_env(cls) -> Settings:
        env, ports = os.environ, {}
        for name, var in PORT_VARS.items():
            ports[name] = check_port(var, env.get(var, str(DEFAULT_PORTS[name])))
        return cls(
            state=Path(env.get("CLIPSR_SERVICES_DIR") or ROOT / ".services").absolute(),
            ports=ports,
            bucket=env.get("CLIPSR_S3_BUCKET", "clipsr"),
            timeout_s=float(env.get("CLIPSR_SERVICES_TIMEOUT", "120")),
            ray_num_cpus=env.get("CLIPSR_RAY_NUM_CPUS", ""),
            ray_temp_dir=env.get("CLIPSR_RAY_TEMP_DIR", ""),
        )


TITLES = {"s3": "S3 store (moto_server)", "mlflow": "MLflow server", "ray": "Ray head"}
# A process group is ours when one of its members' command lines names the service.
MARKERS = {"s3": "moto_server", "mlflow": "mlflow", "ray": "ray_node.py"}
ORDER = ["s3", "mlflow", "ray"]  # start order; stop in reverse
NODE_SCRIPT = Path(__file__).resolve().with_name("ray_node.py")


def bin_path(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise SystemExit(f"services: {path} is missing; run 'bash scripts/setup.sh' first")
    return str(path)


def service_env(cfg: Settings, ports: dict[str, int]) -> dict[str, str]:
    """What clients (and the services themselves) need to reach the local services."""
    s3 = f"http://{HOST}:{ports['s3']}"
    return {
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ENDPOINT_URL": s3,
        **FAKE_AWS,
        "RAY_ADDRESS": f"{HOST}:{ports['ray']}",
        "RAY_AUTH_MODE": "disabled",
        "CLIPSR_S3_BUCKET": cfg.bucket,
    }


# --- processes ---------------------------------------------------------------------------


def pid_file(cfg: Settings, name: str) -> Path:
    return cfg.state / f"{name}.pid"


def service_group(cfg: Settings, name: str) -> int | None:
    """The process group of service ``name`` if it still runs that service, else None."""
    return running_group(pid_file(cfg, name), MARKERS[name])


def stop(name: str, pgid: int) -> None:
    # Ray: only the node process gets SIGTERM and stops its processes in order (a SIGTERM to
    # the whole group kills GCS first, and the node process then waits for it).
    stop_group(name, pgid, timeout_s=40 if name == "ray" else 10, leader_only=name == "ray")


def healthy(cfg: Settings, name: str, port: int) -> bool:
    """S3 and MLflow answer HTTP 200 (MLflow on /health); Ray has logged that it started and
    its GCS port accepts connections."""
    try:
        if name == "ray":
            ray_log = (cfg.state / "logs" / "ray.log").read_text(errors="replace")
            with socket.create_connection((HOST, port), timeout=1):
                return "Ray runtime started" in ray_log
        path = "/health" if name == "mlflow" else "/"
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


# --- up / down / status --------------------------------------------------------------------


def command(cfg: Settings, name: str, port: int) -> list[str]:
    if name == "s3":
        return [bin_path("moto_server"), "-H", HOST, "-p", str(port)]
    if name == "mlflow":
        db = cfg.state / "mlflow.db"
        return [
            bin_path("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", f"s3://{cfg.bucket}/mlartifacts",
        ]  # fmt: skip
    cmd = [
        sys.executable, str(NODE_SCRIPT), "head", "--port", str(port),
        "--temp-dir", ray_temp_dir(cfg, port),
    ]  # fmt: skip
    return cmd + (["--num-cpus", cfg.ray_num_cpus] if cfg.ray_num_cpus else [])


def ray_temp_dir(cfg: Settings, port: int) -> str:
    """Ray's session dir holds AF_UNIX sockets (107-byte paths): under the state dir when the
    path is short enough, else under /tmp."""
    if cfg.ray_temp_dir:
        return cfg.ray_temp_dir
    path = str(cfg.state / "ray")
    return path if len(path) <= 40 else f"/tmp/clipsr-ray-{os.getuid()}-{port}"


def create_bucket(cfg: Settings, endpoint: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if cfg.bucket not in existing:
        client.create_bucket(Bucket=cfg.bucket)


def spawn(cfg: Settings, name: str, cmd: list[str], ports: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group with the services' environment (``ports``:
    those being started, default: the running stack's), logging to ``<state>/logs``."""
    logs = cfg.state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **service_env(cfg, ports or read_ports(cfg))}
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS"):
        env.pop(key, None)
    if name == "mlflow":
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else 9 processes, 2.4 GB
        env["TMPDIR"] = str(cfg.state / "tmp")
        (cfg.state / "tmp").mkdir(exist_ok=True)
    if name == "ray" or name.startswith("node-"):  # no Serve replicas to drain: stop at once
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    with (logs / f"{name}.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down stops all of it
        )
    pid_file(cfg, name).write_text(f"{proc.pid}\n")
    return proc


def wait_up(cfg: Settings, name: str, proc: subprocess.Popen, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        if healthy(cfg, name, port):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not answer on {HOST}:{port} within {cfg.timeout_s:.0f}s")


def read_ports(cfg: Settings) -> dict[str, int]:
    """The ports of the stack as last started (so that status/up follow a running stack)."""
    path = cfg.state / "services.json"
    return json.loads(path.read_text())["ports"] if path.exists() else {}


def write_env(cfg: Settings, ports: dict[str, int]) -> str:
    lines = [
        "# clipsr local services (infra/local/services.sh up): source this file.",
        "# The AWS keys are fake and only for the local S3 store (moto) on 127.0.0.1.",
        "unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3",
    ]
    lines += [f"export {k}={v}" for k, v in service_env(cfg, ports).items()]
    text = "\n".join(lines) + "\n"
    (cfg.state / "env.sh").write_text(text)
    (cfg.state / "services.json").write_text(
        json.dumps({"ports": ports, "bucket": cfg.bucket}, indent=2) + "\n"
    )
    return text


def up(cfg: Settings) -> int:
    cfg.state.mkdir(parents=True, exist_ok=True)
    (cfg.state / ".gitignore").write_text("*\n")  # the state dir never shows up in git
    running = {name: pgid for name in ORDER if (pgid := service_group(cfg, name))}
    recorded = read_ports(cfg)
    ports = {name: recorded.get(name, cfg.ports[name]) for name in running}
    ports |= {name: cfg.ports[name] for name in ORDER if name not in running}
    taken = [name for name in ORDER if name not in running and not port_free(ports[name])]
    if taken:
        for name in taken:
            port = ports[name]
            free = free_port_after(port)
            log(
                f"port {port} on {HOST} for the {TITLES[name]} is already in use"
                f"{port_owner(port)}; stop that process or choose another port, "
                f"e.g. {PORT_VARS[name]}={free} infra/local/services.sh up"
            )
        return 2
    for name, pgid in running.items():
        log(f"{name}: already running (process group {pgid}, port {ports[name]})")
    to_start = [name for name in ORDER if name not in running]
    if "s3" in to_start and "mlflow" in to_start:
        # a new (empty) object store: start the tracking store afresh as well
        (cfg.state / "mlflow.db").unlink(missing_ok=True)
    elif "s3" in to_start and "mlflow" in running:
        log("warning: new (empty) S3 store under a running MLflow server; 'down' then 'up'")
    commands = {name: command(cfg, name, ports[name]) for name in to_start}  # executables exist
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        for name in to_start:  # all at once; each is waited for in turn
            procs[name] = spawn(cfg, name, commands[name], ports)
        for name in to_start:
            wait_up(cfg, name, procs[name], ports[name], t0 + cfg.timeout_s)
            if name == "s3":
                create_bucket(cfg, f"http://{HOST}:{ports['s3']}")
            log(f"{name}: {TITLES[name]} up on {HOST}:{ports[name]} ({time.monotonic() - t0:.1f}s)")
    except (Exception, KeyboardInterrupt) as err:
        log_path = cfg.state / "logs" / f"{name}.log"
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        log(f"{TITLES[name]} failed: {err}\n--- {log_path} (tail) ---\n{tail}")
        log("stopping the services this command started")
        for n, proc in reversed(procs.items()):
            stop(n, proc.pid)
            pid_file(cfg, n).unlink(missing_ok=True)
        return 1
    env_text = write_env(cfg, ports)
    log(f"environment written to {cfg.state / 'env.sh'} (source it); logs in {cfg.state}/logs")
    print(env_text, end="")
    return 0


def down(cfg: Settings) -> int:
    stopped = stop_nodes(cfg) if cfg.state.is_dir() else 0
    for name in reversed(ORDER):
        pgid = service_group(cfg, name)
        if pgid is not None:
            stop(name, pgid)
            log(f"{name}: stopped (process group {pgid})")
            stopped += 1
        pid_file(cfg, name).unlink(missing_ok=True)
    if not stopped:
        log(f"nothing running (state dir {cfg.state})")
    return 0


def status(cfg: Settings) -> int:
    ports = read_ports(cfg)
    ok = True
    for name in ORDER:
        pgid = service_group(cfg, name)
        port = ports.get(name, cfg.ports[name])
        if pgid is None:
            state, ok = "stopped", False
        elif healthy(cfg, name, port):
            state = f"up (process group {pgid})"
        else:
            state, ok = f"NOT ANSWERING (process group {pgid})", False
        print(f"{name:<7} {state:<34} {HOST}:{port}  {TITLES[name]}")
    for _name, alive, line in node_status(cfg):
        print(line)
        ok = ok and alive
    if ok:
        print(f"env: source {cfg.state / 'env.sh'}")
    return 0 if ok else 1


def add(cfg: Settings, argv: list[str]) -> int:
    port = read_ports(cfg).get("ray", cfg.ports["ray"])
    return add_node(cfg, argv, port, ray_temp_dir(cfg, port), spawn)


def main(argv: list[str]) -> int:
    commands = ("up", "down", "status", "add-node")
    if not argv or argv[0] not in commands or (argv[0] != "add-node" and len(argv) != 1):
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    cfg = Settings.from_env()
    if argv[0] == "add-node":
        return add(cfg, argv[1:])
    return {"up": up, "down": down, "status": status}[argv[0]](cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
