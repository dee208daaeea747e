#!/usr/bin/env bash
# The README's first command: set up .venv, then run `clipsr demo` (the whole pipeline on
# bundled data: local Ray, an embedded MLflow store, local disk). Extra arguments go to the
# demo, e.g. `bash scripts/demo.sh workdir=/tmp/demo` or `bash scripts/demo.sh fresh=true`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/runtime-env.sh
exec .venv/bin/clipsr demo "$@"
