#!/usr/bin/env bash
# Multi-task training: scripts/train_mt.sh [CONFIG.yaml] [key=value ...]
# Default config: scripts/configs/quickstart.yaml. NPROC=N runs N processes with torchrun
# (extra rendezvous options for several machines via TORCHRUN_ARGS, see docs/distributed.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
if [ $# -eq 0 ] || [[ "$1" == *=* ]]; then
  set -- "$repo/scripts/configs/quickstart.yaml" "$@"
fi
export MTSMART_DATA="${MTSMART_DATA:-$repo/../shared/data}"
if [ "${NPROC:-1}" -gt 1 ]; then
  exec "$(dirname "$PY")/torchrun" --nproc_per_node="$NPROC" ${TORCHRUN_ARGS:-} -m mtsmart train "$@"
fi
exec "$PY" -m mtsmart train "$@"
