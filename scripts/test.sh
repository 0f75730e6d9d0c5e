#!/usr/bin/env bash
# The test command: install with test extras, get the real data the integration tests use, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
scripts/get_fashion_mnist.sh || true
exec .venv/bin/python -m pytest -q "$@"
