"""``python -m jobs.run_watchdog TRACKING_URI RUN_ID``: started by :mod:`jobs.run_state`.

Waits until its stdin, a pipe from the job's driver, closes (the driver is done, or dead),
then ends the run KILLED if it is still RUNNING: a driver that ended it itself (FINISHED,
FAILED, KILLED) has changed its status first. Imports MLflow only then, so waiting costs
nothing.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    tracking_uri, run_id = argv
    while sys.stdin.buffer.read(65536):
        pass  # the driver never writes; EOF is the signal
    from mlflow import MlflowClient

    from jobs.run_state import MAX_REASON, REASON_TAG

    client = MlflowClient(tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":
        reason = "the driver process died without ending the run (killed?)"
        client.set_tag(run_id, REASON_TAG, reason[:MAX_REASON])
        client.set_terminated(run_id, "KILLED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
