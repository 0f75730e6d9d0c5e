"""A suite's rows as one Parquet dataset folder, ``results/<suite>/runs/``, holding rows and nothing else:

- ``<run_id>.parquet``: one row, written atomically by the run that produced it (or redid it);
- ``part-NNNNNNNN-xxxxxxxx.parquet``: many rows, run files folded together by compaction
  (:mod:`bench_harness.results.compaction`); written once under a fresh name, never modified, removed only by a
  later compaction that folded its rows into a newer part.

So pandas (``pd.read_parquet("results/s/runs")``), polars and DuckDB (``results/s/runs/*.parquet``) read every row
of the suite, before and after compaction. A run id is in at most one file, except briefly: a run redone after its
row was compacted has a new run file while the part still holds its old row — the run file is the newer one and
wins, and the next compaction (automatic at the end of ``bench run``) removes the old row. Temporary files are
hidden (``.name.tmp``), which every reader skips.

This module lists and reads those files; it takes no lock (see compaction.py for the lock protocol).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench_harness.atomic import atomic_write
from bench_harness.files import open_regular
from bench_harness.results.schema import SCHEMA

try:  # the C++ reader behind pq.ParquetFile (pyarrow >= 14 has it; _parse falls back without it)
    from pyarrow._parquet import ParquetReader as _ParquetReader
except ImportError:  # pragma: no cover
    _ParquetReader = None

PART = re.compile(r"^part-(\d{8,})-[0-9a-f]{8}\.parquet$")  # 8 digits, more once past 99,999,999

Signature = tuple[int, int, int]  # (mtime_ns, size, inode): a file replaced by a rename has a new inode


class CorruptShardWarning(UserWarning):
    """A run's shard (or a compacted part) cannot be read: its runs count as missing, `bench run` runs them again."""


class Listing(NamedTuple):
    runs: dict[str, Signature]   # run files
    parts: dict[str, Signature]  # compacted parts


def is_part(name: str) -> bool:
    return PART.match(name) is not None


def is_row_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def list_store(runs: Path) -> Listing:
    """The dataset's files with their signatures (one ``scandir``)."""
    files: dict[str, Signature] = {}
    parts: dict[str, Signature] = {}
    if not runs.is_dir():
        return Listing(files, parts)
    with os.scandir(runs) as it:
        for entry in it:
            if is_row_file(entry.name):
                try:  # whatever it is (a planted link, FIFO or folder is read as damaged, never followed)
                    sig = signature(entry.stat(follow_symlinks=False))
                except FileNotFoundError:  # removed while we listed
                    continue
                (parts if is_part(entry.name) else files)[entry.name] = sig
    return Listing(files, parts)


def _problem(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _parse(data: bytes) -> pa.Table:
    """The table of a Parquet file's bytes: the C++ reader opened directly (ParquetFile's Python wrapper costs
    about as much again per one-row file), ParquetFile where that private class is missing."""
    if _ParquetReader is not None:
        reader = _ParquetReader()
        reader.open(pa.BufferReader(data))
        return reader.read_all(use_threads=False)
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)


def read_file(path: str) -> tuple[pa.Table, Signature]:
    """A file's table and the signature of the very file read (fstat of the open handle: a file replaced between
    listing and reading is read whole, with its own signature). Not a regular file: NotARegularFile."""
    with open_regular(path) as fh:
        sig = signature(os.fstat(fh.fileno()))
        data = fh.read()  # whole, into memory: no reader thread calls back into a Python file object
    return _parse(data), sig


def check_rows(table: pa.Table) -> None:
    """Raise ValueError unless the table could have been written by the harness: no column of its own
    bookkeeping (``_...``), a string run id and a status on every row, and every column the result schema knows
    castable to the schema's type (what readers and compaction need to combine it with the other files)."""
    own = [c for c in table.column_names if c.startswith("_")]
    if own:
        raise ValueError(f"has columns the harness never writes ({', '.join(own[:3])})")
    ids = table.column("run_id")
    if not pa.types.is_string(ids.type) or ids.null_count:
        raise ValueError(f"run ids of type {ids.type} or missing ({ids.null_count} null)")
    if "status" in table.column_names and table.column("status").null_count:  # the harness writes one on every row
        raise ValueError(f"rows without a status ({table.column('status').null_count} null)")
    try:
        conform(table)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(f"a column of the wrong type ({str(exc).splitlines()[0]})") from None


