"""Reading a suite's rows: the dataset folder ``runs/`` (see :mod:`bench_harness.results.dataset`) through an
incremental cache.

The cache (``results/<suite>/index.arrow``, Arrow IPC so that no ``*.parquet`` glob counts it) holds the rows of
the run files with the signature of the file each came from (``_shard``, ``_mtime_ns``, ``_size``, ``_ino``).
Updating lists ``runs/`` (one ``scandir``), reads only run files that are new or changed, and reads the compacted
parts (few, large, cached per process). The cache is derived: it may be deleted at any time, and a row leaves it
only because its file left the dataset — which only compaction does, after the row is safe in a part. Everything
here runs under the store's shared lock (:func:`bench_harness.results.compaction.reading`).

The table returned has one row per run id: a run file's row wins over a part's (it is newer: a compacted run
redone), a newer part's over an older one's. ``_compacted`` tells which rows come from parts.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench_harness import paths
from bench_harness.atomic import atomic_write
from bench_harness.files import open_regular
from bench_harness.results import dataset
from bench_harness.results.compaction import COMPACT_AT, compact, maybe_compact, reading, run_files  # noqa: F401
from bench_harness.results.dataset import CorruptShardWarning, read_shards  # noqa: F401

_CACHE_COLUMNS = ("_shard", "_mtime_ns", "_size", "_ino")


def _read_cache(path: Path) -> pa.Table | None:
    """The cache, or None when it is missing, damaged or inconsistent (one row per file, each file named after its
    row's run): no loss, the run files are read again."""
    if not path.exists():
        return None
    try:
        with open_regular(path) as fh:
            table = pa.ipc.open_file(pa.BufferReader(fh.read())).read_all()
        if not set(_CACHE_COLUMNS) <= set(table.column_names) or "run_id" not in table.column_names:
            return None
        shards = table.column("_shard").to_pylist()
        if len(set(shards)) != len(shards) or any(f"{r}.parquet" != s for r, s in
                                                   zip(table.column("run_id").to_pylist(), shards)):
            return None
        return table
    except Exception:
        return None


def _save_cache(path: Path, table: pa.Table | None) -> None:
    """Replace the cache atomically (under the store's shared lock: two readers may both write one, each
    complete and each valid, because every row carries the signature of its file)."""
    if table is None:
        path.unlink(missing_ok=True)
        return

    def write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    atomic_write(path, write)


def _signatures(table: pa.Table | None) -> dict[str, tuple[int, int, int]]:
    if table is None or not table.num_rows:
        return {}
    cols = [table.column(c).to_pylist() for c in _CACHE_COLUMNS]
    return {name: (m, s, i) for name, m, s, i in zip(*cols)}


def _keep_rows(table: pa.Table, names: set[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("_shard"), value_set=pa.array(sorted(names), pa.string())))


def update_index(results_root: str | Path, suite: str, rebuild: bool = False) -> tuple[pa.Table | None, dict]:
    """Every row of the suite (one per run id), the cache brought up to date; returns (table, stats).
    ``rebuild`` reads every file again."""
    runs = paths.runs_dir(results_root, suite)
    if not runs.is_dir():
        return None, {"shards": 0, "read": 0, "dropped": 0, "compacted_rows": 0, "parts": 0}
    cache_path = paths.index_cache(results_root, suite)
    stats: dict = {}
    with reading(results_root, suite):
        listing = dataset.list_store(runs)
        if rebuild:
            dataset.forget_parts(runs)
        cached = None if rebuild else _read_cache(cache_path)
        known = _signatures(cached)
        fresh = sorted(n for n, sig in listing.runs.items() if known.get(n) != sig)
        unchanged = set(listing.runs) - set(fresh)
        gone = set(known) - set(listing.runs)
        kept = _keep_rows(cached, unchanged) if cached is not None and unchanged else None
        new = dataset.read_shards([str(runs / n) for n in fresh], suite=suite)
        tables = [t for t in (kept, new) if t is not None and t.num_rows]
        run_rows = dataset.concat(tables) if tables else None
        parts = dataset.read_parts(runs, listing.parts)
        if fresh or gone or (run_rows is not None) != cache_path.exists():
            try:
                _save_cache(cache_path, run_rows)
            except OSError as exc:  # a read-only results folder: the cache is an optimisation
                stats["index_not_saved"] = f"{type(exc).__name__}: {exc}"
    table, from_parts = combine(run_rows, parts)
    stats.update({"shards": len(listing.runs), "read": len(fresh), "dropped": len(gone),
                  "compacted_rows": from_parts, "parts": len(parts)})
    return table, stats


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
        parts = dataset.read_parts(runs, dataset.list_store(runs).parts, warn=False)
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

