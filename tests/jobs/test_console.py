"""The console conventions every command shares (jobs/console.py, jobs/console_noise.py):
help without heavy imports and with text for every flag, --version, config show, warnings
once, one-line errors, and the noise budget the demo's --check holds its output to."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from jobs import console
from jobs.cli import COMMANDS, main
from jobs.console_noise import BUDGET, Transcript, measure

ROOT = Path(__file__).resolve().parents[2]
PARSERS = {
    "preprocess": "jobs.preprocess:build_parser",
    "train": "jobs.train:build_parser",
    "evaluate": "jobs.evaluate:_parser",
    "promote": "jobs.promote:_parser",
    "upscale": "jobs.upscale:build_parser",
    "demo": "jobs.demo:build_parser",
    "config": "jobs.config_show:build_parser",
    "pretrain-clip": "jobs.pretrain_clip:build_parser",
    "convert-reference": "jobs.convert_reference:build_parser",
}


def test_help_imports_neither_torch_nor_mlflow_nor_ray():
    """What makes `clipsr <job> --help` fast: building every parser imports none of them."""
    code = (
        "import sys, importlib\n"
        f"for spec in {list(PARSERS.values())!r}:\n"
        "    module, name = spec.split(':')\n"
        "    getattr(importlib.import_module(module), name)().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'ray', 'open_clip') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_help_text(command):
    import importlib

    module, name = PARSERS[command].split(":")
    parser = getattr(importlib.import_module(module), name)()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a deprecated spelling, kept working
            continue
        assert action.help and action.help.strip(), (command, action.option_strings or action.dest)
    assert any("--verbose" in a.option_strings for a in parser._actions)
    assert set(PARSERS) == set(COMMANDS)


def test_version_and_unknown_command(capsys):
    from clipsr import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"clipsr {__version__}"
    assert main(["evalute"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'evaluate'" in err


def test_config_show_prints_what_the_job_runs_with(capsys):
    config = ROOT / "configs/train/tiny-x4.yaml"
    assert main(["config", "show", "train", str(config), "run.steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["steps"] == 7 and shown["model"]["hr_size"] == 128  # from extends
    from clipsr.config_loader import to_dict
    from jobs.train_config import load_train_config

    assert shown == to_dict(load_train_config(config, ["run.steps=7"]))
    assert main(["config", "show", "evaluate", "limit=3"]) == 2  # printed, then refused
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["limit"] == 3 and "concurrency" in yaml.safe_load(out)
    assert err.strip() == (
        "clipsr config: clipsr evaluate would refuse this: model: required "
        "(models:/NAME@ALIAS, models:/NAME/N or a dir)"
    )


def test_a_command_warns_once_and_fails_on_one_line(capsys):
    @console.command("clipsr probe")
    def probe(argv):
        for _ in range(3):
            warnings.warn("the same thing, again", UserWarning, 1)
        raise RuntimeError("a bug\nover two lines")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert probe([]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warning: the same thing, again"
    assert err[1].startswith("clipsr probe: RuntimeError: a bug over two lines (rerun with")
    assert len(err) == 2
    assert warnings.showwarning is not console._show_warning  # put back after the command


def test_summarize_finds_the_workers_own_error():
    class RayTaskError(Exception):  # the shape of ray.exceptions.RayTaskError
        def __init__(self, text, cause):
            super().__init__(text)
            self.cause = cause

    inner = ValueError("resize_range must hold 1")
    text = 'ray::_write_row()\nTraceback (most recent call last):\n  File "x"\nValueError: boom'
    assert console.summarize(RayTaskError(text, inner)) == "resize_range must hold 1"
    assert console.summarize(RuntimeError(text)) == "ValueError: boom"
    assert console.summarize(RuntimeError("")) == "RuntimeError"


BEFORE = """\
2026-12-01 15:40:15,257	INFO worker.py:2038 -- Started a local Ray instance.
INFO clipsr.demo: stage preprocess photos: running
2026-12-01 15:40:21,679	INFO logging_progress.py:225 -- Total Progress: 0/?
(TrainController pid=9187) Requesting resources: {'CPU': 1.0} * 2
(RayTrainWorker pid=9398) Parsing model identifier. Schema: None, Identifier: clipsr-tiny
(RayTrainWorker pid=9398) Loaded built-in clipsr-tiny model config.
(RayTrainWorker pid=9398) CLIP 'clipsr-tiny' is RANDOMLY INITIALISED (seed 0): no weights.
(RayTrainWorker pid=9374) CLIP 'clipsr-tiny' is RANDOMLY INITIALISED (seed 0): no weights.
(RayTrainWorker pid=9398) step 10/20  1.01 steps/s  16.1 img/s  data wait 3%  G 0.0182
(RayTrainWorker pid=9374) Reporting training result 1: TrainingReport(checkpoint=None, metrics={})
Downloading artifacts: 100%|##########| 12/12 [00:00<00:00, 1234.5it/s]
"""
AFTER = """\
clipsr demo in /tmp/demo (storage /tmp/demo; MLflow embedded; Ray local)
stage corpus: photos 229 train, 18 test, shapes 512 train, 64 test (1 s)
stage preprocess photos: 247 samples written, 0 rejected -> /tmp/demo/shards/photos (15 s)
warning: CLIP 'clipsr-tiny' is RANDOMLY INITIALISED (seed 0): no weights are configured.
(RayTrainWorker pid=13763) step 10/600  0.93 steps/s  14.9 img/s  data wait 3%  G 0.0182
stage train x4: 600 steps, registered models:/clipsr-demo-x4/1 (78 s)
"""


def test_the_noise_budget_tells_the_old_console_from_the_quiet_one():
    before, after = measure(BEFORE), measure(AFTER)
    assert before.share > 0.5 and "repeated random-CLIP warning" in before.by_kind
    assert after.noise_bytes == 0 and after.share < BUDGET
    assert "budget 10%" in before.describe()


def test_the_transcript_sees_what_child_processes_write(capsys):
    with capsys.disabled(), Transcript() as transcript:
        print("from python", flush=True)
        subprocess.run(["sh", "-c", "echo from a child >&2"], check=True)
        text = transcript.text()
    assert "from python" in text and "from a child" in text
