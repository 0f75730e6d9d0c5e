"""Submission time and the per-run overhead the harness adds on a SLURM cluster.

    export SLURM_CONF=...   # e.g. scripts/dev_slurm.sh start
    .venv/bin/python benchmarks/slurm_overhead.py [--runs 10]

Submits a suite of short runs (one run per array task), waits, and compares each task's elapsed time from sacct
with the run's own wall time (started_at .. finished_at in its result row): the difference is what the job adds
(SLURM start, Python and torch import, submitit, the run ledger). Also times `bench run --executor slurm` itself.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_harness.results.store import load_results
from bench_harness.slurm import ledger
from bench_harness.slurm.cluster import sacct_states


def seconds(elapsed: str) -> float:
    days, _, rest = elapsed.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days) if days else 0.0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    sparsities = [round(0.05 + 0.9 * i / max(args.runs - 1, 1), 4) for i in range(args.runs)]
    suite = root / "overhead.yaml"
    suite.write_text(f"""
name: overhead
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 256, test_size: 64}}}}]
  sparsities: {sparsities}
  pruners: [magnitude]
recipe: {{epochs: 1, batch_size: 32}}
results_root: {root / 'results'}
slurm: {{cpus: 1, time_min: 10}}
""")
    bench = str(Path(sys.executable).parent / "bench")
    t0 = time.perf_counter()
    subprocess.run([bench, "run", str(suite), "--executor", "slurm"], check=True, capture_output=True)
    submit = time.perf_counter() - t0
    subprocess.run([bench, "run", str(suite), "--executor", "slurm", "--wait", "--no-progress"], check=True,
                   capture_output=True)
    df = load_results(root / "results", ["overhead"]).set_index("run_id")
    entries = ledger.read_all(root / "results", "overhead")
    states = sacct_states([e.job_id for e in entries.values()])
    overheads, runs = [], []
    for run_id, entry in entries.items():
        row = df.loc[run_id]
        own = (row.finished_at - row.started_at).total_seconds()
        overheads.append(seconds(states[entry.job_id]["elapsed"]) - own)
        runs.append(own)
    print(f"{args.runs} runs, one per array task, on this cluster:")
    print(f"  `bench run --executor slurm` (submission, returns at once): {submit:.2f} s")
    print(f"  run wall time inside the job: median {statistics.median(runs):.2f} s")
    print(f"  per-run overhead (task elapsed in sacct - run wall time): median {statistics.median(overheads):.1f} s, "
          f"max {max(overheads):.1f} s (sacct reports whole seconds)")


if __name__ == "__main__":
    main()
