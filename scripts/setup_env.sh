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
  echo "installing bench-harness into .venv (log: .venv/install.log)" >&2
  { .venv/bin/python -m pip install --upgrade pip "setuptools>=68" wheel \
      && .venv/bin/python -m pip install -c constraints.txt -e "$spec"; } > .venv/install.log 2>&1 \
    || { tail -30 .venv/install.log >&2; echo "installation failed (see .venv/install.log)" >&2; exit 1; }
  .venv/bin/python -c "import bench_harness, torch, torchvision" || { echo "installation failed" >&2; exit 1; }
  touch "$stamp"
fi
