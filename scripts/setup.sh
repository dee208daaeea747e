#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack (pyproject.toml), using uv.
#
# - Installs uv for the current user when it is missing.
# - Passes pip's configured find-links / extra index URLs to uv (uv does not read pip's config;
#   without them it would download ~3 GB of CUDA torch instead of using local mirrors).
# - Skips the install when .venv already matches pyproject.toml (a hash stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_COMPILE_BYTECODE=1  # Ray workers otherwise all compile the same modules at once
export PATH="$HOME/.local/bin:$PATH"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

stamp=".venv/.clipsr-install-stamp"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv" >&2
  "$PYTHON" -m pip install --quiet --user uv
fi

args=()
for link in $("$PYTHON" -m pip config get global.find-links 2>/dev/null || true); do
  [ -e "${link#file://}" ] && args+=(--find-links "$link")
done
for index in $("$PYTHON" -m pip config get global.extra-index-url 2>/dev/null || true); do
  [ -e "${index#file://}" ] && args+=(--extra-index-url "$index")
done
# Local mirrors hold only some versions; let uv take each package's best match from any index.
[ ${#args[@]} -gt 0 ] && args+=(--index-strategy unsafe-best-match)

[ -x .venv/bin/python ] || uv venv --quiet --python "$PYTHON" .venv
echo "setup: installing clipsr and its pinned dependencies into .venv" >&2
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet "${args[@]}" -e ".[dev]"
echo "$want" > "$stamp"
