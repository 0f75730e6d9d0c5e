"""The everyday commands on a small and a large suite, each in a fresh process (issue 28).

    .venv/bin/python benchmarks/cli_speed.py [--runs 100000] [--fresh 20000 100000] [--dir /tmp/bench-cli-speed]

Writes a 10-run suite (LeNet-5 on Fashion-MNIST, 5 pruners x 2 sparsities; one run file per run) and an N-run
suite (every run finished, held by one compacted part in the real schema), then measures, each in a fresh
process (wall time and peak RSS, imports included; "torch" says whether the process imported it):
`bench results`, `leaderboard`, `verify`, `validate`, `plugins`, `run --dry-run` and the SLURM path up to
``sbatch`` on both suites (`publish` on the small one); the incremental index update after 1,000 new run files
beside N; and the first `bench aggregate` over F fresh run files for each F of ``--fresh``. The commands run
from a temporary folder with the inherited PYTHONPATH, so the code measured is whatever that puts first
(``PYTHONPATH=/path/to/checkout:...``); ``--before PYTHONPATH`` measures two versions of the code alternately (the
commands only). The plugin registry's cache is a file in the temporary folder (built by the first command).
Figures are printed, never asserted (docs/measurements.md has the measured ones).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregate_speed import _row, write_shards  # noqa: E402
from suite_scale import DATASETS, MODELS, PRUNERS, SPARSITIES, SUITE  # noqa: E402

SMALL = """name: small
grid:
  models: [lenet5]
  datasets: [fashion_mnist]
  sparsities: [0.5, 0.9]
  seeds: [0]
  pruners: [random, magnitude, snip, grasp, synflow]
recipe: {{epochs: 1}}
results_root: {root}
slurm:
  time_min: 60
"""

# The SLURM path up to sbatch: what `bench run --executor slurm` does before it asks the cluster.
SLURM_PLAN = """
import sys
from collections import Counter
from bench_harness.config.suite import load_suite
from bench_harness.config.slurm import slurm_plan
try:
    from bench_harness.contract.registry import light_registry
    suite = load_suite(sys.argv[1], light_registry())
except ImportError:
    suite = load_suite(sys.argv[1])
plan = slurm_plan(suite)
profiles = Counter(plan.for_run(r) for r in suite.runs)
print(f"{len(suite.runs)} runs, {len(profiles)} resource profiles; torch={'torch' in sys.modules}")
"""

# Run a command of the CLI and say afterwards whether it imported torch.
CLI = """
import sys
from bench_harness.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print(f"torch={'torch' in sys.modules}", file=sys.stderr)
sys.exit(code)
"""

INCREMENTAL = """
import sys, time
from bench_harness.results.shard_index import update_index
t0 = time.perf_counter()
table, stats = update_index(sys.argv[1], sys.argv[2])
print(f"{time.perf_counter() - t0:.2f} s in-process, read {stats['read']}, {table.num_rows} rows")
"""


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS in MB (GNU time), stdout's last line, whether torch was imported) of a command in a
    fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    lines = proc.stderr.strip().splitlines()
    peak_kb = int(lines[-1])
    torch = "yes" if "torch=True" in proc.stderr or "torch=True" in proc.stdout else (
        "no" if "torch=False" in proc.stderr or "torch=False" in proc.stdout else "?")
    return wall, peak_kb / 1024, (proc.stdout.strip().splitlines() or [""])[-1][:70], torch


def _suite_at(suite_path: Path, cwd: Path):
    """The suite loaded as `bench` run in ``cwd`` would load it (relative paths against ``cwd``)."""
    from bench_harness.config.suite import load_suite

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return load_suite(suite_path)
    finally:
        os.chdir(old)


def finished_part(suite_path: Path, cwd: Path) -> int:
    """Every run of the suite finished: one compacted part with one full row per run (ids from the suite)."""
    import pyarrow as pa

    from bench_harness import paths
    from bench_harness.results import dataset
    from bench_harness.results.schema import SCHEMA

    suite = _suite_at(suite_path, cwd)
    rows = []
    for i, run in enumerate(suite.runs):
        row = _row(i)
        row.update(run_id=run.run_id, suite=suite.name, model=run.model.name, dataset=run.dataset.name,
                   pruner=run.pruner.name, seed=run.seed, target_sparsity=run.sparsity, **_identity_of(run))
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    table = pa.table({f.name: (table.column(f.name).cast(f.type) if f.name in table.column_names
                               else pa.nulls(len(rows), f.type)) for f in SCHEMA})
    runs = paths.runs_dir(suite.results_root, suite.name)
    runs.mkdir(parents=True, exist_ok=True)
    dataset.write_part(runs, dataset.new_part_name([]), table)
    return len(rows)


def _identity_of(run) -> dict:
    """The identity columns a real run's row carries (its config and parameters), so the leaderboard groups the
    synthetic rows into the suite's experiments as it would the real ones."""
    from bench_harness.running.runner import identity_columns

    columns = identity_columns(run)
    return {k: columns[k] for k in ("config", "pruner_params", "model_params", "ablation")}


