"""The runtime environment of the Ray workers of the jobs that start Ray with ``log_to_driver``
(``clipsr train``, ``clipsr demo``), so that what the workers print reaches the console.

- Quiet by default (:mod:`jobs.console`): the workers get the quiet environment (no MLflow bars,
  Ray's loggers at WARNING) and a set-up hook that keeps their
  Python logging at WARNING except clipsr's own lines, and drops the random-CLIP warning that the
  driver has already given once. ``--verbose`` passes everything through.
- Ray Train 2.60 starts a ``PlacementGroupCleaner`` actor that asks the Ray State API every second
  whether the train controller is still alive. The State API is served by the Ray dashboard, which
  this package does not install (``ray[data,train]``, not ``ray[default]``; a local ``ray.init``
  and ``infra/local``'s Ray head run without it). Without it every check fails and the cleaner
  logs "Failed to query Ray Train Controller actor state" once a second for the whole run. Where
  the dashboard's dependencies are missing, the hook raises that one logger to ERROR; on a
  cluster with the dashboard (``ray[default]``, as ``infra/`` installs it) it is left alone.
"""

from __future__ import annotations

import logging
import os

from jobs import console

PLACEMENT_GROUP_CLEANER_LOGGER = (
    "ray.train.v2._internal.execution.controller.placement_group_cleaner"
)
QUIET_CLEANER_ENV = "CLIPSR_QUIET_PG_CLEANER"


def quiet_placement_group_cleaner() -> None:
    """The cleaner's State API warnings to ERROR (see the module docstring)."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def worker_setup() -> None:
    """Ray ``worker_process_setup_hook`` of every worker of the job (see the module docstring).

    It also names the worker's own cluster in ``RAY_ADDRESS``: the cleaner looks its cluster up
    from the environment, and on a machine with several Ray instances (other users' jobs) it
    cannot tell which is its own and its monitor thread dies with a traceback."""
    import ray

    if not os.environ.get("RAY_ADDRESS") and ray.is_initialized():
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    if os.environ.get(QUIET_CLEANER_ENV) == "1":
        quiet_placement_group_cleaner()
    console.quiet_worker_logging()


def dashboard_installed() -> bool:
    """Whether this Ray can serve the dashboard and with it the State API (Ray's own check: its
    optional dependencies import)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


def train_runtime_env(env_vars: dict[str, str], dashboard: bool = True) -> dict:
    """``ray.init(runtime_env=...)`` for a job that runs Ray Train with ``env_vars``;
    ``dashboard=False`` where the job starts Ray with ``include_dashboard=False``."""
    env_vars = dict(env_vars)
    if not (dashboard and dashboard_installed()):
        env_vars[QUIET_CLEANER_ENV] = "1"
    if console.verbose():
        env_vars[console.VERBOSE_ENV] = "1"
    else:
        env_vars.update(console.QUIET_ENV)
    return {"env_vars": env_vars, "worker_process_setup_hook": f"{__name__}.worker_setup"}


def train_logging_config():
    """Ray Train's own INFO (resource requests, worker groups, every ``TrainingReport``) only
    with ``--verbose``."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if console.verbose() else "WARNING")
