"""``clipsr preprocess CONFIG [a.b=value ...]``: shard a captioned corpus with Ray Data.

Also ``python -m jobs.preprocess`` (e.g. under ``ray job submit``). Runs on a local Ray unless
RAY_ADDRESS or ``ray_address`` names a cluster. A rerun resumes; ``--overwrite`` starts over.
"""

from __future__ import annotations

import os
import sys

from jobs import console

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
PROG = "clipsr preprocess"


def build_parser() -> console.Parser:
    p = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (see configs/preprocess/)")
    p.add_argument("overrides", nargs="*", help="overrides such as output=s3://b/p scales=[4,8]")
    p.add_argument("--overwrite", action="store_true", help="start over (ignore committed shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--plan-only", action="store_true", help="print the splits and shard counts, then stop"
    )
    return p


def summary_line(summary) -> str:
    rejected = ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "none"
    return (
        f"preprocess done: {summary.samples_in} samples in, {summary.written} written, "
        f"{sum(summary.rejected.values())} rejected ({rejected}); {summary.shards} shards "
        f"({summary.shards_skipped} already committed); {summary.samples_per_second:.1f} "
        f"samples/s; output {summary.output}"
    )


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    cfg = load_preprocess_config(args.config, args.overrides)
    if args.overwrite:
        cfg.overwrite = True
    summary = run_preprocess(cfg, progress=not args.no_progress, plan_only=args.plan_only)
    if args.plan_only:
        print(f"plan: {summary.listed} listed, {summary.duplicates} duplicates; {summary.shards} "
              f"shards, planned in {summary.planning_seconds:.1f}s")  # fmt: skip
        for split, c in summary.splits.items():
            print(f"  {split}: {c['samples']} samples in {c['shards']} shards")
        return 0
    print(summary_line(summary))
    if summary.total_written == 0:
        return console.fail(
            PROG,
            f"no sample was written to {summary.output}: every sample was rejected (see "
            f"{summary.output}/rejects.jsonl); check source.kind and the corpus layout",
            1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
