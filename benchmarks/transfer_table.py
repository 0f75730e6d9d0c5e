"""The transfer table of docs/measurements.md: each pruner's top-1 from a pretrained start against a random init.

    .venv/bin/bench run suites/transfer_mnist_fashion.yaml            # the runs (about 64 trainings of LeNet-5)
    .venv/bin/python benchmarks/transfer_table.py [--results results] [--suite transfer_mnist_fashion]

Prints a Markdown table: one row per pruner and sparsity, the mean top-1 (and the seeds' range) of the runs whose
model entry names weights (the transfer) and of those that do not (the random-init control), their difference,
and the dense references. Rows are told apart by the run's configuration (``model_weights`` in its ``config``),
not by the suite file.
"""
from __future__ import annotations

import argparse
import json

import pandas as pd

from bench_harness.results.store import load_results


def start_of(config: str) -> str:
    weights = json.loads(config).get("model_weights")
    return f"pretrained ({weights})" if weights else "random init"


def cell(values: pd.Series) -> str:
    values = values.dropna() * 100
    if values.empty:
        return "—"
    spread = f" ({values.min():.2f}–{values.max():.2f})" if len(values) > 1 else ""
    return f"{values.mean():.2f}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="results")
    parser.add_argument("--suite", default="transfer_mnist_fashion")
    args = parser.parse_args()
    runs = load_results(args.results, [args.suite])
    ok = runs[runs.status == "ok"].copy()
    failed = runs[runs.status != "ok"]
    ok["start"] = ok.config.map(start_of)
    starts = sorted(ok.start.unique(), key=lambda s: s == "random init")  # pretrained first
    print(f"{len(ok)} runs ok, {len(failed)} failed; seeds {sorted(ok.seed.unique())}\n")
    header = ["pruner", "sparsity"] + [f"top-1 % {s}" for s in starts] + ["pretrained − random"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    order = ["dense", "px", "snip", "synflow", "magnitude", "random"]
    for pruner in sorted(ok.pruner.unique(), key=lambda p: order.index(p) if p in order else len(order)):
        mine = ok[ok.pruner == pruner]
        for sparsity in sorted(mine.target_sparsity.unique()):
            here = mine[mine.target_sparsity == sparsity]
            means = [here[here.start == s].top1.mean() * 100 for s in starts]
            cells = [cell(here[here.start == s].top1) for s in starts]
            diff = f"{means[0] - means[-1]:+.2f}" if len(means) == 2 else ""
            label = "—" if pruner == "dense" else f"{sparsity:g}"
            print(f"| {pruner} | {label} | " + " | ".join(cells) + f" | {diff} |")
    if len(failed):
        print("\nfailed:", failed[["pruner", "target_sparsity", "seed", "error"]].to_string(index=False))


if __name__ == "__main__":
    main()
