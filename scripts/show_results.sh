#!/usr/bin/env bash
# The end of the quickstart, for any suite run locally: writes the suite's leaderboard (Markdown) and its plots
# with `bench leaderboard` and `bench plot`, prints the leaderboard, the paths of the leaderboard and of the
# accuracy-vs-density plot, and the next commands.
# Usage: scripts/show_results.sh SUITE_FILE [--results-root DIR]
# BENCH overrides the bench command (default: .venv/bin/bench).
set -euo pipefail
suite_file=$1
shift
read -r -a bench <<< "${BENCH:-.venv/bin/bench}"
here() { case "$1" in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }

# `bench plot` says where the suite's plots went: <results>/<suite>/plots
plotted=$("${bench[@]}" plot "$suite_file" "$@")
plots_dir=${plotted##* files in }
suite_dir=$(dirname "$plots_dir")
suite=$(basename "$suite_dir")
board="$suite_dir/leaderboard.md"
"${bench[@]}" leaderboard "$suite_file" "$@" --format md --out "$board" > /dev/null
density=$(ls "$plots_dir"/accuracy_vs_density_*.png 2>/dev/null | head -1 || true)

echo
cat "$board"
echo
echo "leaderboard: $(here "$board")   (top-1 in %, mean ± 95 % CI over seeds; '(chance)': no better than guessing)"
[ -n "$density" ] && echo "plot:        $(here "$density")   (accuracy vs density; SVG and PDF beside it)"
cat <<NEXT

next:
  ${bench[*]} plot $suite --style paper            # every plot (cost, model size, per-layer densities), paper-sized
  ${bench[*]} publish $suite --out site            # a static leaderboard site: open site/index.html
  ${bench[*]} leaderboard $suite --format latex    # the table for a paper (also csv, parquet)
  your own pruner: the plugin example in README.md (docs/writing-a-pruner.md), then ${bench[*]} check-plugin NAME
NEXT
