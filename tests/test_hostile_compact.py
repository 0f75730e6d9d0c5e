"""Hostile trial of compaction taking rows from the shard index (tried in commit 7c22fdfc, then reverted): a
compaction writes the rows it holds into a permanent part and removes the run files, so it must take each row
from its run file, never from the index. With rows from the index, each test marked "from the index" below failed: a
run file rewritten in place with its mtime restored, a run redone twice on a coarse clock reusing its inode, a forged
index row, an index row without status, of another suite or of another type, and a column stringified by a stale
row were all baked into the part (or stopped compaction). Compaction parses every run file again; these tests
guard that. The index stays a cache for readers only.
"""
from __future__ import annotations

import os
import struct

import pyarrow as pa
import pytest

from bench_harness import paths
from bench_harness.results import dataset, index_parts, store
from bench_harness.results.compaction import compact
from bench_harness.results.shard_index import update_index
from bench_harness.results.store import write_shard
from tests.test_store_integrity import SUITE, _fill, _row

pytestmark = pytest.mark.filterwarnings("ignore")  # damaged files and repairs warn: the tests look at the rows


def _rid(i: int) -> str:
    return _row(i)["run_id"]


def _shard(root, i: int):
    return paths.shard_path(root, SUITE, _rid(i))


def _rows(root) -> pa.Table | None:
    """Every row of the store as a reader sees it (the run files' bookkeeping columns left out)."""
    table, _ = update_index(root, SUITE)
    if table is None:
        return None
    table = table.drop_columns([c for c in table.column_names if c.startswith("_")])
    return table.select(sorted(table.column_names)).sort_by("run_id")


def _top1(root) -> dict[str, float]:
    table = _rows(root)
    return {} if table is None else dict(zip(table.column("run_id").to_pylist(), table.column("top1").to_pylist()))


def _part(root) -> pa.Table:
    """The one compacted part, as read back from its file."""
    runs = paths.runs_dir(root, SUITE)
    [part] = dataset.list_store(runs).parts
    table = dataset.read_file(str(runs / part))[0]
    return table.select(sorted(table.column_names)).sort_by("run_id")


def _index_table(root) -> tuple[pa.Table, str]:
    folder = paths.index_dir(root, SUITE)
    [name] = index_parts.list_parts(folder)
    return index_parts.read_part(folder / name), name


def _plant(root, table: pa.Table, name: str = f"ix-{0:020d}-deadbeef.arrow") -> None:
    """An index part written by someone else (by default named to sort before every part a reader writes)."""
    folder = paths.index_dir(root, SUITE)
    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _set(table: pa.Table, column: str, values: list, kind: pa.DataType | None = None) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, pa.array(values, kind))


def _rewrite_in_place(path, data: bytes) -> None:
    """What ``cp --preserve=timestamps NEW path``, ``rsync --inplace -t`` or ``truncate`` + write + ``touch -d``
    do: the same inode, new bytes, the old mtime restored."""
    before = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _redone_bytes(tmp_path, i: int, top1: float) -> bytes:
    """The run file a run redone elsewhere writes (same schema: with ONE_ROW_FILE, the same size)."""
    write_shard(_row(i, top1=top1), tmp_path / "elsewhere", SUITE)
    return _shard(tmp_path / "elsewhere", i).read_bytes()


# ---- 1. an index row that differs from its run file while the signature still matches ------------------------------

def test_a_run_file_rewritten_in_place_with_its_mtime_restored_is_compacted_with_its_own_row(tmp_path):
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)  # a reader: the index holds top1 = 0.5 for run 1
    path = _shard(root, 1)
    before = os.stat(path)
    _rewrite_in_place(path, _redone_bytes(tmp_path, 1, top1=0.9))
    after = os.stat(path)
    assert dataset.signature(after) == dataset.signature(before)  # the index cannot tell...
    assert after.st_ctime_ns != before.st_ctime_ns  # ...the ctime can (in-place writes and utime both set it)
    assert dataset.read_file(str(path))[0].column("top1")[0].as_py() == 0.9  # what the run file says
    compact(root, SUITE)
    assert not path.exists()  # the run file is gone: only the part is left
    assert _top1(root)[_rid(1)] == 0.9  # from the index: 0.5, the row of the file's former content, for good


