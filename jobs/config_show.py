"""``clipsr config show JOB [CONFIG] [a.b=value ...]``: print a job's resolved configuration.

The YAML it prints is what the job would run with: the file (with its ``extends``), the
overrides and every default, in the job's own schema, so it can be saved and passed back as
CONFIG. A configuration the job would refuse is printed too, then the reason, with exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from jobs import console

PROG = "clipsr config"
# job -> (module, loader function, what CONFIG is)
JOBS = {
    "preprocess": ("pipelines.preprocess_config", "load_preprocess_config", "configs/preprocess/"),
    "train": ("jobs.train_config", "load_train_config", "configs/train/"),
    "pretrain-clip": (
        "jobs.pretrain_clip_config",
        "load_pretrain_clip_config",
        "configs/pretrain_clip/",
    ),
    "evaluate": ("jobs.evaluate_config", "load_evaluate_config", "configs/evaluate/"),
    "promote": ("jobs.promote_config", "load_promote_config", "configs/promote/"),
    "demo": ("jobs.demo_config", "load_demo_config", "configs/demo/"),
    "model": ("clipsr.config", "load_clipsr_config", "configs/{tiny,base}-x*.yaml"),
}


def build_parser() -> console.Parser:
    p = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("show",), help="show: print the resolved configuration")
    p.add_argument("job", choices=sorted(JOBS), help="whose configuration (model: the library's)")
    p.add_optional_config(
        "YAML file (see configs/); omit it for the job's defaults",
        "overrides such as run.steps=200",
    )
    return p


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clipsr.config_loader import ConfigError, to_yaml

    module, loader, _ = JOBS[args.job]
    load = getattr(importlib.import_module(module), loader)
    cfg = load(args.config, args.overrides, validate=False)
    sys.stdout.write(to_yaml(cfg))
    sys.stdout.flush()
    try:
        cfg.validate()
    except ConfigError as err:
        where = f"{args.config}: " if args.config else ""
        return console.fail(PROG, f"clipsr {args.job} would refuse this: {where}{err}", 2)
    return 0
