"""Guardrails on a real two-node Ray cluster on loopback (infra/local/ray_node.py): the second
node runs in a private mount namespace where one directory of this machine is hidden, so it
cannot see what the driver writes there, as a second machine could not."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.cluster_guard import local_tracking_path
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "infra" / "local" / "ray_node.py"
TRAIN_CFG = ROOT / "configs" / "train" / "tiny-x4.yaml"
MANIFEST = {
    "format_version": 1,
    "scales": [4],
    "hr_size": 128,
    "shards": [
        {"tar": "train-000000.tar", "split": "train", "samples": 1},
        {"tar": "test-000000.tar", "split": "test", "samples": 1},
    ],
}
pytestmark = pytest.mark.integration


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_started(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"Ray node did not start:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # the node process stops its Ray processes
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(RAY_ADDRESS, hidden dir) of a head and a second node that cannot see the hidden dir."""
    if not can_unshare():
        pytest.skip("needs a private mount namespace (unshare --mount: root)")
    work = tmp_path_factory.mktemp("two-nodes")
    hidden, empty = work / "hidden", work / "empty"
    hidden.mkdir()
    empty.mkdir()
    temp = tempfile.mkdtemp(prefix="clipsr-guard-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    head = start(
        [sys.executable, str(NODE), "head", "--port", str(port), "--temp-dir", f"{temp}/h",
         "--num-cpus", "1"],
        work / "head.log",
    )  # fmt: skip
    procs = [head]
    try:
        wait_started(head, work / "head.log")
        worker = [sys.executable, str(NODE), "worker", "--address", f"127.0.0.1:{port}",
                  "--temp-dir", f"{temp}/w", "--num-cpus", "1"]  # fmt: skip
        script = f"mount --bind {empty} {hidden} && exec {shlex.join(worker)}"
        node = start(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                     work / "node.log")  # fmt: skip
        procs.append(node)
        wait_started(node, work / "node.log")
        yield f"127.0.0.1:{port}", hidden
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


CHECKS = textwrap.dedent(
    """
    import json, sys
    from pipelines.cluster_guard import SharedStorageError, check_cluster_paths
    from pipelines.ray_cluster import init_ray
    ray = init_ray(sys.argv[1], log_to_driver=False)
    results = []
    for case in json.loads(sys.argv[2]):
        try:
            results.append(["ok", check_cluster_paths(ray, "x.shared_filesystem", **case)])
        except SharedStorageError as err:
            results.append(["refused", str(err)])
    print("RESULT", json.dumps(results))
    """
)


def run_checks(address: str, cases: list[dict]) -> list:
    res = subprocess.run(
        [sys.executable, "-c", CHECKS, address, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.split("RESULT", 1)[1])


def test_local_paths_and_stores_are_refused_unless_shared_and_seen_by_every_node(
    two_nodes, tmp_path
):
    address, hidden = two_nodes
    visible = tmp_path / "visible"  # the same /tmp on both nodes: a shared filesystem
    (hidden / "shards").mkdir()
    (hidden / "shards" / "manifest.json").write_text("{}")
    cases = [
        {"shared_filesystem": False, "reads": {"data.shards": "s3://b/shards"},
         "writes": {"run.storage_path": "gs://b/runs"}, "tracking_uri": "http://127.0.0.1:5000"},
        {"shared_filesystem": False, "reads": {}, "writes": {"output": str(visible)}},
        {"shared_filesystem": False, "reads": {}, "writes": {},
         "tracking_uri": f"sqlite:///{visible}/mlflow.db"},
        {"shared_filesystem": True, "reads": {}, "writes": {"output": str(visible)},
         "tracking_uri": f"sqlite:///{visible}/mlflow.db"},
        {"shared_filesystem": True, "reads": {}, "writes": {"--out": str(hidden / "out")}},
        {"shared_filesystem": True, "reads": {"--shards": str(hidden / "shards")}, "writes": {}},
    ]  # fmt: skip
    ok, local, sqlite, shared, hidden_out, hidden_in = run_checks(address, cases)
    assert ok == ["ok", 2] and shared == ["ok", 2]
    assert local[0] == "refused" and local[1].startswith(f"output: {visible} is a local path")
    assert "2 alive nodes" in local[1] and "s3://" in local[1]
    assert "x.shared_filesystem=true" in local[1]
    assert sqlite[0] == "refused" and sqlite[1].startswith("tracking.tracking_uri: the MLflow")
    assert "use an MLflow server" in sqlite[1]
    assert hidden_out[0] == "refused" and hidden_out[1].startswith(f"--out: {hidden / 'out'}")
    assert "is not shared: node" in hidden_out[1]
    assert hidden_in[0] == "refused" and "--shards" in hidden_in[1]
    assert not [p for p in visible.iterdir() if p.name.startswith(".clipsr-shared-check-")]


def test_jobs_refuse_local_paths_before_any_work(two_nodes, tmp_path):
    """The CLI of preprocess and train on the two-node cluster: one line naming the key and what
    to use, exit code 2, nothing written."""
    address, _ = two_nodes
    env = {**os.environ, "RAY_ADDRESS": address}
    env.pop("MLFLOW_TRACKING_URI", None)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    config = ROOT / "configs" / "preprocess" / "folder-realesrgan.yaml"
    pre = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", str(config),
         f"source.path={corpus}", f"output={tmp_path / 'shards'}"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pre.returncode == 2, pre.stderr[-3000:]
    assert (
        pre.stderr.strip()
        .splitlines()[-1]
        .startswith(f"clipsr preprocess: source.path: {corpus} is a local path")
    )
    assert "Traceback" not in pre.stderr and not (tmp_path / "shards").exists()
    shards = tmp_path / "shards-in"  # a real (tiny) dataset manifest: the job reads it first
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps(MANIFEST))
    for entry in MANIFEST["shards"]:  # the driver checks that the shard files exist
        (shards / entry["tar"]).write_bytes(b"")
    train = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(TRAIN_CFG), f"data.shards={shards}",
         f"run.storage_path={tmp_path / 'runs'}", "run.shared_filesystem=false"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 2, train.stderr[-3000:]
    last = train.stderr.strip().splitlines()[-1]
    assert last.startswith(f"clipsr train: data.shards: {shards} is a local path"), last
    assert "run.shared_filesystem=true" in last and not (tmp_path / "runs").exists()


def test_local_tracking_paths():
    assert local_tracking_path("sqlite:////abs/mlflow.db") == "/abs/mlflow.db"
    assert local_tracking_path("sqlite:///rel/mlflow.db") == "rel/mlflow.db"
    assert local_tracking_path("file:///tmp/mlruns") == "/tmp/mlruns"
    assert local_tracking_path("mlruns") == "mlruns"
    assert local_tracking_path("http://127.0.0.1:5000") is None
    assert local_tracking_path("databricks") is None
