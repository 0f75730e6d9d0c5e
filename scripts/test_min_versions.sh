#!/usr/bin/env bash
# The declared minimum versions: installs bench-harness into .venv-min with constraints-min.txt (every dependency
# at the lowest version pyproject.toml admits, torch 2.3 included: about 3 GB downloaded once) and runs the tests that
# exercise those libraries (suites and schemas, pruners, results, leaderboards, plots, the CLI). CI runs it once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv-min/bin/python ] || "$PYTHON" -m venv .venv-min
stamp=".venv-min/.installed-$(cat pyproject.toml constraints-min.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing bench-harness at its minimum dependency versions into .venv-min (log: .venv-min/install.log)" >&2
  { .venv-min/bin/python -m pip install --upgrade pip "setuptools>=68" wheel \
      && .venv-min/bin/python -m pip install -c constraints-min.txt -e ".[test]"; } > .venv-min/install.log 2>&1 \
    || { tail -30 .venv-min/install.log >&2; echo "installation failed (see .venv-min/install.log)" >&2; exit 1; }
  touch "$stamp"
fi
.venv-min/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE '^(pandas|pyarrow|numpy|scipy|pydantic|matplotlib|timm|pyyaml|submitit|pluggy|tabulate|tqdm|torch)==' >&2
# -p no:cacheprovider keeps the checkout clean
exec .venv-min/bin/python -m pytest -q -p no:cacheprovider "$@" tests/test_suite.py tests/test_identity.py \
  tests/test_masking.py tests/test_pruners_basic.py tests/test_leaderboard.py tests/test_contract_v2.py \
  tests/test_cli_integration.py tests/test_reliability.py tests/test_datasets.py \
  tests/test_store_integrity.py tests/test_checkpoint_safety.py tests/test_input_integrity.py
