#!/usr/bin/env bash
# The main job: install, get Fashion-MNIST, run the quickstart suite with the local executor, print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
download=""
scripts/get_fashion_mnist.sh || download="--download"
exec .venv/bin/bench run suites/quickstart.yaml $download "$@"
