#!/usr/bin/env bash
# GPU acceptance of the training path (issue 30): one command, one table; nothing from the network.
#   scripts/gpu_acceptance.sh            # on one GPU (H100: under 8 minutes)
#   scripts/gpu_acceptance.sh --smoke    # tiny, on any device: checks the script end to end
# Options are benchmarks/gpu_acceptance.py's (--help). Expected output and how to run it on a lent GPU: docs/gpu.md.
# Python: $PYTHON, else .venv/bin/python, else python3. Where pydantic is missing (the GPU image lacks it), wheels
# in .whl/ are installed into a temporary folder; where the harness is not installed, the checkout is (no deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
site="$(mktemp -d /tmp/gpu-acceptance-site.XXXXXX)"
trap 'rm -rf "$site"' EXIT
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site/deps" .whl/*.whl
    export PYTHONPATH="$site/deps${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "pydantic is missing and .whl/ holds no wheels: see docs/gpu.md (carrying the harness's dependencies)" >&2
    exit 2
  fi
fi
if ! "$PY" -c "
import sys
from importlib.metadata import entry_points
sys.exit(0 if any(e.value.startswith('bench_harness_plugins') for e in entry_points(group='bench_harness')) else 1)
" 2>/dev/null; then
  # the built-in plugins are found through the distribution's entry points: install this checkout (offline)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site/harness" . >/dev/null
  export PYTHONPATH="$site/harness${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_acceptance.py "$@"
