#!/usr/bin/env bash
# The test command: install with test extras, get the real data the integration tests use, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
scripts/get_fashion_mnist.sh || true
# Debian's chromium for the published-site browser test (playwright drives it; no browser download)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } \
    || echo "note: chromium could not be installed; the browser test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
