"""The results store's one writer protocol: the lock, compaction, and the repair of an interrupted compaction.

**The lock** (``results/<suite>/store.lock``, a record lock, see :mod:`bench_harness.locks`): every reader of the
store (``bench results``, ``aggregate``, ``leaderboard``, ``verify``, the start and end of ``bench run``, a run's
"already finished?" check) lists and reads ``runs/`` holding it *shared*; compaction holds it *exclusively* for its
whole life. A reader therefore never lists the folder half-way through a swap of files. Run files are written
without the lock: each is a new file renamed into place (atomic), and compaction checks every run file it removes
(see below), so a run finishing during a compaction is never lost.

**Compaction** folds the run files, and any part holding a row that a newer file supersedes, into one new part,
then removes what it folded. It records what it is about to do before doing it:

1. ``compaction.json`` (the journal): the new part's name, the run files (with their signatures: mtime, size,
   inode) and the parts it folds — written atomically;
2. the new part, written atomically: from here on every folded row is in it;
3. the folded parts are removed; each folded run file is renamed aside into ``.compacting/`` and removed only if
   it is the very file that was read (same signature) — a file rewritten meanwhile (a run redone) is put back
   (``link``, which never overwrites a newer file);
4. the journal is removed.

A kill at any step leaves a state the next command repairs without loss (:func:`recover`, run under the exclusive
lock by the first command that sees a journal, a non-empty ``.compacting/`` or a legacy index): before step 2
nothing was removed (the journal is discarded); after it, steps 3–4 are finished from the journal. A row is
removed from the dataset only by step 3, after the journal recorded the part that holds it — never because a
file is missing.

**Legacy stores** (before this layout, rows compacted into ``results/<suite>/index.parquet``) are migrated the
same way: every row of the old index whose run file is gone becomes a part, then the old index is removed.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench_harness import locks, paths
from bench_harness.atomic import atomic_write
from bench_harness.errors import BenchError
from bench_harness.files import open_regular
from bench_harness.results import dataset, index_parts

COMPACT_AT = 1000  # run files in runs/ from which `bench run` and `bench aggregate` compact automatically
MAX_PARTS = 64     # more parts than this: a compaction merges them all into one


class StoreRepairWarning(UserWarning):
    """An interrupted compaction or a legacy index was found and repaired (nothing was lost)."""


# ---- the lock ----------------------------------------------------------------------------------------------------

def needs_recovery(results_root: str | Path, suite: str) -> bool:
    aside = paths.compaction_aside(results_root, suite)
    return (paths.compaction_journal(results_root, suite).exists()
            or paths.legacy_index(results_root, suite).exists()
            or (_real_dir(aside) and any(aside.iterdir())))


@contextmanager
def reading(results_root: str | Path, suite: str) -> Iterator[None]:
    """Hold the store's lock shared, after repairing an interrupted compaction if there is one. On a folder this
    user cannot write, the repair is skipped (with a warning) and the folder is read as it is."""
    runs = paths.runs_dir(results_root, suite)
    if os.path.lexists(runs) and not _real_dir(runs):
        raise BenchError(f"{runs} is not a folder (a symbolic link or a file): the harness reads and moves files "
                         f"only inside a results folder's own folders; replace it with the folder itself")
    lock = paths.store_lock(results_root, suite)
    if needs_recovery(results_root, suite) and not _holds(lock):
        try:
            with locks.file_lock(lock):
                recover(results_root, suite)
        except OSError as exc:
            warnings.warn(StoreRepairWarning(
                f"{paths.suite_dir(results_root, suite)}: an interrupted compaction could not be repaired "
                f"({exc.strerror or exc}); reading the folder as it is (run a bench command with write access to "
                f"repair it)"), stacklevel=3)
    with locks.file_lock(lock, shared=True):
        yield


@contextmanager
def exclusive(results_root: str | Path, suite: str) -> Iterator[None]:
    """Hold the store's lock exclusively, the store repaired."""
    with locks.file_lock(paths.store_lock(results_root, suite)):
        recover(results_root, suite)
        yield


def _holds(lock: Path) -> bool:
    return locks.held(lock) is not None


# ---- repair ------------------------------------------------------------------------------------------------------