def small_shards(suite_path: Path, cwd: Path) -> None:
    from bench_harness.results.store import write_shard

    suite = _suite_at(suite_path, cwd)
    for i, run in enumerate(suite.runs):
        row = _row(i)
        row.update(run_id=run.run_id, suite=suite.name, model=run.model.name, dataset=run.dataset.name,
                   pruner=run.pruner.name, seed=run.seed, target_sparsity=run.sparsity, **_identity_of(run))
        write_shard(row, suite.results_root, suite.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="size of the large suite")
    parser.add_argument("--fresh", type=int, nargs="*", default=[20_000], help="fresh run files for a first "
                        "aggregate (e.g. 20000 100000)")
    parser.add_argument("--dir", default="/tmp/bench-cli-speed")
    parser.add_argument("--only", nargs="*", help="only these labels (e.g. results validate)")
    parser.add_argument("--before", metavar="PYTHONPATH", help="also measure the code this PYTHONPATH puts first "
                        "('' for the environment's own install), alternating with the inherited one, for ratios "
                        "on a machine whose load changes")
    parser.add_argument("--rounds", type=int, default=3, help="with --before: rounds of each command (median)")
    args = parser.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    py = sys.executable
    print(f"python {py}; PYTHONPATH={os.environ.get('PYTHONPATH', '')}; load {os.getloadavg()}")
    wall, peak, _, _ = timed([py, "-c", "import torch"], base)
    print(f"reference: python -c 'import torch': {wall:.2f} s, {peak:.0f} MB")
    wall, peak, _, _ = timed([py, "-m", "bench_harness.cli", "--help"], base)
    print(f"reference: bench --help: {wall:.2f} s, {peak:.0f} MB")
    results = base / "results"
    small = base / "small.yaml"
    small.write_text(SMALL.format(root=results))
    small_shards(small, base)
    cell = len(MODELS) * len(DATASETS) * len(SPARSITIES) * len(PRUNERS)
    big = base / f"scale{args.runs}.yaml"
    big.write_text(SUITE.format(n=args.runs, models=", ".join(MODELS), datasets=", ".join(DATASETS),
                                sparsities=", ".join(map(str, SPARSITIES)), seeds=max(1, args.runs // cell),
                                pruners=", ".join(PRUNERS), root=results))
    t0 = time.perf_counter()
    n = finished_part(big, base)
    print(f"large suite: {n} runs, one compacted part ({time.perf_counter() - t0:.1f} s to write)")
    cli = [py, "-c", CLI]
    os.environ.setdefault("BENCH_HARNESS_REGISTRY_CACHE", str(base / "registry.json"))
    before_env = None
    if args.before is not None:
        before_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if args.before:
            before_env["PYTHONPATH"] = args.before
        for env in (before_env, None):  # warm: the registry's cache built, files in the page cache
            timed([*cli, "validate", str(small)], base, env)
    site = base / "site"
    for label, path in (("small", small), ("large", big)):
        name = path.stem
        commands = [
            ("results", [*cli, "results", str(path)]),
            ("leaderboard", [*cli, "leaderboard", name, "--results-root", str(results)]),
            ("verify", [*cli, "verify", str(path)]),
            ("validate", [*cli, "validate", str(path)]),
            ("plugins", [*cli, "plugins"]),
            ("run --dry-run", [*cli, "run", str(path), "--dry-run"]),
            ("submit up to sbatch", [py, "-c", SLURM_PLAN, str(path)]),
        ]
        if label == "small":
            commands.append(("publish", [*cli, "publish", name, "--results-root", str(results), "--out",
                                         str(site)]))
        for what, cmd in commands:
            if args.only and what not in args.only:
                continue
            if args.before is None:
                wall, peak, last, torch = timed(cmd, base)
                print(f"{label:<6} {what:<20} {wall:6.2f} s  {peak:6.0f} MB  torch={torch:<3}  ({last})", flush=True)
                continue
            figures: dict[str, list] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for which, env in (("before", before_env), ("after", None)):
                    figures[which].append(timed(cmd, base, env))
            line = []
            for which in ("before", "after"):
                walls = sorted(f[0] for f in figures[which])
                peaks = sorted(f[1] for f in figures[which])
                line.append(f"{which} {walls[len(walls) // 2]:6.2f} s {peaks[len(peaks) // 2]:5.0f} MB "
                            f"torch={figures[which][-1][3]:<3}")
            ratio = sorted(f[0] for f in figures["after"])[args.rounds // 2] / sorted(
                f[0] for f in figures["before"])[args.rounds // 2]
            print(f"{label:<6} {what:<20} {'  '.join(line)}  after/before {ratio:.2f}", flush=True)
    if (not args.only or "incremental" in args.only) and args.before is None:
        # +1,000 run files beside the large suite's N runs (index holding N run files' rows, as before compaction)
        inc = base / "inc"
        write_shards(inc, 0, args.runs, os.cpu_count() or 1)
        timed([py, "-c", INCREMENTAL, str(inc), "big"], base)  # the index of N run files, built once
        write_shards(inc, args.runs, args.runs + 1000, os.cpu_count() or 1)
        wall, peak, last, _ = timed([py, "-c", INCREMENTAL, str(inc), "big"], base)
        print(f"incremental +1,000 run files on {args.runs:,}: {wall:6.2f} s  {peak:6.0f} MB  ({last})", flush=True)
        shutil.rmtree(inc, ignore_errors=True)
    for fresh in args.fresh if args.before is None else []:
        root = base / f"fresh{fresh}"
        write_shards(root, 0, fresh, os.cpu_count() or 1)
        wall, peak, last, _ = timed([py, "-m", "bench_harness.cli", "aggregate", "big", "--results-root", str(root)],
                                    base)
        print(f"first aggregate over {fresh:,} fresh run files: {wall:6.2f} s  {peak:6.0f} MB  ({last})", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"load": os.getloadavg()}))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
