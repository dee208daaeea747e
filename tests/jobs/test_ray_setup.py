import logging
import os
import warnings
from pathlib import Path

import pytest

from jobs import console, ray_setup
from jobs.ray_setup import PLACEMENT_GROUP_CLEANER_LOGGER, QUIET_CLEANER_ENV, train_runtime_env


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.setitem(console._state, "verbose", False)
    root, lib = logging.getLogger(), logging.getLogger("clipsr")
    levels = (root.level, lib.level)
    with warnings.catch_warnings():
        yield
    root.setLevel(levels[0])
    lib.setLevel(levels[1])


def test_the_hook_quiets_the_cleaner_where_asked_and_keeps_clipsr_lines(quiet, monkeypatch):
    env = train_runtime_env({"OMP_NUM_THREADS": "1"}, dashboard=False)
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert env["env_vars"][QUIET_CLEANER_ENV] == "1"
    assert env["env_vars"]["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    assert module == ray_setup.__name__
    cleaner = logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER)
    before = cleaner.level
    monkeypatch.setenv(QUIET_CLEANER_ENV, "1")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # given: kept
    try:
        getattr(ray_setup, name)()
        assert cleaner.getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("open_clip").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("clipsr.train").getEffectiveLevel() == logging.INFO
        assert os.environ["RAY_ADDRESS"] == "127.0.0.1:1"
    finally:
        cleaner.setLevel(before)


def test_verbose_workers_get_everything(monkeypatch):
    monkeypatch.setitem(console._state, "verbose", True)
    env = train_runtime_env({}, dashboard=False)
    assert env["env_vars"][console.VERBOSE_ENV] == "1"
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in env["env_vars"]


def test_the_logger_is_the_one_ray_train_warns_from():
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    assert placement_group_cleaner.__name__ == PLACEMENT_GROUP_CLEANER_LOGGER
    source = Path(placement_group_cleaner.__file__).read_text()
    assert "Failed to query Ray Train Controller actor state" in source


@pytest.mark.parametrize("installed", [True, False])
def test_the_cleaner_is_left_alone_where_the_dashboard_serves_the_state_api(monkeypatch, installed):
    monkeypatch.setattr(ray_setup, "dashboard_installed", lambda: installed)
    env = train_runtime_env({}, dashboard=True)["env_vars"]
    assert (QUIET_CLEANER_ENV in env) is not installed
    assert QUIET_CLEANER_ENV in train_runtime_env({}, dashboard=False)["env_vars"]
