#!/usr/bin/env bash
# The test suite, after setting up the environment: scripts/test.sh [pytest args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
export MTSMART_DATA="${MTSMART_DATA:-$repo/../shared/data}"
cd "$repo"
exec "$PY" -m pytest "$@"