def foreign_suite(table: pa.Table, suite: str | None) -> str | None:
    """The other suite a file's rows belong to (its ``suite`` column), or None when they are this suite's."""
    if suite is None or "suite" not in table.column_names:
        return None
    others = set(table.column("suite").to_pylist()) - {suite, None}
    return sorted(others)[0] if others else None


def _file_problem(table: pa.Table, f: str, suite: str | None) -> str | None:
    """Why a run file's table is damaged (None: it is not): one row with run_id and status, harness columns only,
    the run its name says, this suite's row."""
    try:
        if table.num_rows != 1 or "run_id" not in table.column_names or "status" not in table.column_names:
            raise ValueError(f"{table.num_rows} rows, columns {table.column_names[:3]}…")
        check_rows(table)
        run_id = table.column("run_id")[0].as_py()
        if f"{run_id}.parquet" != os.path.basename(f):
            raise ValueError(f"holds run {run_id!r}, not the run its name says")
        other = foreign_suite(table, suite)
        if other is not None:
            raise ValueError(f"holds a row of suite {other!r}, not of {suite!r}")
    except Exception as exc:
        return _problem(exc)
    return None


def _group_is_sound(table: pa.Table, names: list[str], suite: str | None) -> bool:
    """The checks of :func:`_file_problem` over the concatenated one-row tables of files of one schema, at once:
    True when every file passes (False: check them one by one to find which do not)."""
    try:
        if "run_id" not in table.column_names or "status" not in table.column_names:
            return False
        check_rows(table)
        if table.column("run_id").to_pylist() != [n[:-len(".parquet")] for n in names]:
            return False
        return foreign_suite(table, suite) is None
    except Exception:
        return False


def _read_chunk(files: list[str], suite: str | None = None) -> tuple[pa.Table | None, list[tuple[str, str]]]:
    """(table of the readable run files with _shard/_mtime_ns/_size/_ino, [(file, problem)] for damaged ones).
    Run files are written atomically, so an unreadable one is damaged (a full disk, a crashed copy, a planted
    file), never half-written; a file that holds another run than its name says, or another suite's row, is
    damaged too. Files are grouped by schema (equal schemas concatenate for free) and each group is checked at
    once; a group that fails is checked file by file."""
    groups: list[tuple[pa.Schema, list]] = []
    bad: list[tuple[str, str]] = []
    for f in files:
        try:
            table, sig = read_file(f)
        except FileNotFoundError:  # replaced or removed while we listed the folder
            continue
        except Exception as exc:
            bad.append((f, _problem(exc)))
            continue
        if table.num_rows != 1:
            bad.append((f, _problem(ValueError(f"{table.num_rows} rows, columns {table.column_names[:3]}…"))))
            continue
        schema = table.schema
        for known, items in groups:  # few distinct schemas: one comparison per file in the common case
            if known.equals(schema, check_metadata=False):
                items.append((table, f, sig))
                break
        else:
            groups.append((schema, [(table, f, sig)]))
    parts, names, sigs = [], [], []
    for _, items in groups:
        table = pa.concat_tables([t for t, *_ in items]).combine_chunks()  # one chunk, not one per file
        if not _group_is_sound(table, [os.path.basename(f) for _, f, _ in items], suite):
            kept = []
            for t, f, sig in items:
                problem = _file_problem(t, f, suite)
                if problem is None:
                    kept.append((t, f, sig))
                else:
                    bad.append((f, problem))
            if not kept:
                continue
            items = kept
            table = pa.concat_tables([t for t, *_ in items]).combine_chunks()
        parts.append(table)
        for _, f, sig in items:
            names.append(os.path.basename(f))
            sigs.append(sig)
    if not parts:
        return None, bad
    table = concat(parts)
    return (table.append_column("_shard", pa.array(names, pa.string()))
            .append_column("_mtime_ns", pa.array([s[0] for s in sigs], pa.int64()))
            .append_column("_size", pa.array([s[1] for s in sigs], pa.int64()))
            .append_column("_ino", pa.array([s[2] for s in sigs], pa.int64()))), bad


def warn_damaged(bad: list[tuple[str, str]]) -> None:
    for f, problem in bad:
        warnings.warn(CorruptShardWarning(f"damaged result file {f} ({problem}): its runs count as missing and "
                                          f"`bench run` runs them again; `bench verify SUITE` lists every such "
                                          f"file"), stacklevel=3)


