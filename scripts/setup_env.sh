#!/usr/bin/env bash
# Creates .venv (if missing) and installs bench-harness with the pinned torch/torchvision of constraints.txt.
# Usage: scripts/setup_env.sh [extras]   e.g. scripts/setup_env.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -c constraints.txt -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import bench_harness, torch, torchvision" || { echo "installation failed" >&2; exit 1; }
  touch "$stamp"
fi