def recover(results_root: str | Path, suite: str) -> dict:
    """Finish or discard an interrupted compaction, put back run files left aside, migrate a legacy index. Call
    with the exclusive lock held. Returns what was done."""
    done: dict = {}
    runs = paths.runs_dir(results_root, suite)
    journal_path = paths.compaction_journal(results_root, suite)
    if journal_path.exists():
        journal = _read_journal(journal_path)
        if journal is not None and (runs / journal["new_part"]).exists() and _journal_holds(runs, journal):
            done["finished"] = _finish(results_root, suite, journal)
            warnings.warn(StoreRepairWarning(
                f"{paths.suite_dir(results_root, suite)}: finished a compaction that was interrupted (nothing lost: "
                f"the part {journal['new_part']} holds its rows)"), stacklevel=3)
        else:
            done["discarded"] = True  # killed before its part was written: nothing had been removed
        journal_path.unlink(missing_ok=True)
    done["put_back"] = _put_back_aside(results_root, suite)
    if paths.legacy_index(results_root, suite).exists():
        done["migrated"] = _migrate_legacy_index(results_root, suite)
    if runs.is_dir():  # temporary files of parts whose writer was killed (only compaction writes parts)
        for entry in os.scandir(runs):
            if entry.name.startswith(".part-") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
    return done


def _read_journal(path: Path) -> dict | None:
    try:
        with open_regular(path, max_bytes=64 << 20) as fh:
            journal = json.loads(fh.read().decode())
        if not (isinstance(journal, dict) and dataset.is_part(journal.get("new_part", ""))
                and isinstance(journal.get("consumed"), dict) and isinstance(journal.get("replaced"), list)):
            raise ValueError("not a compaction journal")
        return journal
    except (OSError, ValueError) as exc:
        # written atomically, so only a planted or damaged file gets here: without it nothing can be finished, and
        # nothing is removed — at worst a row is in two files until the next compaction
        warnings.warn(StoreRepairWarning(f"{path}: unreadable compaction journal ({exc}); ignored"), stacklevel=4)
        return None


def _part_lacks(runs: Path, name: str, ids: set[str]) -> str | None:
    """Why the part ``name`` cannot be trusted to hold ``ids`` (None: it holds them all)."""
    try:
        table, _ = dataset.read_file(str(runs / name))
        held = set(table.column("run_id").to_pylist())
    except Exception as exc:
        return f"cannot be read back ({type(exc).__name__}: {exc})"
    missing = ids - held
    return f"lacks {len(missing)} of the {len(ids)} runs it should hold" if missing else None


def _journal_holds(runs: Path, journal: dict) -> bool:
    """Whether the journal's new part really holds what the journal would remove: every run file it names, and
    every row of the parts it replaces that no surviving file holds. A planted or stale journal fails this and
    is ignored (nothing is removed)."""
    listing = dataset.list_store(runs)
    replaced = [n for n in journal["replaced"] if dataset.is_part(n) and n in listing.parts]
    survivors = {n: sig for n, sig in listing.parts.items() if n not in replaced and n != journal["new_part"]}
    elsewhere = {n[:-len(".parquet")] for n in listing.runs if n not in journal["consumed"]}
    for table in dataset.read_parts(runs, survivors, warn=False).values():
        elsewhere.update(table.column("run_id").to_pylist())
    needed = {n[:-len(".parquet")] for n in journal["consumed"] if dataset.is_row_file(n)}
    for table in dataset.read_parts(runs, {n: listing.parts[n] for n in replaced}, warn=False).values():
        needed.update(set(table.column("run_id").to_pylist()) - elsewhere)
    problem = _part_lacks(runs, journal["new_part"], needed)
    if problem:
        warnings.warn(StoreRepairWarning(f"{runs.parent / 'compaction.json'}: its part {journal['new_part']} "
                                         f"{problem}: the journal is ignored and nothing is removed"), stacklevel=4)
    return problem is None


def _finish(results_root: str | Path, suite: str, journal: dict) -> dict:
    """Steps 3-4 of a compaction whose part is written (idempotent: safe to run again after a kill)."""
    runs = paths.runs_dir(results_root, suite)
    for name in journal["replaced"]:
        if dataset.is_part(name) and name != journal["new_part"]:
            (runs / name).unlink(missing_ok=True)
    aside = paths.compaction_aside(results_root, suite)
    if not _real_dir(aside, create=True):
        raise BenchError(f"{aside} is not a folder the harness made (a link or a file): remove it, then run the "
                         f"command again (nothing was removed)")
    removed = put_back = 0
    for name, sig in journal["consumed"].items():
        if not dataset.is_row_file(name) or dataset.is_part(name) or os.sep in name:
            continue
        src, held = runs / name, aside / name
        if not held.exists():
            try:
                os.replace(src, held)
            except FileNotFoundError:
                continue
        if list(dataset.signature(os.stat(held))) == list(sig):
            os.unlink(held)
            removed += 1
        else:  # rewritten after it was read: the newer row stays
            _link_back(held, src)
            put_back += 1
    try:
        aside.rmdir()
    except OSError:
        pass
    return {"removed": removed, "put_back": put_back}


def _link_back(held: Path, dest: Path) -> None:
    """Put a run file back unless a newer one took its place meanwhile (``link`` never overwrites)."""
    try:
        os.link(held, dest)
    except FileExistsError:
        pass
    os.unlink(held)


