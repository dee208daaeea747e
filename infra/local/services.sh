#!/usr/bin/env bash
# Local services for clipsr on 127.0.0.1: S3-compatible store (moto), MLflow server, Ray head.
#   infra/local/services.sh up       start them (waits until each answers), print the env
#   infra/local/services.sh status   report each one
#   infra/local/services.sh down     stop everything started (idempotent)
# Then: source .services/env.sh   (see infra/local/README.md for ports and settings)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  echo "services: .venv is missing; run 'bash scripts/setup.sh' first" >&2
  exit 1
fi
source scripts/runtime-env.sh
exec .venv/bin/python infra/local/services.py "$@"
