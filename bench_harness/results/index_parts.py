"""The shard index stored as parts: ``results/<suite>/index/ix-<time>-<random>.arrow`` (Arrow IPC, so that no
``*.parquet`` glob counts them), each holding rows of run files with the signature of the file each came from
(``_shard``, ``_mtime_ns``, ``_size``, ``_ino``).

An update *appends* a part with the rows it read (it never rewrites the others); readers take the union of the
parts and keep, for each run file listed in ``runs/``, a row whose signature is the file's — so a row of a file
that changed or left the dataset is ignored wherever it lies, and a row two racing readers both appended counts
once. The parts are merged into one (:func:`merge`) by compaction under the store's exclusive lock, and by an
update that finds many parts or many ignored rows; a part removed by a merge while a reader lists it is only a
cache miss (those run files are read again). Everything here is derived from the run files: the folder may be
deleted at any time. A part that is damaged or inconsistent (a row repeated, a row under another run's file
name) is ignored whole.

The single-file index of earlier versions (``results/<suite>/index.arrow``) is read once and becomes the first
part (:func:`upgrade_legacy`).
"""
from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench_harness.atomic import atomic_write
from bench_harness.files import open_regular
from bench_harness.results import dataset

COLUMNS = ("_shard", "_mtime_ns", "_size", "_ino")
NAME = re.compile(r"^ix-\d{20}-[0-9a-f]{8}\.arrow$")
MAX_PARTS = 16  # more than this: the next update merges them


def read_part(path: str | Path) -> pa.Table | None:
    """A part, or None when it is missing, damaged or inconsistent (its rows are then read from the run files)."""
    try:
        with open_regular(path) as fh:
            table = pa.ipc.open_file(pa.BufferReader(fh.read())).read_all()
        if not set(COLUMNS) <= set(table.column_names) or "run_id" not in table.column_names:
            return None
        kinds = {name: table.schema.field(name).type for name in ("run_id", *COLUMNS)}
        if not (all(pa.types.is_string(kinds[n]) for n in ("run_id", "_shard"))
                and all(pa.types.is_integer(kinds[n]) for n in COLUMNS[1:])):
            return None  # a column of another type: not a part this code wrote
        if any(table.column(n).null_count for n in ("run_id", *COLUMNS)):
            return None  # a row without its run id or signature cannot be matched to a run file
        shards = table.column("_shard")
        if pc.count_distinct(shards).as_py() != table.num_rows:
            return None
        expected = pc.binary_join_element_wise(table.column("run_id"), ".parquet", "")
        if table.num_rows and not pc.all(pc.equal(expected, shards)).as_py():
            return None
        return table
    except Exception:
        return None


# A row is cached only for a file last modified this long before it was read ("racily clean" entries, as git's
# index treats them): a file rewritten within one tick of the filesystem's clock (a jiffy on Linux, up to 2 s on
# some NFS servers and FAT) may keep its mtime, and a file system that reuses the freed inode at once (ext4)
# and a row of the same size would then give it the signature of the file it replaced. Such files are parsed
# again by every reader until they are older.
SETTLE_S = 2.0


def settled(rows: pa.Table | None, now_ns: int | None = None) -> pa.Table | None:
    """The rows of files whose mtime is at least SETTLE_S before ``now_ns`` (default: now): those an index part
    may hold."""
    if rows is None or not rows.num_rows:
        return rows
    cutoff = (time.time_ns() if now_ns is None else now_ns) - int(SETTLE_S * 1e9)
    return rows.filter(pc.less_equal(pc.cast(rows.column("_mtime_ns"), pa.int64()), cutoff))


