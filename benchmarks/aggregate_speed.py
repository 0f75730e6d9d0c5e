"""Aggregation speed on many synthetic run shards.

    .venv/bin/python benchmarks/aggregate_speed.py [--shards 100000] [--dir /tmp/bench-aggregate]

Writes N one-row shards in the real schema (5 models x 4 data sets x 10 sparsities x 10 methods x N/2000 seeds),
then measures: a cold rebuild of the shard index (every run file read), the one-time compaction of the run files
into the index, a cold read of the compacted results in a fresh process (what `bench aggregate` costs from then
on), the leaderboard built from them, an incremental update after 1,000 new runs, and an update with nothing new,
with peak memory. Figures are printed; nothing is asserted.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_harness.results.compaction import compact
from bench_harness.results.leaderboard import build_leaderboard
from bench_harness.results.shard_index import update_index
from bench_harness.results.store import write_shard

MODELS = ["resnet20", "resnet32", "vgg16_bn", "conv4", "lenet5"]
DATASETS = ["cifar10", "cifar100", "fashion_mnist", "tiny_imagenet"]
SPARSITIES = [1 - 0.8 ** k for k in range(1, 11)]
METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "px", "px_cvpr2024", "imp", "dense", "autosparse"]


def _row(i: int) -> dict:
    cell = len(MODELS) * len(DATASETS) * len(SPARSITIES) * len(METHODS)
    seed, rest = divmod(i, cell)
    rest, method = divmod(rest, len(METHODS))
    rest, sparsity = divmod(rest, len(SPARSITIES))
    model, dataset = divmod(rest, len(DATASETS))
    s = SPARSITIES[sparsity]
    top1 = 0.9 - 0.3 * s + 0.01 * ((i * 7919) % 13) / 13
    return dict(run_id=f"{i:016x}", suite="big", pruner=METHODS[method], pruner_params="{}", model=MODELS[model % 5],
                model_params="{}", dataset=DATASETS[dataset], seed=seed, target_sparsity=s, status="ok",
                top1=top1, top5=0.99, loss=0.5, achieved_sparsity=s, achieved_sparsity_all=0.9 * s,
                layer_density='{"conv1.weight": 0.5, "fc.weight": 0.5}', layer_collapse=False, params_total=272474,
                params_nonzero=int(272474 * (1 - s)), params_prunable=270896, flops_dense=4.1e7,
                flops_effective=4.1e7 * (1 - s), prune_seconds=3.0, train_seconds=3000.0, pretrain_seconds=0.0,
                device="NVIDIA H100", finished_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def _write_range(args) -> None:
    root, start, stop = args
    for i in range(start, stop):
        write_shard(_row(i), root, "big")


def write_shards(root: Path, start: int, stop: int, workers: int) -> None:
    step = max(1, (stop - start) // (workers * 8))
    with cf.ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_range, [(root, a, min(a + step, stop)) for a in range(start, stop, step)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/bench-aggregate")
    parser.add_argument("--keep", action="store_true", help="reuse shards already written in --dir")
    args = parser.parse_args()
    root = Path(args.dir)
    workers = os.cpu_count() or 1
    runs = root / "big" / "runs"
    have = len(list(runs.glob("*.parquet"))) if runs.is_dir() else 0
    if not (args.keep and have >= args.shards):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_shards(root, 0, args.shards, workers)
        print(f"wrote {args.shards} shards in {time.perf_counter() - t0:.1f} s ({workers} processes)")
    t0 = time.perf_counter()
    table, stats = update_index(root, "big", rebuild=True)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    compacted = compact(root, "big")
    compaction = time.perf_counter() - t0
    # a fresh process reads the compacted results and builds the leaderboard: what `bench aggregate` costs now
    probe = ("import time, resource; t0 = time.perf_counter();"
             "from bench_harness.results.aggregate import aggregate;"
             f"r = aggregate({str(root)!r}, ['big']);"
             "print(time.perf_counter() - t0, len(r.boards['big']),"
             " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    cold_compacted, board_rows, peak_mb = float(out[0]), int(out[1]), float(out[2])
    t0 = time.perf_counter()
    board = build_leaderboard(table.to_pandas(), ["big"])
    build = time.perf_counter() - t0
    extra = 1000
    start = have if args.keep and have >= args.shards else args.shards
    write_shards(root, start, start + extra, workers)
    t0 = time.perf_counter()
    table, stats2 = update_index(root, "big")
    incremental = time.perf_counter() - t0
    t0 = time.perf_counter()
    update_index(root, "big")
    nothing = time.perf_counter() - t0
    print(f"runs: {args.shards}; leaderboard rows: {len(board)} ({board_rows}); {workers} CPU cores")
    print(f"  cold index rebuild (read every run file):  {cold:7.2f} s  ({1e3 * cold / args.shards:.3f} ms/file)")
    print(f"  compaction into one part (once):           {compaction:7.2f} s  ({compacted['compacted']} files removed)")
    print(f"  cold aggregate of the compacted results:   {cold_compacted:7.2f} s  (fresh process, incl. imports; "
          f"peak RSS {peak_mb:.0f} MB)")
    print(f"  leaderboard from the index:                {build:7.2f} s")
    print(f"  incremental update, {stats2['read']} new runs:         {incremental:7.2f} s")
    print(f"  update with nothing new:                   {nothing:7.2f} s")


if __name__ == "__main__":
    main()
