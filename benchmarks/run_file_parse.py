"""Parsing cost per one-row run file: the run-file format before issue 28's third session (pyarrow's defaults:
statistics, dictionary pages, snappy) against ``store.ONE_ROW_FILE``, read by the harness's reader
(``dataset._read_chunk``, one process) and by pyarrow's C++ reader alone.

    .venv/bin/python benchmarks/run_file_parse.py [--files 2000] [--repeat 3] [--dir /tmp/bench-run-file-parse]

The rows are ``benchmarks/aggregate_speed.py``'s (the result schema, 69 columns). Best of ``--repeat``, in
microseconds per file; figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregate_speed import _row  # noqa: E402

from bench_harness.results import dataset  # noqa: E402
from bench_harness.results.store import write_shard  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/bench-run-file-parse")
    args = parser.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    for i in range(args.files):
        write_shard(_row(i), base / "new", "big")
    new = sorted((base / "new" / "big" / "runs").glob("*.parquet"))
    (base / "old").mkdir()
    for path in new:  # the same rows in the former format
        pq.write_table(pq.read_table(path), base / "old" / path.name)
    old = sorted((base / "old").glob("*.parquet"))
    for label, files in (("former format", old), ("ONE_ROW_FILE", new)):
        datas = [f.read_bytes() for f in files]
        parse = best(lambda datas=datas: [dataset._parse(d) for d in datas], args.repeat)
        chunk = best(lambda files=files: dataset._read_chunk([str(f) for f in files], "big"), args.repeat)
        size = sum(map(len, datas)) / len(datas)
        print(f"{label:>13}: {size / 1024:5.1f} KB/file, C++ parse {parse / len(files) * 1e6:5.0f} us/file, "
              f"harness reader {chunk / len(files) * 1e6:5.0f} us/file", flush=True)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