def _put_back_aside(results_root: str | Path, suite: str) -> int:
    """Run files left in ``.compacting/`` without a journal (a compaction of an earlier version killed): back."""
    aside = paths.compaction_aside(results_root, suite)
    if not _real_dir(aside):
        return 0
    runs = paths.runs_dir(results_root, suite)
    count = 0
    for entry in os.scandir(aside):
        if dataset.is_row_file(entry.name):
            _link_back(Path(entry.path), runs / entry.name)
            count += 1
    try:
        aside.rmdir()
    except OSError:
        pass
    return count


def _migrate_legacy_index(results_root: str | Path, suite: str) -> int:
    """Rows of a legacy ``index.parquet`` whose run file is gone become a part; then the old index goes."""
    legacy = paths.legacy_index(results_root, suite)
    runs = paths.runs_dir(results_root, suite)
    try:
        with open_regular(legacy) as fh:
            data = fh.read()
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        keep = legacy.with_name(legacy.name + ".damaged")
        os.replace(legacy, keep)
        warnings.warn(StoreRepairWarning(f"{legacy}: a damaged legacy index ({type(exc).__name__}) kept as {keep}: "
                                         f"rows compacted into it cannot be read"), stacklevel=4)
        return 0
    listing = dataset.list_store(runs)
    if "run_id" in table.column_names and table.num_rows:
        newer = {n[:-len(".parquet")] for n in listing.runs}
        for part in dataset.read_parts(runs, listing.parts, warn=False).values():
            newer.update(part.column("run_id").to_pylist())
        rows = dataset.without_ids(table, newer)  # rows a newer file holds stay there
        if dataset.foreign_suite(rows, suite) is not None:
            rows = rows.filter(pc.or_kleene(pc.equal(rows.column("suite"), suite), pc.is_null(rows.column("suite"))))
        if rows.num_rows:
            runs.mkdir(parents=True, exist_ok=True)
            # the oldest sequence number: wherever a run is also elsewhere, the other file is newer
            dataset.write_part(runs, dataset.oldest_part_name(), dataset.one_row_per_run(rows))
        migrated = rows.num_rows
    else:
        migrated = 0
    legacy.unlink()
    return migrated


# ---- compaction ---------------------------------------------------------------------------------------------------

def run_files(results_root: str | Path, suite: str) -> int:
    return len(dataset.list_store(paths.runs_dir(results_root, suite)).runs)


def maybe_compact(results_root: str | Path, suite: str, force: bool = False) -> dict | None:
    """Compact when forced, when the suite has COMPACT_AT run files or more, or when a part holds a row that a
    newer run file supersedes (a compacted run redone: a glob over ``runs/`` would count it twice); None when
    there was nothing to do."""
    runs = paths.runs_dir(results_root, suite)
    listing = dataset.list_store(runs)
    if not force and len(listing.runs) < COMPACT_AT and not _superseded(runs, listing):
        return None
    return compact(results_root, suite)


def _superseded(runs: Path, listing: dataset.Listing) -> bool:
    if not listing.parts or not listing.runs:
        return False
    ids = pa.array([n[:-len(".parquet")] for n in listing.runs], pa.string())
    parts = dataset.read_parts(runs, listing.parts, warn=False)
    return any(pc.any(pc.is_in(t.column("run_id"), value_set=ids)).as_py() for t in parts.values())


def _check_folders(results_root: str | Path, suite: str) -> None:
    """Refuse (BenchError, before anything is written) a store whose own folders are links or files: compaction
    would otherwise move files in or out of a folder outside the results tree."""
    for folder in (paths.runs_dir(results_root, suite), paths.compaction_aside(results_root, suite),
                   paths.quarantine_dir(results_root, suite)):
        if os.path.lexists(folder) and not _real_dir(folder):
            raise BenchError(f"{folder} is not a folder the harness made (a symbolic link or a file): remove it, "
                             f"then run the command again (nothing was changed)")