def test_a_run_redone_twice_on_a_coarse_clock_reusing_the_inode_is_compacted_with_its_own_row(tmp_path):
    """No hostile user: a run redone twice within one mtime tick (1 s on ext3, NFSv3 servers, HFS+; 2 s on FAT) on a
    filesystem that reuses a freed inode at once (ext4 does: the third file often gets the first one's inode), with
    the same size (uncompressed one-row files of one schema have the same size whatever their values)."""
    root = tmp_path / "store"
    _fill(root, 3)
    update_index(root, SUITE)
    path = _shard(root, 1)
    first = os.stat(path)
    for _ in range(20):
        write_shard(_row(1, top1=0.9), root, SUITE)  # the run redone (atomic rename: a new inode each time)
        if os.stat(path).st_ino == first.st_ino:
            break
    else:
        pytest.skip("this filesystem did not reuse the inode")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))  # the coarse clock: the same tick as the first write
    assert dataset.signature(os.stat(path)) == dataset.signature(first)
    compact(root, SUITE)
    assert _top1(root)[_rid(1)] == 0.9  # from the index: 0.5, the row of the file two writes ago


def test_before_this_commit_a_compaction_corrected_what_readers_showed_from_a_stale_index_row(tmp_path):
    """The same in-place rewrite: readers showed the stale row before this commit too, but a full parse (and any
    reader after the index is deleted, as its docstring allows) gave the run file's row. Compaction used to be
    that full parse; now it removes the only copy of the truth."""
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    _rewrite_in_place(_shard(root, 1), _redone_bytes(tmp_path, 1, top1=0.9))
    assert _top1(root)[_rid(1)] == 0.5  # readers: the stale row (as before this commit)
    parsed = dataset.read_shards([str(_shard(root, i)) for i in range(4)], suite=SUITE)
    assert dict(zip(parsed.column("run_id").to_pylist(), parsed.column("top1").to_pylist()))[_rid(1)] == 0.9


def test_a_forged_index_row_with_the_files_real_signature_is_not_baked_into_a_part(tmp_path):
    """A part planted in the group-writable index folder, with the real signatures of existing files and other
    values (named to sort first: read_index keeps the first row of a file it finds, so it also wins over the
    genuine part). Readers showed it before; compaction now makes it the only copy."""
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    table, _ = _index_table(root)
    _plant(root, _set(table, "top1", [0.99] * table.num_rows))
    compact(root, SUITE)
    assert set(_top1(root).values()) == {0.5}  # from the index: every row now says 0.99, and no run file says otherwise


# ---- 2. planted or damaged index parts ------------------------------------------------------------------------------

def _one_bad_row(table: pa.Table, column: str, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[0] = value
    return _set(table, column, values, table.schema.field(column).type)


def test_an_index_row_without_status_does_not_make_the_whole_compacted_part_damaged(tmp_path):
    """One index row whose status is null (a planted part, or an index of an earlier version whose readers checked
    less): the part compaction writes holds it, every reader then refuses the part as damaged (check_rows: rows
    without a status), and the next compaction moves it to damaged/ with every other row in it."""
    root = tmp_path / "store"
    _fill(root, 6)
    update_index(root, SUITE)
    table, name = _index_table(root)
    os.unlink(paths.index_dir(root, SUITE) / name)
    _plant(root, _one_bad_row(table, "status", None))
    compact(root, SUITE)
    rows = _rows(root)
    assert rows is not None and rows.num_rows == 6  # from the index: None, the 6 runs are gone from every reader
    compact(root, SUITE)
    assert _rows(root).num_rows == 6  # (and now the part is in damaged/)


def test_an_index_row_of_another_suite_is_not_baked_into_this_suites_part(tmp_path):
    """One index row saying suite 'other' with a file's real signature: read_shards would have refused that file
    (foreign_suite); from the index it goes into the part, which every reader then refuses whole."""
    root = tmp_path / "store"
    _fill(root, 6)
    update_index(root, SUITE)
    table, name = _index_table(root)
    os.unlink(paths.index_dir(root, SUITE) / name)
    _plant(root, _one_bad_row(table, "suite", "other"))
    compact(root, SUITE)
    rows = _rows(root)
    assert rows is not None and rows.num_rows >= 5  # from the index: None, the 5 genuine rows lost with it
    assert set(rows.column("suite").to_pylist()) == {SUITE}


def test_an_index_part_with_a_column_of_another_type_does_not_stop_compaction(tmp_path):
    """top1 as a string that is no number: read_part checks only run_id and the signature columns, so the row is
    taken; write_part's cast raises ArrowInvalid after the journal is written. Every later compaction fails the
    same way (bench aggregate catches only OSError/BenchError/RuntimeError, so it fails whole), until someone
    deletes the index."""
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    table, name = _index_table(root)
    os.unlink(paths.index_dir(root, SUITE) / name)
    _plant(root, _set(table, "top1", ["abc"] * table.num_rows))
    compact(root, SUITE)  # from the index: ArrowInvalid (cannot parse 'abc' as double)
    assert set(_top1(root).values()) == {0.5}


def _twin_roots(tmp_path):
    return tmp_path / "indexed", tmp_path / "plain"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "run_id_int", "duplicate_rows", "symlink", "fifo",
                                    "folder", "shard_of_another_run", "null_signature"])
