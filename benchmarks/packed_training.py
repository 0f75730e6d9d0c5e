"""Throughput of packed training (runs trained together through vmap) against the same runs one after another.

    .venv/bin/python benchmarks/packed_training.py [--model lenet5] [--runs 8] [--epochs 1] [--device cpu]

The runs: one model and data set (synthetic, in memory), magnitude pruning at sparsities 0.5/0.9 and several
seeds. Both ways execute the real runner (pruning, training, evaluation, rows); the figure is runs per minute and
the ratio packed / sequential, measured in the same process.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import yaml

from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.running.runner import execute_packed, execute_run

SUITE = """
name: packbench
grid:
  models: [{model}]
  datasets: [{{name: synthetic, params: {{num_classes: 10, image_size: {size}, train_size: 2048, test_size: 256}}}}]
  sparsities: [0.5, 0.9]
  seeds: {seeds}
  pruners: [magnitude]
recipe: {{epochs: {epochs}, batch_size: 64, lr: 0.05, augment: false}}
device: {device}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    size = {"lenet5": 28, "resnet20": 32}.get(args.model, 32)
    text = SUITE.format(model=args.model, size=size, seeds=list(range(max(1, args.runs // 2))), epochs=args.epochs,
                        device=args.device)
    times = {}
    for way in ("sequential", "packed"):
        suite = validate_suite(parse_suite(yaml.safe_load(text), "packbench.yaml"))
        with tempfile.TemporaryDirectory() as root:
            suite = suite.with_settings(results_root=root)
            t0 = time.perf_counter()
            rows = execute_packed(suite.runs) if way == "packed" else [execute_run(r) for r in suite.runs]
            times[way] = time.perf_counter() - t0
            assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    n = len(suite.runs)
    print(f"{args.model}, {n} runs of {args.epochs} epoch(s) on 2,048 synthetic images, {args.device}")
    for way, t in times.items():
        print(f"  {way:10}: {t:7.1f} s  ({60 * n / t:.1f} runs/min)")
    print(f"  packed / sequential throughput: {times['sequential'] / times['packed']:.2f}x")


if __name__ == "__main__":
    main()
