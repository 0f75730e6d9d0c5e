"""Fault injection: run a small suite while killing runners at random points (SIGKILL, SIGTERM), truncating result
shards and starting a second runner concurrently; then finish the suite and check that every run has exactly one
row and that the rows equal an undisturbed run's (same seeds, same metrics).

    .venv/bin/python benchmarks/faults.py [--iterations 50] [--seed 0] [--keep DIR]

Prints the figures recorded in docs/measurements.md: runs, faults injected by kind, rows lost, rows duplicated,
rows that differ from the reference, leftover temporary files.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

BENCH = str(Path(sys.executable).with_name("bench"))
SUITE = """
name: faults
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 512, test_size: 128}}}}]
  sparsities: [0.5, 0.8]
  seeds: [0, 1]
  pruners: [magnitude, random, snip]
recipe: {{epochs: 3, batch_size: 32, lr: 0.05}}
results_root: {root}
"""
COMPARED = ["top1", "top5", "loss", "top1_before_training", "achieved_sparsity", "params_nonzero"]


def _rows(root: Path) -> pd.DataFrame:
    from bench_harness.results.store import load_results

    return load_results(root, ["faults"]).set_index("run_id").sort_index()


def _run(path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([BENCH, "run", str(path), "--no-progress", *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="keep the work folder here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-faults-"))
    ref_suite, suite = work / "reference.yaml", work / "faults.yaml"
    ref_suite.write_text(SUITE.format(root=work / "reference"))
    suite.write_text(SUITE.format(root=work / "disturbed"))
    t0 = time.perf_counter()
    subprocess.run([BENCH, "run", str(ref_suite), "--no-progress"], check=True, capture_output=True)
    reference = _rows(work / "reference")
    runs = len(reference)
    faults: collections.Counter = collections.Counter()
    shards = work / "disturbed" / "faults" / "runs"
    for i in range(args.iterations):
        procs = [_run(suite)]
        if rng.random() < 0.3:
            procs.append(_run(suite, "--workers", "2"))
            faults["second runner"] += 1
        time.sleep(rng.uniform(1.0, 8.0))
        victim = rng.choice(procs)
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        if victim.poll() is None:
            os.killpg(victim.pid, sig)  # the runner and its workers
            faults[signal.Signals(sig).name] += 1
        if shards.is_dir() and rng.random() < 0.3:
            files = sorted(shards.glob("*.parquet"))
            if files:
                f = rng.choice(files)
                f.write_bytes(f.read_bytes()[: rng.randint(0, 200)])
                faults["truncated shard"] += 1
        for p in procs:
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        print(f"iteration {i + 1}/{args.iterations}: {dict(faults)}", file=sys.stderr)
    subprocess.run([BENCH, "run", str(suite), "--no-progress"], check=True, capture_output=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disturbed = _rows(work / "disturbed")
    files = list(shards.glob("*.parquet"))
    lost = len(set(reference.index) - set(disturbed.index))
    duplicated = len(files) - len({f.stem for f in files}) + int(disturbed.index.duplicated().sum())
    common = reference.index.intersection(disturbed.index)
    differ = int((reference.loc[common, COMPARED] != disturbed.loc[common, COMPARED]).any(axis=1).sum())
    leftovers = len([f for f in shards.iterdir() if f.name.endswith(".tmp")])
    print(f"runs {runs}, iterations {args.iterations}, faults {dict(faults)} ({sum(faults.values())} in all), "
          f"rows lost {lost}, rows duplicated {duplicated}, rows differing from the reference {differ}, "
          f"leftover temporary files {leftovers}, {time.perf_counter() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if lost or duplicated or differ else 0


if __name__ == "__main__":
    sys.exit(main())
