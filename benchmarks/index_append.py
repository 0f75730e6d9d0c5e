"""+1,000 run files on a suite of N run files whose index is up to date: the index update in a fresh process,
two versions of the code alternating (issue 28: the index rewrote all of itself on every update).

    PYTHONPATH=NEW .venv/bin/python benchmarks/index_append.py --before OLD_PYTHONPATH [--runs 100000] [--rounds 2]
        [--files DIR]   # a folder whose big/runs/ already holds the N run files (benchmarks/aggregate_speed.py's)

The N run files are written once (aggregate_speed.py's synthetic rows), then hard-linked into two results folders,
one per version, each given the single-file index a cold update writes (``index.arrow``, synthesized from the
same rows and the files' signatures rather than by reading 100,000 files twice). The new version's first update
upgrades that file into a part of its index (timed apart). Then each round writes 1,000 new run files into both
folders and times one update of each version, in fresh processes (imports included), alternating. Figures are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregate_speed import _row, write_shards  # noqa: E402

UPDATE = """
import sys, time
from bench_harness.results.shard_index import update_index
t0 = time.perf_counter()
table, stats = update_index(sys.argv[1], "big")
print(f"{time.perf_counter() - t0:.2f} s in-process, read {stats['read']}, {table.num_rows} rows")
"""


def synthesize_index(root: Path, n: int) -> None:
    """The single-file index an update of every run file writes (rows of _row(i), each with its file's
    signature)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs = root / "big" / "runs"
    schema = pq.read_schema(runs / f"{_row(0)['run_id']}.parquet")
    schema = schema.remove_metadata()
    rows = [_row(i) for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=schema)
    sigs = [os.stat(runs / f"{r['run_id']}.parquet") for r in rows]
    table = (table.append_column("_shard", pa.array([f"{r['run_id']}.parquet" for r in rows], pa.string()))
             .append_column("_mtime_ns", pa.array([s.st_mtime_ns for s in sigs], pa.int64()))
             .append_column("_size", pa.array([s.st_size for s in sigs], pa.int64()))
             .append_column("_ino", pa.array([s.st_ino for s in sigs], pa.int64())))
    with pa.OSFile(str(root / "big" / "index.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="PYTHONPATH", help="the old code ('' for the install)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--files", help="a folder whose big/runs/ holds the N run files already")
    parser.add_argument("--dir", default="/tmp/bench-index-append")
    args = parser.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    workers = os.cpu_count() or 1
    source = Path(args.files) if args.files else base / "source"
    if not args.files:
        write_shards(source, 0, args.runs, workers)
    after_env = dict(os.environ)
    before_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if args.before:
        before_env["PYTHONPATH"] = args.before
    dirs = {}
    for which in ("before", "after"):
        dirs[which] = base / which
        (dirs[which] / "big").mkdir(parents=True)
        subprocess.run(["cp", "-al", str(source / "big" / "runs"), str(dirs[which] / "big" / "runs")], check=True)
        synthesize_index(dirs[which], args.runs)
    print(f"{args.runs:,} run files, index up to date; load {os.getloadavg()}", flush=True)
    py = [sys.executable, "-c", UPDATE]
    wall, peak, last = timed([*py, str(dirs["after"])], after_env)
    print(f"after: first update (the single-file index upgraded into a part): {wall:.2f} s {peak:.0f} MB ({last})")
    for which, env in (("before", before_env), ("after", after_env)):
        wall, peak, last = timed([*py, str(dirs[which])], env)
        print(f"{which:<6} update with nothing new: {wall:6.2f} s {peak:5.0f} MB  ({last})", flush=True)
    start = args.runs
    for r in range(args.rounds):
        for which, env in (("before", before_env), ("after", after_env)):
            write_shards(dirs[which], start, start + 1000, workers)
            wall, peak, last = timed([*py, str(dirs[which])], env)
            print(f"round {r} {which:<6} +1,000 run files: {wall:6.2f} s {peak:5.0f} MB  ({last})", flush=True)
        start += 1000
    print(f"load {os.getloadavg()}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