def test_a_damaged_or_alien_index_part_is_ignored_and_compaction_parses_the_files(tmp_path, damage):
    indexed, plain = _twin_roots(tmp_path)
    for root in (indexed, plain):
        _fill(root, 5)
    update_index(indexed, SUITE)
    folder = paths.index_dir(indexed, SUITE)
    table, name = _index_table(indexed)
    real = folder / name
    if damage == "truncated":
        data = real.read_bytes()
        real.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        real.write_bytes(b"ARROW1" + os.urandom(512))
    elif damage == "run_id_int":
        os.unlink(real)
        _plant(indexed, _set(table, "run_id", list(range(table.num_rows)), pa.int64()))
    elif damage == "duplicate_rows":
        os.unlink(real)
        _plant(indexed, pa.concat_tables([_set(table, "top1", [0.99] * table.num_rows), table]))
    elif damage in ("symlink", "fifo", "folder"):
        os.unlink(real)
        other = tmp_path / "other.arrow"
        with pa.OSFile(str(other), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(_set(table, "top1", [0.99] * table.num_rows))
        if damage == "symlink":
            os.symlink(other, real)
        elif damage == "fifo":
            os.mkfifo(real)
        else:
            real.mkdir()
    elif damage == "shard_of_another_run":  # a row under another run's file name
        os.unlink(real)
        shards = table.column("_shard").to_pylist()
        _plant(indexed, _set(table, "_shard", shards[1:] + shards[:1]))
    elif damage == "null_signature":
        os.unlink(real)
        _plant(indexed, _set(table, "_ino", [None] * table.num_rows, pa.int64()))
    for root in (indexed, plain):
        assert compact(root, SUITE)["compacted"] == 5
    assert _part(indexed).equals(_part(plain))


def test_a_part_of_index_rows_from_another_suites_files_is_never_used(tmp_path):
    """Another suite's index folder copied (or linked) into this one: its rows name other files' signatures."""
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    other = tmp_path / "other"
    for i in range(4):
        write_shard({**_row(i, top1=0.99), "suite": "other"}, other, "other")
    update_index(other, "other")
    [name] = index_parts.list_parts(paths.index_dir(other, "other"))
    _plant(root, index_parts.read_part(paths.index_dir(other, "other") / name))
    compact(root, SUITE)
    assert set(_top1(root).values()) == {0.5} and set(_rows(root).column("suite").to_pylist()) == {SUITE}


# ---- 3. a compaction killed with rows from the index ----------------------------------------------------------------

class Killed(BaseException):
    pass


@pytest.mark.parametrize("after_removals", [0, 2])
def test_a_compaction_killed_after_its_part_is_written_is_finished_with_the_run_files_rows(tmp_path, monkeypatch,
                                                                                         after_removals):
    indexed, plain = _twin_roots(tmp_path)
    for root in (indexed, plain):
        _fill(root, 6)
    update_index(indexed, SUITE)
    write_shard(_row(2, top1=0.9), indexed, SUITE)  # one row the index does not hold (parsed)
    write_shard(_row(2, top1=0.9), plain, SUITE)
    real_unlink, count = os.unlink, []

    def unlink(path, *args, **kwargs):
        if "/.compacting/" in str(path):  # a run file removed by step 3
            if len(count) == after_removals:
                raise Killed
            count.append(path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(Killed):
        compact(indexed, SUITE)
    monkeypatch.undo()
    assert paths.compaction_journal(indexed, SUITE).exists()
    assert _rows(indexed).equals(_rows(plain))  # the next reader repairs: the run files' rows, once each
    assert _top1(indexed)[_rid(2)] == 0.9
    compact(plain, SUITE)
    assert _part(indexed).equals(_part(plain))
    assert dataset.list_store(paths.runs_dir(indexed, SUITE)).runs == {}


# ---- 4. a run file rewritten during the compaction ------------------------------------------------------------------

def test_a_run_redone_between_the_index_read_and_the_removal_is_put_back(tmp_path, monkeypatch):
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    real = dataset.write_part

    def write_part(runs, name, table):  # the run redone (a new file renamed in) while compaction writes its part
        write_shard(_row(1, top1=0.9), root, SUITE)
        return real(runs, name, table)

    monkeypatch.setattr(dataset, "write_part", write_part)
    done = compact(root, SUITE)
    monkeypatch.undo()
    assert done["put_back"] == 1 and _shard(root, 1).exists()
    assert _top1(root)[_rid(1)] == 0.9
    compact(root, SUITE)
    assert _top1(root) == {**{_rid(i): 0.5 for i in range(4)}, _rid(1): 0.9}


def test_a_run_file_rewritten_in_place_during_the_compaction_is_put_back(tmp_path, monkeypatch):
    """In place without the mtime restored: the signature changes (mtime), _finish puts the file back."""
    root = tmp_path / "store"
    _fill(root, 4)
    update_index(root, SUITE)
    new = _redone_bytes(tmp_path, 1, top1=0.9)
    real = dataset.write_part

    def write_part(runs, name, table):
        path = _shard(root, 1)
        st = os.stat(path)
        with open(path, "r+b") as fh:
            fh.write(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        return real(runs, name, table)

    monkeypatch.setattr(dataset, "write_part", write_part)
    assert compact(root, SUITE)["put_back"] == 1
    monkeypatch.undo()
    assert _top1(root)[_rid(1)] == 0.9


# ---- 5. mixed formats and schemas: the part from index rows equals the part from a full parse -----------------------

def _mixed(root, monkeypatch, i: int, extra: dict, old_format: bool) -> None:
    with monkeypatch.context() as m:
        if old_format:  # run files of before this commit: statistics, dictionary pages, snappy
            m.setattr(store, "ONE_ROW_FILE", {})
        write_shard({**_row(i, top1=0.1 * i), **extra}, root, SUITE)


def test_mixed_old_format_and_one_row_files_with_extra_metrics_compact_from_the_index_as_from_a_full_parse(
        tmp_path, monkeypatch):
    indexed, plain = _twin_roots(tmp_path)
    extras = [{}, {"metric_a": 1.5}, {"metric_b": "x"}, {"metric_a": 2.5, "metric_b": "y"}, {}, {"metric_c": None}]
    for root in (indexed, plain):
        for i, extra in enumerate(extras):
            _mixed(root, monkeypatch, i, extra, old_format=i % 2 == 0)
    update_index(indexed, SUITE)
    for root in (indexed, plain):  # and more files the index has not seen, in both formats
        for i, extra in enumerate(extras, start=len(extras)):
            _mixed(root, monkeypatch, i, extra, old_format=i % 2 == 1)
    update_index(indexed, SUITE)
    for root in (indexed, plain):
        _mixed(root, monkeypatch, 20, {"metric_a": 3.5}, old_format=False)
    for root in (indexed, plain):
        compact(root, SUITE)
    a, b = _part(indexed), _part(plain)
    assert a.schema.equals(b.schema) and a.equals(b)


def test_a_column_stringified_by_a_stale_index_row_keeps_its_files_type_in_the_compacted_part(tmp_path):
    """One run file had metric_x as a string (a plugin version that wrote 'n/a'): the reader's index part holds
    metric_x as strings for every file it read together. That run is redone with a number: a full parse gives
    float64, but the index rows of the other files are still strings, and compaction writes them as the part's
    type for good (pandas then reads '0.1' strings)."""
    indexed, plain = _twin_roots(tmp_path)
    for root in (indexed, plain):
        for i in range(4):
            write_shard({**_row(i), "metric_x": "n/a" if i == 0 else 0.1 * i}, root, SUITE)
    update_index(indexed, SUITE)
    for root in (indexed, plain):
        write_shard({**_row(0), "metric_x": 0.3}, root, SUITE)
        compact(root, SUITE)
    a, b = _part(indexed), _part(plain)
    assert b.schema.field("metric_x").type == pa.float64()
    assert a.schema.field("metric_x").type == pa.float64()  # from the index: string
    assert a.equals(b)


def test_float_values_survive_the_index_unchanged(tmp_path):
    """Values that do not round-trip through a decimal string are the run files' bits after compaction from the
    index (the index is Arrow IPC: no conversion)."""
    indexed, plain = _twin_roots(tmp_path)
    values = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, float.fromhex("0x1.fffffffffffffp-1")]
    for root in (indexed, plain):
        for i, v in enumerate(values):
            write_shard(_row(i, top1=v), root, SUITE)
    update_index(indexed, SUITE)
    for root in (indexed, plain):
        compact(root, SUITE)
    bits = [struct.pack("<d", v) for v in _part(indexed).column("top1").to_pylist()]
    assert bits == [struct.pack("<d", v) for v in values] and _part(indexed).equals(_part(plain))
