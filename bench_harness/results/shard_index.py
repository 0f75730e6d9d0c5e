"""Reading a suite's rows: the dataset folder ``runs/`` (see :mod:`bench_harness.results.dataset`) through an
incremental cache.

The cache (``results/<suite>/index/``, parts in Arrow IPC so that no ``*.parquet`` glob counts them; see
:mod:`bench_harness.results.index_parts`) holds the rows of the run files with the signature of the file each came
from (``_shard``, ``_mtime_ns``, ``_size``, ``_ino``). Updating lists ``runs/`` (one ``scandir``), reads only run
files that are new or changed and appends them as a new part of the index (the others are not rewritten), and
reads the compacted parts of the dataset (few, large, cached per process). The cache is derived: it may be
deleted at any time, and a row of it is used only while its file is listed with the same signature. Everything
here runs under the store's shared lock (:func:`bench_harness.results.compaction.reading`).

The table returned has one row per run id: a run file's row wins over a part's (it is newer: a compacted run
redone), a newer part's over an older one's. ``_compacted`` tells which rows come from parts.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from bench_harness import locks, paths
from bench_harness.results import dataset, index_parts
from bench_harness.results.compaction import COMPACT_AT, compact, maybe_compact, reading, run_files  # noqa: F401
from bench_harness.results.dataset import CorruptShardWarning, read_shards  # noqa: F401


def update_index(results_root: str | Path, suite: str, rebuild: bool = False,
                 part_columns: tuple[str, ...] | None = None) -> tuple[pa.Table | None, dict]:
    """Every row of the suite (one per run id), the index brought up to date by appending a part with the run
    files that are new or changed; returns (table, stats). ``rebuild`` reads every file again. ``part_columns``:
    the rows of compacted parts carry only these columns (and run_id, status), for a caller that needs no more."""
    runs = paths.runs_dir(results_root, suite)
    if not runs.is_dir():
        return None, {"shards": 0, "read": 0, "dropped": 0, "compacted_rows": 0, "parts": 0}
    folder = paths.index_dir(results_root, suite)
    stats: dict = {}
    merge_after = False
    with reading(results_root, suite):
        listing = dataset.list_store(runs)
        if rebuild:
            dataset.forget_parts(runs)
            cached, names, ignored, gone = None, index_parts.list_parts(folder), 0, 0
        else:
            try:
                index_parts.upgrade_legacy(paths.index_cache(results_root, suite), folder)
            except OSError as exc:  # a read-only results folder: the index is an optimisation
                stats["index_not_saved"] = f"{type(exc).__name__}: {exc}"
            cached, names, ignored, gone = index_parts.read_index(folder, listing.runs)
        known = set(cached.column("_shard").to_pylist()) if cached is not None else set()
        fresh = sorted(n for n in listing.runs if n not in known)
        new = dataset.read_shards([str(runs / n) for n in fresh], suite=suite)
        tables = [t for t in (cached, new) if t is not None and t.num_rows]
        run_rows = dataset.concat(tables) if tables else None
        parts = dataset.read_parts(runs, listing.parts, columns=part_columns)
        try:
            to_cache = index_parts.settled(run_rows if rebuild else new)  # rebuild: every row; else the new ones
            if to_cache is not None and to_cache.num_rows:
                index_parts.write_part(folder, to_cache)
            if rebuild:
                index_parts.remove(folder, names)
            else:
                merge_after = len(names) >= index_parts.MAX_PARTS or ignored > max(1000, len(known))
        except OSError as exc:  # a read-only results folder: the index is an optimisation
            stats["index_not_saved"] = f"{type(exc).__name__}: {exc}"
    if merge_after:
        _merge_parts(results_root, suite)
    table, from_parts = combine(run_rows, parts)
    stats.update({"shards": len(listing.runs), "read": len(fresh), "dropped": gone,
                  "compacted_rows": from_parts, "parts": len(parts)})
    return table, stats


def _merge_parts(results_root: str | Path, suite: str) -> None:
    """Merge the index's parts under the store's exclusive lock, if it is free (else a later update does)."""
    lock = paths.store_lock(results_root, suite)
    if locks.held(lock) is not None or not locks.acquire(lock, "ex", wait=False):
        return
    try:
        runs = paths.runs_dir(results_root, suite)
        index_parts.merge(paths.index_dir(results_root, suite), dataset.list_store(runs).runs)
    except OSError:
        pass
    finally:
        locks.release(lock)


def combine(run_rows: pa.Table | None, parts: dict[str, pa.Table]) -> tuple[pa.Table | None, int]:
    """(one row per run id: run files first, then parts newest first; rows taken from parts)."""
    pieces = []
    seen: set[str] = set()
    if run_rows is not None and run_rows.num_rows:
        pieces.append(run_rows.append_column("_compacted", pa.array([False] * run_rows.num_rows, pa.bool_())))
        seen.update(run_rows.column("run_id").to_pylist())
    from_parts = 0
    for name, table in dataset.newest_parts_first(parts):
        rows = dataset.one_row_per_run(dataset.without_ids(table, seen))
        if not rows.num_rows:
            continue
        seen.update(rows.column("run_id").to_pylist())
        from_parts += rows.num_rows
        pieces.append(rows.append_column("_shard", pa.array([name] * rows.num_rows, pa.string()))
                      .append_column("_compacted", pa.array([True] * rows.num_rows, pa.bool_())))
    if not pieces:
        return None, 0
    return dataset.concat(pieces), from_parts


def compacted_status(results_root: str | Path, suite: str) -> dict[str, str]:
    """run id -> status of the rows held by compacted parts (one row per run id, newest part first)."""
    runs = paths.runs_dir(results_root, suite)
    if not runs.is_dir():
        return {}
    with reading(results_root, suite):
        parts = dataset.read_parts(runs, dataset.list_store(runs).parts, warn=False, columns=())
    status: dict[str, str] = {}
    for _, table in reversed(dataset.newest_parts_first(parts)):  # oldest first: newer parts overwrite
        status.update(zip(table.column("run_id").to_pylist(), table.column("status").to_pylist()))
    return status


def run_status(results_root: str | Path, suite: str, run_id: str) -> str | None:
    """'ok', 'failed' or None (no row: never run, or its file is damaged): the run file, else the parts."""
    path = paths.shard_path(results_root, suite, run_id)
    if not path.parent.is_dir():
        return None
    with reading(results_root, suite):
        if path.exists():
            try:
                table, _ = dataset.read_file(str(path))
                if table.column("run_id")[0].as_py() == run_id:
                    return table.column("status")[0].as_py()
                return None
            except FileNotFoundError:  # compacted a moment ago: its row is in a part now
                pass
            except Exception:  # a damaged shard is as good as none
                return None
        return compacted_status(results_root, suite).get(run_id)

