"""infra/local/services.sh: up starts a real moto S3 store, MLflow server and Ray head on
127.0.0.1 that answer (and reach each other), refuses taken ports by name, and down stops
every process it started, twice in a row."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest

from tests.infra.conftest import s3_client, services, services_env, sourced

pytestmark = pytest.mark.integration


def group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


RAY_DRIVER = textwrap.dedent(
    """
    import os, ray
    from pipelines.ray_cluster import init_ray
    init_ray(os.environ["RAY_ADDRESS"], log_to_driver=False)

    @ray.remote
    def probe(bucket):
        import boto3  # the worker's own environment: the head's, from services.sh
        body = boto3.client("s3").get_object(Bucket=bucket, Key="probe.txt")["Body"].read()
        return body.decode(), os.environ["MLFLOW_TRACKING_URI"], ray.util.get_node_ip_address()

    print("RESULT", *ray.get(probe.remote(os.environ["CLIPSR_S3_BUCKET"])))
    """
)


NODE_PROBE = textwrap.dedent(
    """
    import json, os, sys, ray
    from pipelines.ray_cluster import alive_nodes, init_ray
    init_ray(os.environ["RAY_ADDRESS"], log_to_driver=False)

    @ray.remote(num_cpus=0, resources={"added": 1})
    def on_the_added_node(path):
        return ray.util.get_node_ip_address(), sorted(os.listdir(path))

    nodes = [n["NodeManagerAddress"] for n in alive_nodes(ray)]
    print("RESULT", json.dumps([nodes, *ray.get(on_the_added_node.remote(sys.argv[1]))]))
    """
)


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def test_up_answers_then_down_stops_everything(tmp_path, ray_temp):
    from mlflow import MlflowClient

    env = services_env(tmp_path / "state", ray_temp)
    pgids: dict[str, int] = {}
    up = services("up", env)
    try:
        assert up.returncode == 0, up.stderr
        env_sh = tmp_path / "state" / "env.sh"
        assert up.stdout == env_sh.read_text()
        svc = sourced(env_sh)
        s3_url = f"http://127.0.0.1:{env['CLIPSR_S3_PORT']}"
        assert svc["AWS_ENDPOINT_URL"] == svc["MLFLOW_S3_ENDPOINT_URL"] == s3_url
        assert svc["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{env['CLIPSR_MLFLOW_PORT']}"
        assert svc["RAY_ADDRESS"] == f"127.0.0.1:{env['CLIPSR_RAY_PORT']}"
        for name in ("s3", "mlflow", "ray"):
            pgids[name] = int((tmp_path / "state" / f"{name}.pid").read_text())

        # S3: put/get in the bucket that up created, with the printed endpoint and fake keys
        s3 = s3_client(svc)
        bucket = svc["CLIPSR_S3_BUCKET"]
        body = b"hello from the test"
        s3.put_object(Bucket=bucket, Key="probe.txt", Body=body)
        assert s3.get_object(Bucket=bucket, Key="probe.txt")["Body"].read() == body

        # MLflow: an experiment and a run; its artifact lands in the bucket through the proxy
        client = MlflowClient(svc["MLFLOW_TRACKING_URI"])
        experiment = client.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment)
        artifact = tmp_path / "note.txt"
        artifact.write_text("artifact")
        client.log_artifact(run.info.run_id, str(artifact))
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(k.startswith("mlartifacts/") and k.endswith("/note.txt") for k in keys), keys

        # Ray: a separate driver joins the head; its task reaches S3 with the head's environment
        driver = subprocess.run(
            [sys.executable, "-c", RAY_DRIVER],
            env={**env, **svc},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = driver.stdout.split("RESULT", 1)[1].split()
        assert result == ["hello", "from", "the", "test", svc["MLFLOW_TRACKING_URI"], "127.0.0.1"]

        # add-node: a second Ray node on 127.0.0.1 with its own resources, and (where a private
        # mount namespace is allowed) a directory of this machine hidden from it
        hidden = tmp_path / "private"
        hidden.mkdir()
        (hidden / "only-on-the-head.txt").write_text("x")
        hide = ["--hide", str(hidden)] if can_unshare() else []
        added = services("add-node", env, args=("--resources", '{"added": 1}', *hide))
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == "node-1"
        pgids["node-1"] = int((tmp_path / "state" / "node-1.pid").read_text())
        probe = subprocess.run(
            [sys.executable, "-c", NODE_PROBE, str(hidden)],
            env={**env, **svc},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        nodes, ip, listing = json.loads(probe.stdout.split("RESULT", 1)[1])
        assert nodes == ["127.0.0.1", "127.0.0.1"] and ip == "127.0.0.1"
        assert listing == ([] if hide else ["only-on-the-head.txt"])
        outside = [
            (c.pid, c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
            and c.pid
            and os.getpgid(c.pid) in pgids.values()
            and not c.laddr.ip.endswith("127.0.0.1")
        ]
        assert not outside, f"services listening beyond 127.0.0.1: {outside}"

        status = services("status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up (process group") == 4

        again = services("up", env)  # idempotent: nothing new starts, the same environment
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("already running") == 3 and again.stdout == up.stdout
    finally:
        down = services("down", env)
    assert down.returncode == 0, down.stderr
    assert not [n for n, pgid in pgids.items() if group_alive(pgid)]
    assert not (tmp_path / "state" / "node-1.pid").exists()
    for name in ("s3", "mlflow", "ray"):
        port = int(env[f"CLIPSR_{name.upper()}_PORT"])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens on {port}"
        assert not (tmp_path / "state" / f"{name}.pid").exists()
    second = services("down", env)
    assert second.returncode == 0 and "nothing running" in second.stderr
    assert services("status", env).returncode == 1


def test_taken_port_fails_naming_the_port_and_its_variable(tmp_path, ray_temp):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = services_env(tmp_path / "state", ray_temp, mlflow=port)
        up = services("up", env, timeout=60)
    assert up.returncode == 2
    assert f"port {port} on 127.0.0.1 for the MLflow server is already in use" in up.stderr
    assert "CLIPSR_MLFLOW_PORT=" in up.stderr
    assert not list((tmp_path / "state").glob("*.pid"))  # nothing was started


def test_a_service_that_fails_to_start_stops_the_others(tmp_path, ray_temp):
    env = services_env(tmp_path / "state", ray_temp) | {"CLIPSR_RAY_NUM_CPUS": "many"}
    up = services("up", env)
    assert up.returncode == 1
    assert "Ray head failed: ray exited" in up.stderr and "--num-cpus" in up.stderr  # its log
    assert "stopping the services this command started" in up.stderr
    assert not list((tmp_path / "state").glob("*.pid"))
    for name in ("s3", "mlflow"):
        with socket.socket() as sock:
            port = int(env[f"CLIPSR_{name.upper()}_PORT"])
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens"


def test_ports_inside_rays_worker_port_range_are_refused(tmp_path, ray_temp):
    env = services_env(tmp_path / "state", ray_temp, mlflow=15000)
    up = services("up", env, timeout=60)
    assert up.returncode != 0
    assert "CLIPSR_MLFLOW_PORT=15000 lies in Ray's worker-port range 10002-19999" in up.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_add_node_needs_a_running_head(tmp_path, ray_temp):
    env = services_env(tmp_path / "state", ray_temp)
    res = services("add-node", env, timeout=60)
    assert res.returncode == 1 and "the Ray head is not running" in res.stderr
