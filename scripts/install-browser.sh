#!/usr/bin/env bash
# Debian's Chromium for the test that renders the evaluation report headless (CI runs this).
# Needs root (or passwordless sudo) and the Debian package mirror; does nothing if present.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  run=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  run=(sudo -n)
else
  echo "install-browser: not root and no passwordless sudo; install Debian's 'chromium' package" \
    "yourself (the report rendering test is skipped without it)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -qq
"${run[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