def list_parts(folder: Path) -> list[str]:
    """The parts' names, oldest first."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if NAME.match(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_part(folder: Path, table: pa.Table) -> str:
    """A new part holding ``table`` (written atomically under a fresh name); returns its name."""
    name = f"ix-{time.time_ns():020d}-{secrets.token_hex(4)}.arrow"

    def write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link: the index is written only into a folder of its own")
    atomic_write(folder / name, write)
    return name


def read_index(folder: Path, runs: dict[str, dataset.Signature]) -> tuple[pa.Table | None, list[str], int, int]:
    """(the rows of the parts whose file is listed in ``runs`` with the same signature, one per file; the names
    of the parts read; how many rows were ignored (files gone or changed, rows repeated); how many files they
    hold rows of are gone)."""
    names = list_parts(folder)
    tables = [t for t in (read_part(folder / n) for n in names) if t is not None and t.num_rows]
    if not tables:
        return None, names, 0, 0
    try:
        table = dataset.concat(tables) if len(tables) > 1 else tables[0]
    except (pa.ArrowException, ValueError, TypeError):  # parts whose row columns do not fit together: a miss
        return None, names, 0, 0
    names_listed = pa.array(list(runs), pa.string())
    listed = [pa.array([sig[k] for sig in runs.values()], pa.int64()) for k in range(3)]
    where = pc.index_in(table.column("_shard"), value_set=names_listed)  # null: the file is gone
    valid = pc.is_valid(where)
    for k, column in enumerate(COLUMNS[1:]):
        same = pc.equal(pc.cast(table.column(column), pa.int64()), pc.take(listed[k], where))
        valid = pc.and_kleene(valid, pc.fill_null(same, False))
    valid = pc.fill_null(valid, False)
    kept = table.filter(valid)
    if pc.count_distinct(kept.column("_shard")).as_py() != kept.num_rows:  # two readers appended the same rows
        seen: set[str] = set()
        first = []
        for i, shard in enumerate(kept.column("_shard").to_pylist()):
            first.append(shard not in seen)
            seen.add(shard)
        kept = kept.filter(pa.array(first, pa.bool_()))
    ignored = table.num_rows - kept.num_rows
    gone = pc.count_distinct(pc.filter(table.column("_shard"), pc.is_null(where))).as_py() if ignored else 0
    return kept, names, ignored, gone


def remove(folder: Path, names: list[str]) -> None:
    """Remove the named parts; one that cannot be removed (another user's in a shared folder, a folder planted
    under a part's name) is left, and the others still go."""
    for name in names:
        try:
            os.unlink(folder / name)
        except OSError:  # gone already (another reader's merge), or not ours to remove
            pass


TEMPORARY = re.compile(r"^\.ix-\d{20}-[0-9a-f]{8}\.arrow\..*\.tmp$")
STALE_TEMPORARY_S = 600.0  # a writer takes well under a second to rename its part: older ones were killed


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_TEMPORARY_S) -> None:
    """The temporary files of part writers killed before their rename (none of a live writer: only files older
    than ``older_than_s``)."""
    cutoff = time.time() - older_than_s
    try:
        with os.scandir(folder) as it:
            stale = [e.name for e in it if TEMPORARY.match(e.name) and e.stat(follow_symlinks=False).st_mtime < cutoff]
    except OSError:
        return
    remove(folder, stale)


def merge(folder: Path, runs: dict[str, dataset.Signature]) -> int:
    """Replace the parts by one holding their valid rows (see :func:`read_index`), and remove the temporary files
    of writers killed before their rename; returns the rows kept. Called with the store's exclusive lock held
    (compaction, or an update that found many parts): no part writer is running then."""
    table, names, _, _ = read_index(folder, runs)
    if table is not None and table.num_rows:
        write_part(folder, table)
    remove(folder, names)
    remove_stale_temporaries(folder, older_than_s=0.0)
    return 0 if table is None else table.num_rows


def upgrade_legacy(legacy: Path, folder: Path) -> None:
    """The single-file index of earlier versions becomes a part (when it is valid), then goes."""
    if not os.path.lexists(legacy):
        return
    table = read_part(legacy)
    if table is not None and table.num_rows:
        write_part(folder, table)
    try:
        os.unlink(legacy)
    except FileNotFoundError:  # another reader upgraded it at the same time
        pass
