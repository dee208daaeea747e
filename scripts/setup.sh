#!/usr/bin/env bash
# Create or refresh .venv with exactly the versions CI tested: requirements.lock (every package
# pinned, the dev and test extras included; scripts/lock.sh regenerates it from pyproject.toml),
# then clipsr itself (editable, no dependency resolution), using uv.
#
# - Installs uv for the current user when it is missing.
# - Passes pip's configured find-links / extra index URLs to uv (scripts/uv-index-args.sh).
# - Skips the install when .venv already matches the lock (a hash stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_COMPILE_BYTECODE=1  # Ray workers otherwise all compile the same modules at once
export PATH="$HOME/.local/bin:$PATH"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

stamp=".venv/.clipsr-install-stamp"
want="$(cat pyproject.toml requirements.lock scripts/setup.sh scripts/uv-index-args.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv" >&2
  "$PYTHON" -m pip install --quiet --user uv
fi
source scripts/uv-index-args.sh

[ -x .venv/bin/python ] || uv venv --quiet --python "$PYTHON" .venv
echo "setup: installing the locked dependencies (requirements.lock) and clipsr into .venv" >&2
VIRTUAL_ENV="$PWD/.venv" uv pip sync --quiet "${args[@]}" requirements.lock
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet --no-deps -e .
echo "$want" > "$stamp"
