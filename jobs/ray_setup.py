"""The runtime environment of the jobs that drive Ray Train (``clipsr train``, ``clipsr demo``).

Ray Train 2.60 starts a ``PlacementGroupCleaner`` actor that asks the Ray State API every second
whether the train controller is still alive. The State API is served by the Ray dashboard, which
this package does not install (``ray[data,train]``, not ``ray[default]``; a local ``ray.init``
and ``infra/local``'s Ray head run without it). Without it every check fails and the cleaner
logs "Failed to query Ray Train Controller actor state" once a second for the whole run, burying
the training log. Where the dashboard's dependencies are missing, a worker set-up hook raises
that one logger to ERROR; nothing else is filtered, and on a cluster with the dashboard
(``ray[default]``, as ``infra/`` installs it) the hook is not set.
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER_LOGGER = (
    "ray.train.v2._internal.execution.controller.placement_group_cleaner"
)


def quiet_placement_group_cleaner() -> None:
    """Worker set-up hook: the cleaner's State API warnings to ERROR (see the module docstring)."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


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
    env: dict = {"env_vars": dict(env_vars)}
    if not (dashboard and dashboard_installed()):
        env["worker_process_setup_hook"] = f"{__name__}.quiet_placement_group_cleaner"
    return env
