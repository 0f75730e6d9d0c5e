"""Suite expansion, validation and submission planning at sweep scale.

    .venv/bin/python benchmarks/suite_scale.py [--runs 100000 10000] [--dir /tmp/bench-suite-scale]

For each size N, writes a suite of N runs (5 models x 4 data sets x 10 sparsities x 10 pruners x N/2000 seeds)
and measures, each in a fresh process (wall time and peak RSS of that process, import of torch included):

- ``bench run SUITE --dry-run`` with no run finished;
- the same with every run finished (the suite's compacted index holds one ``ok`` row per run, as after
  ``bench aggregate --compact``): the done-set comes from the index, no run file is opened;
- the SLURM path up to ``sbatch``: the suite loaded, the ``slurm:`` section resolved for every run and the runs
  grouped into job arrays by resource profile (what ``submit_runs`` does before it calls the cluster).

Figures are printed, never asserted (docs/measurements.md has the measured ones).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODELS = ["resnet20", "resnet32", "vgg16_bn", "conv4", "lenet5"]
DATASETS = ["cifar10", "cifar100", "fashion_mnist", "mnist"]
SPARSITIES = [round(1 - 0.8 ** k, 6) for k in range(1, 11)]
PRUNERS = ["random", "magnitude", "snip", "grasp", "synflow", "px", "px_head",
           "{name: imp, params: {levels: 5}}", "{name: magnitude, params: {scope: layerwise}}",
           "{name: synflow, params: {rounds: 10}}"]

SUITE = """name: scale{n}
grid:
  models: [{models}]
  datasets: [{datasets}]
  sparsities: [{sparsities}]
  seeds: {{range: {seeds}}}
  pruners: [{pruners}]
recipe: {{epochs: 1}}
results_root: {root}
slurm:
  time_min: 60
  runs_per_task: 4
  pruners: {{imp: {{time_min: 600}}}}
  models: {{vgg16_bn: {{mem_gb: 16}}}}
"""

SLURM_PLAN = """
import sys, time
from collections import Counter
t0 = time.perf_counter()
from bench_harness.config.suite import load_suite
from bench_harness.config.slurm import slurm_plan
suite = load_suite(sys.argv[1])
plan = slurm_plan(suite)
profiles = Counter(plan.for_run(r) for r in suite.runs)
print(f"{len(suite.runs)} runs, {len(profiles)} resource profiles, {time.perf_counter() - t0:.2f} s in-process")
"""


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout's last line) of a command in a fresh process (GNU time)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return wall, peak_kb / 1024, (proc.stdout.strip().splitlines() or [""])[-1]


def finish_all(suite_path: Path) -> None:
    """Record every run of the suite as finished: one compacted part with one ``ok`` row per run (the columns the
    done-set reads, in the layout `compact()` leaves)."""
    import pyarrow as pa

    from bench_harness import paths
    from bench_harness.config.suite import load_suite
    from bench_harness.results import dataset

    suite = load_suite(suite_path)
    root, name = suite.results_root, suite.name
    ids = [r.run_id for r in suite.runs]
    runs = paths.runs_dir(root, name)
    runs.mkdir(parents=True, exist_ok=True)
    dataset.write_part(runs, dataset.new_part_name([]), pa.table({"run_id": ids, "status": ["ok"] * len(ids)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100_000, 10_000])
    parser.add_argument("--dir", default="/tmp/bench-suite-scale")
    args = parser.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    bench = str(Path(sys.executable).parent / "bench")
    cell = len(MODELS) * len(DATASETS) * len(SPARSITIES) * len(PRUNERS)
    wall, peak, _ = measure([sys.executable, "-c", "import torch, bench_harness.config.suite"])
    print(f"reference: python -c 'import torch, bench_harness.config.suite': {wall:.2f} s, {peak:.0f} MB")
    for n in args.runs:
        seeds = max(1, n // cell)
        path = base / f"scale{n}.yaml"
        path.write_text(SUITE.format(n=n, models=", ".join(MODELS), datasets=", ".join(DATASETS),
                                     sparsities=", ".join(map(str, SPARSITIES)), seeds=seeds,
                                     pruners=", ".join(PRUNERS), root=base / "results"))
        for label, cmd in (("dry-run, none finished", [bench, "run", str(path), "--dry-run"]),):
            wall, peak, last = measure(cmd)
            print(f"{n:>7} runs  {label:<28} {wall:6.2f} s  {peak:6.0f} MB   ({last})")
        finish_all(path)
        wall, peak, last = measure([bench, "run", str(path), "--dry-run"])
        print(f"{n:>7} runs  {'dry-run, all finished':<28} {wall:6.2f} s  {peak:6.0f} MB   ({last})")
        wall, peak, last = measure([sys.executable, "-c", SLURM_PLAN, str(path)])
        print(f"{n:>7} runs  {'SLURM plan up to sbatch':<28} {wall:6.2f} s  {peak:6.0f} MB   ({last})")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
