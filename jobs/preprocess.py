"""``clipsr preprocess CONFIG [a.b=value ...]``: shard a captioned corpus with Ray Data.

Also ``python -m jobs.preprocess`` (e.g. under ``ray job submit``). Runs on a local Ray unless
RAY_ADDRESS or ``ray_address`` names a cluster. A rerun resumes; ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipsr preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (see configs/preprocess/)")
    p.add_argument("overrides", nargs="*", help="overrides such as output=s3://b/p scales=[4,8]")
    p.add_argument("--overwrite", action="store_true", help="start over (ignore committed shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--plan-only", action="store_true", help="print the splits and shard counts, then stop"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clipsr.config_loader import ConfigError
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    try:
        cfg = load_preprocess_config(args.config, args.overrides)
        if args.overwrite:
            cfg.overwrite = True
        summary = run_preprocess(cfg, progress=not args.no_progress, plan_only=args.plan_only)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"clipsr preprocess: {err}", file=sys.stderr)
        return 2
    if args.plan_only:
        print(f"plan: {summary.listed} listed, {summary.duplicates} duplicates; {summary.shards} "
              f"shards, planned in {summary.planning_seconds:.1f}s")  # fmt: skip
        for split, c in summary.splits.items():
            print(f"  {split}: {c['samples']} samples in {c['shards']} shards")
        return 0
    rejected = ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "none"
    print(
        f"\npreprocess done: {summary.samples_in} samples in, {summary.written} written, "
        f"{sum(summary.rejected.values())} rejected ({rejected}); {summary.shards} shards "
        f"({summary.shards_skipped} already committed); {summary.samples_per_second:.1f} "
        f"samples/s; output {summary.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