def compact(results_root: str | Path, suite: str) -> dict:
    """Fold the suite's run files (and parts holding superseded rows) into one new part; see the module
    docstring for the protocol. Returns counts: compacted (run files removed), put_back, parts_merged, rows."""
    runs = paths.runs_dir(results_root, suite)
    if not runs.is_dir():
        return {"compacted": 0}
    with exclusive(results_root, suite):
        _check_folders(results_root, suite)
        listing = dataset.list_store(runs)
        damaged: list[tuple[str, str]] = []
        run_rows = dataset.read_shards([str(runs / n) for n in sorted(listing.runs)], damaged=damaged,
                                       suite=suite)
        parts = dataset.read_parts(runs, listing.parts, damaged=damaged)
        quarantined = _quarantine(results_root, suite, damaged, {**listing.runs, **listing.parts})
        newer_ids = set(run_rows.column("run_id").to_pylist()) if run_rows is not None else set()
        kept_from_parts, folded = [], []
        merge_all = len(parts) >= MAX_PARTS
        for name, table in dataset.newest_parts_first(parts):
            ids = table.column("run_id").to_pylist()
            if merge_all or newer_ids.intersection(ids) or len(set(ids)) != len(ids) or not dataset.conforms(table):
                folded.append(name)
                kept_from_parts.append(dataset.one_row_per_run(dataset.without_ids(table, newer_ids)))
            newer_ids.update(ids)
        if run_rows is None and not folded:
            return {"compacted": 0, "put_back": 0, "parts_merged": 0, "rows": 0, "quarantined": quarantined}
        tables = ([run_rows.drop_columns([c for c in run_rows.column_names if c.startswith("_")])]
                  if run_rows is not None else []) + [t for t in kept_from_parts if t.num_rows]
        new_part = dataset.new_part_name(list(listing.parts))
        consumed = {}
        if run_rows is not None:
            for name, *sig in zip(run_rows.column("_shard").to_pylist(), run_rows.column("_mtime_ns").to_pylist(),
                                  run_rows.column("_size").to_pylist(), run_rows.column("_ino").to_pylist()):
                consumed[name] = sig
        journal = {"version": 1, "new_part": new_part, "consumed": consumed, "replaced": folded,
                   "started": dt.datetime.now(dt.timezone.utc).isoformat(), "host": socket.gethostname(),
                   "pid": os.getpid()}
        journal_path = paths.compaction_journal(results_root, suite)
        atomic_write(journal_path, lambda tmp: Path(tmp).write_text(json.dumps(journal, indent=1)))
        rows = dataset.concat(tables) if tables else None
        if rows is not None and rows.num_rows:
            dataset.write_part(runs, new_part, rows)
            problem = _part_lacks(runs, new_part, set(rows.column("run_id").to_pylist()))
            if problem:  # never remove anything on the strength of a part that does not hold the rows
                raise RuntimeError(f"compaction of {runs}: the part it wrote {problem}; nothing was removed")
        # (no rows left: the folded parts held only superseded rows; without a new part, a kill from here on
        # discards the journal and leaves those parts, which lose nothing)
        done = _finish(results_root, suite, journal)
        journal_path.unlink(missing_ok=True)
        listing = dataset.list_store(runs)
        dataset.forget_parts(runs, set(listing.parts))
        try:  # the shard index's rows of the files folded are dropped: its parts merged into one
            index_parts.merge(paths.index_dir(results_root, suite), listing.runs)
        except OSError:  # derived: a later update merges them
            pass
    return {"compacted": done["removed"], "put_back": done["put_back"], "parts_merged": len(folded),
            "rows": rows.num_rows if rows is not None else 0, "quarantined": quarantined}


# problems that say a file is malformed (and so is moved out of the dataset), as opposed to a passing failure to
# read it (an I/O error, memory): those files stay where they are
MALFORMED = ("ValueError", "NotARegularFile", "ArrowInvalid", "ArrowTypeError", "ArrowNotImplementedError")


def _real_dir(path: Path, create: bool = False) -> bool:
    """Whether ``path`` is a directory reached without a symbolic link (created when ``create``); a planted link,
    file or FIFO in its place is never used."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        if not create:
            return False
        try:
            path.mkdir()
            return True
        except FileExistsError:
            return _real_dir(path)


def _quarantine(results_root: str | Path, suite: str, damaged: list[tuple[str, str]],
                listed: dict[str, dataset.Signature]) -> int:
    """Move unreadable files out of the dataset into ``<suite>/damaged/`` (kept for inspection, never deleted):
    their runs count as missing and are run again, and a glob over ``runs/`` reads again. Only files that were
    read and found malformed are moved — not ones that could not be opened (a passing I/O error)."""
    moved = 0
    folder = paths.quarantine_dir(results_root, suite)
    for path, problem in damaged:
        if not problem.startswith(MALFORMED):
            continue
        if not _real_dir(folder, create=True):
            warnings.warn(StoreRepairWarning(f"{folder} is not a folder the harness made: damaged files stay in "
                                             f"runs/ (remove {folder})"), stacklevel=3)
            return moved
        dest = folder / Path(path).name
        while dest.exists():
            dest = dest.with_name(f"{dest.stem}.{os.urandom(2).hex()}{dest.suffix}")
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            continue
        st = os.lstat(dest)
        if stat.S_ISREG(st.st_mode) and dataset.signature(st) != listed.get(Path(path).name):
            _link_back(dest, Path(path))  # replaced (the run redone) since it was read: the new file stays
            continue
        moved += 1
        warnings.warn(StoreRepairWarning(f"{path} ({problem}) moved to {dest}: its runs count as missing and "
                                         f"`bench run` runs them again"), stacklevel=3)
    return moved

