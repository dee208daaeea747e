import logging
from pathlib import Path

import pytest

from jobs import ray_setup
from jobs.ray_setup import PLACEMENT_GROUP_CLEANER_LOGGER, train_runtime_env


def test_the_hook_names_an_importable_function_that_quiets_only_the_cleaner():
    env = train_runtime_env({"OMP_NUM_THREADS": "1"}, dashboard=False)
    assert env["env_vars"] == {"OMP_NUM_THREADS": "1"}
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    assert module == ray_setup.__name__
    cleaner = logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER)
    before = cleaner.level
    try:
        getattr(ray_setup, name)()
        assert cleaner.getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("ray.train").getEffectiveLevel() < logging.ERROR
    finally:
        cleaner.setLevel(before)


def test_the_logger_is_the_one_ray_train_warns_from():
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    assert placement_group_cleaner.__name__ == PLACEMENT_GROUP_CLEANER_LOGGER
    source = Path(placement_group_cleaner.__file__).read_text()
    assert "Failed to query Ray Train Controller actor state" in source


@pytest.mark.parametrize("installed", [True, False])
def test_no_hook_where_the_dashboard_serves_the_state_api(monkeypatch, installed):
    monkeypatch.setattr(ray_setup, "dashboard_installed", lambda: installed)
    env = train_runtime_env({}, dashboard=True)
    assert ("worker_process_setup_hook" in env) is not installed
    assert "worker_process_setup_hook" in train_runtime_env({}, dashboard=False)
