"""Sweep throughput of ``bench run --workers N`` for 1, 2, ... and all cores, on the same suite, each in a fresh
results folder.

    .venv/bin/python benchmarks/workers_throughput.py [--workers 1 2] [--runs 8] [--model lenet5] [--epochs 2]

The suite: one model on synthetic in-memory data (4,096 training images), random / magnitude / SynFlow pruning at
sparsities 0.5 and 0.9, seeds as needed for ``--runs``. Each measurement is a whole ``bench run`` in its own
process (import, plugin loading, worker start-up and all runs): wall time and runs per minute, and the ratio to one
worker. With the cores divided between workers (the executor sets torch, OpenMP and MKL threads to cores / N),
N workers should never be slower than one. Figures are printed, never asserted (docs/measurements.md).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """name: workersbench
grid:
  models: [{model}]
  datasets: [{{name: synthetic, params: {{num_classes: 10, image_size: {size}, train_size: 4096, test_size: 512}}}}]
  sparsities: [0.5, 0.9]
  seeds: {seeds}
  pruners: [random, magnitude, synflow]
recipe: {{epochs: {epochs}, batch_size: 128, lr: 0.05, augment: false}}
scoring: {{examples: 256}}
device: cpu
"""


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, cores}))
    parser.add_argument("--runs", type=int, default=12, help="about this many runs (multiples of 6)")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    size = {"lenet5": 28}.get(args.model, 32)
    seeds = list(range(max(1, round(args.runs / 6))))
    bench = Path(sys.executable).with_name("bench")
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "workersbench.yaml"
        suite.write_text(SUITE.format(model=args.model, size=size, seeds=seeds, epochs=args.epochs))
        n = 6 * len(seeds)
        print(f"{args.model}, {n} runs ({args.epochs} epochs each, synthetic data), {cores} cores")
        base = None
        for workers in args.workers:
            root = Path(tmp) / f"results-{workers}"
            t0 = time.perf_counter()
            proc = subprocess.run([str(bench), "run", str(suite), "--workers", str(workers), "--results-root",
                                   str(root), "--no-progress"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit(f"bench run --workers {workers} failed")
            base = base or wall
            print(f"  --workers {workers}: {wall:6.1f} s  ({60 * n / wall:5.1f} runs/min, "
                  f"{base / wall:.2f}x the throughput of {args.workers[0]} worker(s))", flush=True)


if __name__ == "__main__":
    main()