# from this many files on, read in forked worker processes (each about 1 ms of Parquet parsing per file: on 2 cores,
# 1,000 new run files take half the time in two processes, fork and all)
PARALLEL_FROM = 500


def read_shards(files: list[str], workers: int | None = None, warn: bool = True,
                damaged: list[tuple[str, str]] | None = None, suite: str | None = None) -> pa.Table | None:
    """Read run files (with their _shard/_mtime_ns/_size/_ino columns), in parallel processes when there are many.
    A damaged file is left out with a CorruptShardWarning naming it (and added to ``damaged`` when given)."""
    if not files:
        return None
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(files) < PARALLEL_FROM:
        table, bad = _read_chunk(files, suite)
    else:
        size = max(PARALLEL_FROM // 2, len(files) // (workers * 4))
        chunks = [files[i:i + size] for i in range(0, len(files), size)]
        with cf.ProcessPoolExecutor(workers,
                                    mp_context=mp.get_context("fork" if os.name == "posix" else "spawn")) as ex:
            results = list(ex.map(_read_chunk, chunks, [suite] * len(chunks)))
        tables = [t for t, _ in results if t is not None]
        bad = [b for _, bs in results for b in bs]
        table = concat(tables) if tables else None
    if warn:
        warn_damaged(bad)
    if damaged is not None:
        damaged.extend(bad)
    return table


_PARTS: dict[str, tuple[Signature, pa.Table]] = {}  # parts never change under one name: cache them per process


def read_part(path: Path, sig: Signature, suite: str | None = None, columns: tuple[str, ...] | None = None) -> pa.Table:
    """A compacted part's rows (raises when it is damaged, or holds another suite's rows); cached per process by
    file signature. ``columns``: only these (run_id and status always), for a reader that needs no more (the
    done-set of ``bench run``): a part whose every column already has the result schema's type (what compaction
    writes) is checked as a whole read checks it; any other is read whole and checked first."""
    key = str(path) if columns is None else f"{path}\0{','.join(columns)}"
    cached = _PARTS.get(key)
    if cached is not None and cached[0] == sig:
        return cached[1]
    if columns is not None:
        with open_regular(str(path)) as fh:
            real = signature(os.fstat(fh.fileno()))
            data = fh.read()
        table = _projected(data, ("run_id", "status", *columns))
        if table is None:  # not in the schema's types (or private columns): read and check it whole
            whole = _checked_part(_parse(data), suite)
            table = whole.select([c for c in dict.fromkeys(("run_id", "status", *columns)) if c in whole.column_names])
        else:
            _checked_part(table, suite)
        table = table.combine_chunks()
    else:
        table, real = read_file(key)
        table = _checked_part(table, suite)
        table = table.drop_columns([c for c in table.column_names if c.startswith("_")]).combine_chunks()
    _PARTS[key] = (real, table)
    return table


def _checked_part(table: pa.Table, suite: str | None) -> pa.Table:
    if "run_id" not in table.column_names or "status" not in table.column_names:
        raise ValueError(f"a compacted part without run_id/status columns: {table.column_names[:4]}")
    check_rows(table)
    other = foreign_suite(table, suite)
    if other is not None:
        raise ValueError(f"holds rows of suite {other!r}, not of {suite!r}")
    return table


def _projected(data: bytes, wanted: tuple[str, ...]) -> pa.Table | None:
    """The columns ``wanted`` (those the file has, plus ``suite`` for the foreign-suite check) of a Parquet file's
    bytes, or None when some column of the file is private (``_...``) or not of the result schema's type: then
    only a whole read can check it."""
    schema = pq.read_schema(pa.BufferReader(data))
    known = _known_types()
    if any(f.name.startswith("_") or known.get(f.name, f.type) != f.type for f in schema):
        return None
    names = [c for c in dict.fromkeys((*wanted, "suite")) if c in schema.names]
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=names, use_threads=False)


def forget_parts(runs: Path, keep: set[str] = frozenset()) -> None:
    """Drop cached parts of ``runs`` that are not in ``keep`` (they were removed)."""
    prefix = str(runs) + os.sep
    for key in [k for k in _PARTS if k.startswith(prefix) and os.path.basename(k.split("\0")[0]) not in keep]:
        del _PARTS[key]


