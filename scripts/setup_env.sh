#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install mtsmart into it.
# Usage: source scripts/setup_env.sh   (sets PY to the environment's python)
# Env: MTSMART_VENV (default .venv in the repo), MTSMART_PYTHON (default python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MTSMART_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${MTSMART_PYTHON:-python3}" -m venv "$venv"
fi
PY="$venv/bin/python"
# Reinstall only when pyproject.toml changed since the last install.
stamp="$venv/.mtsmart-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$PY" -m pip install --quiet --upgrade pip
  # The CPU wheel first: pyproject's looser torch range is then already satisfied, so pip does
  # not pull a multi-GB CUDA build. On a GPU machine install your CUDA torch before this script.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --quiet "torch==2.13.0"
  "$PY" -m pip install --quiet -e "$repo[test,minilm]"
  echo "$want" > "$stamp"
fi
export PY
