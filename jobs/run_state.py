"""Honest end states of a job's MLflow run: FINISHED only when the job finished.

Within :func:`honest_end`:

- the block returns: the run ends FINISHED;
- Ctrl-C (SIGINT) or SIGTERM (``ray job stop``, ``kill``, a scheduler): KILLED, with the signal
  as the reason (tag ``clipsr.end_reason``), and :class:`Interrupted` propagates;
- any other exception: FAILED, with the exception as the reason;
- the driver dies without a word (SIGKILL, out of memory, a lost head): a watchdog process
  (:mod:`jobs.run_watchdog`, in its own session so that a Ctrl-C or a process-group kill does
  not reach it) sees its pipe from the driver close, finds the run still RUNNING and ends it
  KILLED.

Without this, MLflow's exit handler ends an interrupted run FINISHED.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

REASON_TAG = "clipsr.end_reason"
MAX_REASON = 4000


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal (SIGINT or SIGTERM)."""


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def start_watchdog(tracking_uri: str, run_id: str) -> subprocess.Popen:
    """The process that ends ``run_id`` KILLED if this process dies with the run RUNNING."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.run_watchdog", tracking_uri, run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


class ClientRun:
    """A run made with ``MlflowClient.create_run`` (no active run), for :func:`honest_end`."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str):
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        self.run_id = None


def end_run(tracker: Any, status: str, reason: str = "") -> None:
    """End the tracker's run with ``status``, recording ``reason``."""
    if tracker.run_id is None:
        return
    if reason:
        with contextlib.suppress(Exception):  # the status matters more than the tag
            tracker.client.set_tag(tracker.run_id, REASON_TAG, reason[:MAX_REASON])
    tracker.end(status)


@contextlib.contextmanager
def honest_end(tracker: Any) -> Iterator[None]:
    """Run the block with the tracker's run ending as the module docstring says (``tracker``:
    a started :class:`jobs.tracking.RunTracker` or a :class:`ClientRun`)."""
    watchdog = start_watchdog(tracker.tracking_uri, tracker.run_id)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main else None
    try:
        yield
    except KeyboardInterrupt as err:
        end_run(tracker, "KILLED", str(err) or "interrupted (Ctrl-C)")
        raise Interrupted(str(err) or "interrupted (Ctrl-C)") from None
    except BaseException as err:
        end_run(tracker, "FAILED", f"{type(err).__name__}: {err}")
        raise
    else:
        end_run(tracker, "FINISHED")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(OSError):
            watchdog.stdin.close()  # the watchdog checks the (now ended) run and exits
