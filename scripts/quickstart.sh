#!/usr/bin/env bash
# The README's first command: set up .venv, train the tiny 4x model on bundled photographs
# (plain PyTorch, CPU, ~2 minutes), evaluate against bicubic and upscale with several prompts.
# Extra arguments go to jobs.quickstart (e.g. --steps 200, model.generator.wiring=release).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/runtime-env.sh
exec .venv/bin/python -m jobs.quickstart "$@"
