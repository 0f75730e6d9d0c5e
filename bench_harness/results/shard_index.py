"""An incremental index of a suite's run shards: ``results/<suite>/index.parquet``.

The index holds every shard's row plus where it came from (``_shard``, ``_mtime_ns``, ``_size``). Updating it
lists the ``runs/`` folder (one ``scandir``), reads only shards that are new or changed, drops rows whose shard
disappeared and writes the index atomically. Reading many small Parquet files costs ~0.3 ms each here, so new
shards are read in parallel worker processes in chunks.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench_harness import paths
from bench_harness.atomic import atomic_write

def index_path(results_root: str | Path, suite: str) -> Path:
    return paths.suite_dir(results_root, suite) / "index.parquet"


class CorruptShardWarning(UserWarning):
    """A run's shard cannot be read: the run counts as missing, and `bench run` runs it again."""


def _read_chunk(files: list[str]) -> tuple[pa.Table | None, list[tuple[str, str]]]:
    """(table of the readable shards, [(file, problem)] for the damaged ones). Shards are written atomically,
    so an unreadable ``*.parquet`` is damaged (truncated by a full disk, a crashed copy, ...), never half-written."""
    by_schema: dict = {}  # concatenating equal schemas is cheap; unify only across distinct schemas
    bad: list[tuple[str, str]] = []
    for f in files:
        try:
            table = pq.ParquetFile(f).read(use_threads=False)
            st = os.stat(f)
            if table.num_rows != 1 or "run_id" not in table.column_names:
                raise ValueError(f"{table.num_rows} rows, columns {table.column_names[:3]}…")
        except FileNotFoundError:  # replaced or removed while we listed the folder
            continue
        except Exception as exc:
            bad.append((f, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            continue
        # keyed by the schema's text: pyarrow < 15 cannot hash a schema that carries metadata
        key = table.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
        by_schema.setdefault(key, []).append((table, os.path.basename(f), st.st_mtime_ns, st.st_size))
    if not by_schema:
        return None, bad
    parts, names, mtimes, sizes = [], [], [], []
    for items in by_schema.values():
        parts.append(pa.concat_tables([t for t, *_ in items]).combine_chunks())  # one chunk, not one per shard
        for t, name, mtime, size in items:
            names += [name] * t.num_rows
            mtimes += [mtime] * t.num_rows
            sizes += [size] * t.num_rows
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default").combine_chunks()
    return (table.append_column("_shard", pa.array(names, pa.string()))
            .append_column("_mtime_ns", pa.array(mtimes, pa.int64()))
            .append_column("_size", pa.array(sizes, pa.int64()))), bad


def read_shards(files: list[str], workers: int | None = None, warn: bool = True) -> pa.Table | None:
    """Read shard files (with their _shard/_mtime_ns/_size columns), in parallel processes when there are many.
    A damaged shard is left out with a CorruptShardWarning naming it."""
    if not files:
        return None
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(files) < 2000:
        table, bad = _read_chunk(files)
    else:
        size = max(500, len(files) // (workers * 4))
        chunks = [files[i:i + size] for i in range(0, len(files), size)]
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork" if os.name == "posix" else "spawn")) as ex:
            results = list(ex.map(_read_chunk, chunks))
        parts = [t for t, _ in results if t is not None]
        bad = [b for _, bs in results for b in bs]
        table = pa.concat_tables(parts, promote_options="default").combine_chunks() if parts else None
    if warn:
        for f, problem in bad:
            warnings.warn(CorruptShardWarning(f"damaged result shard {f} ({problem}): the run counts as missing and "
                                              f"`bench run` runs it again; `bench verify SUITE` lists every such "
                                              f"file"), stacklevel=2)
    return table


def _read_index(ipath: Path) -> pa.Table | None:
    if not ipath.exists():
        return None
    try:
        table = pq.read_table(ipath)
    except Exception as exc:
        warnings.warn(CorruptShardWarning(f"damaged shard index {ipath} ({type(exc).__name__}): rebuilt from the run "
                                          f"files; runs already compacted into it are lost from it"), stacklevel=3)
        return None
    if "_compacted" not in table.column_names:
        table = table.append_column("_compacted", pa.array([False] * table.num_rows, pa.bool_()))
    return table


def update_index(results_root: str | Path, suite: str, rebuild: bool = False) -> tuple[pa.Table | None, dict]:
    """Bring the suite's index up to date; returns (table, stats). ``rebuild`` reads every run file again (rows
    compacted into the index, whose files are gone, are kept)."""
    runs = paths.suite_dir(results_root, suite) / "runs"
    current: dict[str, tuple[int, int]] = {}
    if runs.is_dir():
        with os.scandir(runs) as it:
            for entry in it:
                if entry.name.endswith(".parquet") and not entry.name.startswith(".") and entry.is_file():
                    st = entry.stat()
                    current[entry.name] = (st.st_mtime_ns, st.st_size)
    ipath = index_path(results_root, suite)
    old = _read_index(ipath)
    known: dict[str, tuple[int, int]] = {}
    compacted: set[str] = set()
    if old is not None and old.num_rows:
        names = old.column("_shard").to_pylist()
        known = dict(zip(names, zip(old.column("_mtime_ns").to_pylist(), old.column("_size").to_pylist())))
        compacted = {n for n, c in zip(names, old.column("_compacted").to_pylist()) if c}
    if rebuild:
        fresh = list(current)
    else:
        fresh = [n for n, sig in current.items() if known.get(n) != sig]
    # rows to drop: their file changed (read again) or disappeared without having been compacted
    gone = (set(known) - set(current)) - compacted
    gone_or_changed = gone | set(fresh)
    if old is not None and gone_or_changed:
        keep = pc.invert(pc.is_in(old.column("_shard"), value_set=pa.array(sorted(gone_or_changed), pa.string())))
        old = old.filter(keep)
    new = read_shards([str(runs / n) for n in sorted(fresh)])
    if new is not None:
        new = new.append_column("_compacted", pa.array([False] * new.num_rows, pa.bool_()))
    parts = [t for t in (old, new) if t is not None and t.num_rows]
    table = pa.concat_tables(parts, promote_options="default").combine_chunks() if parts else None
    stats = {"shards": len(current), "read": len(fresh), "dropped": len(gone),
             "compacted_rows": len(compacted - set(current) - set(fresh))}
    try:
        if table is not None and (fresh or gone_or_changed or not ipath.exists()):
            atomic_write(ipath, lambda tmp: pq.write_table(table, tmp))
        elif table is None and ipath.exists():
            ipath.unlink()
    except OSError as exc:  # a read-only results folder: the index is an optimisation, reading still works
        stats["index_not_saved"] = f"{type(exc).__name__}: {exc}"
    return table, stats


COMPACT_AT = 1000  # run files in runs/ from which `bench run` and `bench aggregate` compact automatically


def run_files(results_root: str | Path, suite: str) -> int:
    runs = paths.suite_dir(results_root, suite) / "runs"
    if not runs.is_dir():
        return 0
    with os.scandir(runs) as it:
        return sum(1 for e in it if e.name.endswith(".parquet") and not e.name.startswith("."))


def maybe_compact(results_root: str | Path, suite: str, force: bool = False) -> dict | None:
    """Compact when forced or when the suite has COMPACT_AT run files or more; None when not compacted."""
    if not force and run_files(results_root, suite) < COMPACT_AT:
        return None
    return compact(results_root, suite)


def compact(results_root: str | Path, suite: str) -> dict:
    """Fold the suite's run files into its index (``index.parquet``) and remove them, so that reading the results
    costs one file, not one per run.

    Safe against writers: the index is written (atomically) with the rows marked compacted *before* any run file
    is touched; each run file is then renamed aside and removed only if it is the very file that was read (same
    mtime and size) — a file rewritten meanwhile (a run redone) is put back and read at the next update. One
    compaction at a time per suite (a lock); readers never wait."""
    from bench_harness.running.locks import file_lock

    suite_dir = paths.suite_dir(results_root, suite)
    runs = suite_dir / "runs"
    if not runs.is_dir():
        return {"compacted": 0}
    with file_lock(suite_dir / "compact.lock"):
        table, stats = update_index(results_root, suite)
        if table is None or "index_not_saved" in stats:
            return {"compacted": 0, **stats}
        names = table.column("_shard").to_pylist()
        sigs = list(zip(table.column("_mtime_ns").to_pylist(), table.column("_size").to_pylist()))
        present = {}
        with os.scandir(runs) as it:
            for entry in it:
                if entry.name.endswith(".parquet") and entry.is_file():
                    st = entry.stat()
                    present[entry.name] = (st.st_mtime_ns, st.st_size)
        chosen = {n for n, sig in zip(names, sigs) if present.get(n) == sig}
        if not chosen:
            return {"compacted": 0, **stats}
        flags = pa.array([c or n in chosen for n, c in zip(names, table.column("_compacted").to_pylist())],
                         pa.bool_())
        table = table.set_column(table.column_names.index("_compacted"), "_compacted", flags)
        atomic_write(index_path(results_root, suite), lambda tmp: pq.write_table(table, tmp))
        aside = suite_dir / ".compacting"
        aside.mkdir(exist_ok=True)
        expected = dict(zip(names, sigs))
        put_back = 0
        for name in chosen:
            src, tmp = runs / name, aside / name
            try:
                os.replace(src, tmp)
            except FileNotFoundError:
                continue
            st = os.stat(tmp)
            if (st.st_mtime_ns, st.st_size) == expected[name]:
                os.unlink(tmp)
            else:  # rewritten after we read it: keep it (unless an even newer file arrived meanwhile)
                put_back += 1
                if not (runs / name).exists():
                    os.replace(tmp, src)
                else:
                    os.unlink(tmp)
        try:
            aside.rmdir()
        except OSError:
            pass
    return {"compacted": len(chosen) - put_back, "put_back": put_back, **stats}


_STATUS_CACHE: dict[str, tuple[int, dict[str, str]]] = {}


def compacted_status(results_root: str | Path, suite: str) -> dict[str, str]:
    """run id -> status of the rows compacted into the index (their run files are gone); cached per index
    version, so asking for many runs reads the index once."""
    ipath = index_path(results_root, suite)
    try:
        mtime = ipath.stat().st_mtime_ns
    except OSError:
        return {}
    key = str(ipath.resolve())
    cached = _STATUS_CACHE.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        table = pq.read_table(ipath, columns=["run_id", "status", "_compacted"])
    except Exception:
        return {}
    status = {r: s for r, s, c in zip(table.column("run_id").to_pylist(), table.column("status").to_pylist(),
                                      table.column("_compacted").to_pylist()) if c}
    _STATUS_CACHE[key] = (mtime, status)
    return status
