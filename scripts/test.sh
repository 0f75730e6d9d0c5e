#!/usr/bin/env bash
# The test command: install with test extras, get the real data and the programs the integration tests use
# (Fashion-MNIST, Chromium, SLURM), run pytest. `--all` also runs the slow tests (CI does). `--fast` runs the unit
# tier only (no `integration` or `slow` tests, nothing installed outside .venv): under 2 minutes, for iterating.
#
# Side effects, as root on Debian/Ubuntu only: apt-get installs dataset-fashion-mnist, chromium, and SLURM with
# MariaDB (slurm-wlm, slurmdbd, mariadb-server). The SLURM tests start a private single-node cluster under
# /tmp/bench-slurm-tests and stop it (daemons and munged) when they end. `--no-system` installs nothing outside
# .venv: the tests that need those programs or data are then skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=()
system=1
while [ $# -gt 0 ]; do
  case "$1" in
    --all) marker=(-m "slow or not slow"); shift ;;
    --fast) marker=(-m "not slow and not integration"); system=0; shift ;;
    --no-system) system=0; shift ;;
    *) break ;;
  esac
done
scripts/setup_env.sh test
if [ "$system" = 1 ]; then
  scripts/get_fashion_mnist.sh || true
  # Debian's chromium for the published-site browser test (playwright drives it; no browser download)
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "note: chromium could not be installed; the browser test will be skipped" >&2
  fi
  # a real single-node SLURM cluster for the SLURM executor's tests (the tests start and stop it)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    scripts/dev_slurm.sh install || echo "note: SLURM could not be installed; the SLURM tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "${marker[@]}" "$@"
