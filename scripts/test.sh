#!/usr/bin/env bash
# The README's test command: set up .venv, check lint and formatting, run the whole suite.
# Extra arguments go to pytest (e.g. -m "not slow", -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/runtime-env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
