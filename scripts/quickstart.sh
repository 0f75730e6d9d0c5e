#!/usr/bin/env bash
# The main job: install, get Fashion-MNIST, run the quickstart suite with the local executor, then write its
# leaderboard and accuracy-vs-density plot and print where they are and the next commands (scripts/show_results.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
download=""
scripts/get_fashion_mnist.sh || download="--download"
status=0
.venv/bin/bench run suites/quickstart.yaml $download "$@" || status=$?
if [ "$status" -eq 130 ]; then
  exit 130  # interrupted: the same command continues
fi
root=()
while [ $# -gt 0 ]; do  # the results root the run used, if the command line chose one
  case "$1" in
    --results-root) root=(--results-root "$2"); shift 2 ;;
    --results-root=*) root=(--results-root "${1#*=}"); shift ;;
    *) shift ;;
  esac
done
scripts/show_results.sh suites/quickstart.yaml ${root[@]+"${root[@]}"}
exit "$status"  # 1 when a run failed (the table shows it)
