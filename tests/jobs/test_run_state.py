"""Honest end states of an MLflow run (jobs/run_state.py) with a real store and real signals:
a small driver starts a run under ``honest_end`` and is then interrupted, terminated, killed
with SIGKILL (the watchdog ends the run), fails, or finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

DRIVER = textwrap.dedent(
    """
    import sys, time
    from jobs.run_state import Interrupted, honest_end
    from jobs.tracking import RunTracker

    tracker = RunTracker(sys.argv[1])
    run_id = tracker.start("states", "run", {}, None, system_metrics=False)
    print(run_id, flush=True)
    try:
        with honest_end(tracker):
            if sys.argv[2] == "fail":
                raise ValueError("the corpus is empty")
            if sys.argv[2] == "wait":
                time.sleep(600)
    except Interrupted as err:
        print("interrupted:", err, flush=True)
        sys.exit(130)
    """
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('states') / 'mlflow.db'}"


def start(store: str, mode: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, store, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()[-3000:]
    return proc, run_id


def status(store: str, run_id: str, timeout_s: float = 0) -> tuple[str, str | None]:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING" or time.monotonic() >= deadline:
            return run.info.status, run.data.tags.get("clipsr.end_reason")
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("mode", "signum", "want", "reason"),
    [
        ("done", None, "FINISHED", None),
        ("fail", None, "FAILED", "ValueError: the corpus is empty"),
        ("wait", signal.SIGINT, "KILLED", "interrupted (Ctrl-C)"),
        ("wait", signal.SIGTERM, "KILLED", "stopped by SIGTERM"),
    ],
)
def test_the_run_ends_as_the_driver_did(store, mode, signum, want, reason):
    proc, run_id = start(store, mode)
    if signum is not None:
        time.sleep(1)  # inside the block
        os.kill(proc.pid, signum)
    proc.wait(timeout=120)
    assert status(store, run_id) == (want, reason)
    assert proc.returncode == {"FINISHED": 0, "FAILED": 1, "KILLED": 130}[want]


def test_a_killed_driver_leaves_the_run_to_the_watchdog(store):
    proc, run_id = start(store, "wait")
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole process group: not the watchdog
    proc.wait(timeout=60)
    state, reason = status(store, run_id, timeout_s=120)
    assert state == "KILLED" and "the driver process died" in reason
