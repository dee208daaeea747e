#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (the runtime pins, the dev and test extras),
# for Linux x86_64 and Python 3.11, from the same indexes scripts/setup.sh installs from. Run it
# after changing a dependency in pyproject.toml, then `bash scripts/setup.sh` and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
source scripts/uv-index-args.sh
uv pip compile pyproject.toml --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 "${args[@]}" --no-emit-index-url --no-emit-find-links \
  --custom-compile-command "bash scripts/lock.sh" -o requirements.lock