def read_parts(runs: Path, parts: dict[str, Signature], warn: bool = True,
               damaged: list[tuple[str, str]] | None = None, columns: tuple[str, ...] | None = None
               ) -> dict[str, pa.Table]:
    """name -> rows of every readable part (``columns``: only those, see :func:`read_part`); damaged ones (another
    suite's rows included: the suite is the name of the folder above ``runs``) are left out with a
    CorruptShardWarning (and added to ``damaged`` when given)."""
    suite = runs.parent.name
    out, bad = {}, []
    forget_parts(runs, set(parts))
    for name in sorted(parts):
        try:
            out[name] = read_part(runs / name, parts[name], suite, columns)
        except FileNotFoundError:
            continue
        except Exception as exc:
            bad.append((str(runs / name), _problem(exc)))
    if warn:
        warn_damaged(bad)
    if damaged is not None:
        damaged.extend(bad)
    return out


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables with possibly different columns as one (missing columns null; a column typed differently by two
    plugins' versions is widened, or as a last resort made a string)."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="default").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        return pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        names = {n for t in tables for n in t.column_names}
        types: dict[str, set] = {n: {t.schema.field(n).type for t in tables if n in t.column_names} for n in names}
        mixed = {n for n, ts in types.items() if len(ts - {pa.null()}) > 1}
        tables = [_as_strings(t, mixed) for t in tables]
        return pa.concat_tables(tables, promote_options="default").combine_chunks()


def _as_strings(table: pa.Table, names: set[str]) -> pa.Table:
    for n in names & set(table.column_names):
        table = table.set_column(table.column_names.index(n), n, pc.cast(table.column(n), pa.string()))
    return table


def new_part_name(existing: list[str]) -> str:
    """A fresh part name: one more than the highest sequence number, and a random tag (never reused)."""
    seq = max((int(PART.match(n).group(1)) for n in existing if is_part(n)), default=0) + 1
    return f"part-{seq:08d}-{secrets.token_hex(4)}.parquet"


def oldest_part_name() -> str:
    """A part name that sorts before every part compaction writes (sequence 0): for rows migrated from a legacy
    index, which any other file supersedes."""
    return f"part-{0:08d}-{secrets.token_hex(4)}.parquet"


def part_sequence(name: str) -> int:
    return int(PART.match(name).group(1))


_KNOWN: dict[str, pa.DataType] = {}


def _known_types() -> dict[str, pa.DataType]:
    """column -> type of the result schema, built once (iterating a schema makes a Python object per field, and
    every run file read is checked against it)."""
    if not _KNOWN:
        _KNOWN.update({f.name: f.type for f in SCHEMA})
    return _KNOWN


def conforms(table: pa.Table) -> bool:
    """Whether every column the result schema knows has the schema's type (a null-typed column from a hand-made
    file would break the schema inference of glob readers)."""
    known = _known_types()
    return all(known.get(f.name, f.type) == f.type for f in table.schema)


def conform(table: pa.Table) -> pa.Table:
    """The table with every column the result schema knows cast to the schema's type."""
    known = _known_types()
    for i, f in enumerate(table.schema):
        if f.name in known and f.type != known[f.name]:
            table = table.set_column(i, f.name, pc.cast(table.column(i), known[f.name]))
    return table


def write_part(runs: Path, name: str, table: pa.Table) -> Path:
    """Write a part atomically (hidden temporary file, then rename), rows sorted by run id, columns in the
    result schema's types."""
    table = conform(table.drop_columns([c for c in table.column_names if c.startswith("_")]))
    table = table.take(pc.sort_indices(table, sort_keys=[("run_id", "ascending")]))
    return atomic_write(runs / name, lambda tmp: pq.write_table(table, tmp))


def without_ids(table: pa.Table, ids: set[str]) -> pa.Table:
    if not ids:
        return table
    return table.filter(pc.invert(pc.is_in(table.column("run_id"), value_set=pa.array(sorted(ids), pa.string()))))


def one_row_per_run(table: pa.Table) -> pa.Table:
    """One row per run id (a part never holds two, but a planted or merged one might): the last wins."""
    ids = table.column("run_id").to_pylist()
    if len(set(ids)) == len(ids):
        return table
    last = {rid: i for i, rid in enumerate(ids)}
    return table.take(pa.array(sorted(last.values()), pa.int64()))


def newest_parts_first(parts: dict[str, pa.Table]) -> list[tuple[str, pa.Table]]:
    """Parts from the newest (highest sequence) to the oldest: where a run id is in two parts (only after an
    interrupted compaction), the newer part's row wins."""
    return sorted(parts.items(), key=lambda kv: part_sequence(kv[0]), reverse=True)
