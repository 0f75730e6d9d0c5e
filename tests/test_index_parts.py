"""The shard index in parts (bench_harness/results/index_parts.py): an update appends a part and rewrites none,
readers union the parts with the same counts as reading every run file, compaction merges them, the single-file
index of earlier versions is upgraded in place, and readers racing appends, merges and compactions in other
processes never miss or double-count a run."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from bench_harness import paths
from bench_harness.results import dataset, index_parts
from bench_harness.results.compaction import compact
from bench_harness.results.shard_index import update_index
from bench_harness.results.store import write_shard
from tests.test_store_integrity import SUITE, _fill, _python, _row, _rows


def _parts(root) -> list[str]:
    return index_parts.list_parts(paths.index_dir(root, SUITE))


def _ids(table) -> list[str]:
    return sorted(table.column("run_id").to_pylist())


def test_an_update_appends_a_part_and_rewrites_none(tmp_path):
    _fill(tmp_path, 30)
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 30 and table.num_rows == 30
    [first] = _parts(tmp_path)
    before = os.stat(paths.index_dir(tmp_path, SUITE) / first)
    _fill(tmp_path, 5, start=30)
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 5 and table.num_rows == 35
    parts = _parts(tmp_path)
    assert len(parts) == 2 and parts[0] == first
    after = os.stat(paths.index_dir(tmp_path, SUITE) / first)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert index_parts.read_part(paths.index_dir(tmp_path, SUITE) / parts[1]).num_rows == 5  # only the new rows
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 0 and table.num_rows == 35 and len(_parts(tmp_path)) == 2  # nothing new: no part


def test_the_union_of_the_parts_counts_like_reading_every_file(tmp_path):
    _fill(tmp_path, 20)
    update_index(tmp_path, SUITE)
    write_shard(_row(3, top1=0.9, hours=1), tmp_path, SUITE)  # a run redone: its file changes
    os.unlink(paths.shard_path(tmp_path, SUITE, f"{7:040x}"))  # a run file removed by hand
    _fill(tmp_path, 4, start=20)
    table, stats = update_index(tmp_path, SUITE)
    rebuilt, _ = update_index(tmp_path, SUITE, rebuild=True)
    assert stats["read"] == 5 and stats["dropped"] == 1  # the removed file (the redone run's old row: ignored)
    assert _ids(table) == _ids(rebuilt) and table.num_rows == 23
    top1 = dict(zip(table.column("run_id").to_pylist(), table.column("top1").to_pylist()))
    assert top1[f"{3:040x}"] == 0.9
    assert len(_parts(tmp_path)) == 1  # rebuild: one part


def test_many_parts_are_merged_and_compaction_merges_them(tmp_path):
    for i in range(index_parts.MAX_PARTS + 1):
        _fill(tmp_path, 1, start=i)
        update_index(tmp_path, SUITE)
    assert len(_parts(tmp_path)) == 1  # 16 parts there: merged into one after the 17th was appended
    table, _ = update_index(tmp_path, SUITE)
    assert table.num_rows == index_parts.MAX_PARTS + 1
    compact(tmp_path, SUITE)
    assert _parts(tmp_path) == []  # every run file folded: no row of the index is valid any more
    table, stats = update_index(tmp_path, SUITE)
    assert table.num_rows == index_parts.MAX_PARTS + 1 and stats["compacted_rows"] == table.num_rows


def test_a_row_is_cached_only_for_a_file_older_than_one_clock_tick(tmp_path, monkeypatch):
    """A run redone twice within one tick of the file system's clock, the freed inode reused (ext4 does) and a row
    of the same size: the file has the signature of the one it replaced. Its row is not cached until it has
    settled, so a reader parses it again and shows what it says."""
    monkeypatch.setattr(index_parts, "SETTLE_S", 2.0)
    _fill(tmp_path, 3)
    path = paths.shard_path(tmp_path, SUITE, _row(1)["run_id"])
    first = os.stat(path)
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 3 and _parts(tmp_path) == []  # just written: parsed, not cached
    for _ in range(20):
        write_shard(_row(1, top1=0.9), tmp_path, SUITE)
        if os.stat(path).st_ino == first.st_ino:
            break
    else:
        pytest.skip("this file system did not reuse the inode")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))  # the coarse clock: the first write's tick
    assert dataset.signature(os.stat(path)) == dataset.signature(first)
    table, stats = update_index(tmp_path, SUITE)
    top1 = dict(zip(table.column("run_id").to_pylist(), table.column("top1").to_pylist()))
    assert stats["read"] == 3 and top1[_row(1)["run_id"]] == 0.9
    old = os.stat(path).st_mtime_ns - 3 * 10**9  # settled files are cached
    for i in range(3):
        other = paths.shard_path(tmp_path, SUITE, _row(i)["run_id"])
        os.utime(other, ns=(old, old))
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 3 and len(_parts(tmp_path)) == 1
    assert update_index(tmp_path, SUITE)[1]["read"] == 0
    assert index_parts.settled(table, now_ns=old + 10**9).num_rows == 0


def test_the_single_file_index_of_earlier_versions_is_upgraded_in_place(tmp_path):
    _fill(tmp_path, 6)
    table, _ = update_index(tmp_path, SUITE)
    legacy = paths.index_cache(tmp_path, SUITE)
    with pa.OSFile(str(legacy), "wb") as sink, pa.ipc.new_file(sink, table.drop_columns(["_compacted"]).schema) as w:
        w.write_table(table.drop_columns(["_compacted"]))
    index_parts.remove(paths.index_dir(tmp_path, SUITE), _parts(tmp_path))
    table, stats = update_index(tmp_path, SUITE)
    assert stats["read"] == 0 and table.num_rows == 6  # its rows were used, not read again
    assert not legacy.exists() and len(_parts(tmp_path)) == 1
    legacy.write_bytes(b"not arrow")  # a damaged one is dropped: the run files are the truth
    table, stats = update_index(tmp_path, SUITE)
    assert table.num_rows == 6 and not legacy.exists()


def test_an_index_part_in_a_read_only_folder_is_only_an_optimisation(tmp_path):
    _fill(tmp_path, 3)
    folder = paths.index_dir(tmp_path, SUITE)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where the index folder would be")
    table, stats = update_index(tmp_path, SUITE)
    assert table.num_rows == 3 and "index_not_saved" in stats


APPENDER = """
    import sys, warnings
    warnings.simplefilter("ignore")
    from bench_harness.results.store import load_results, write_shard
    from tests.test_store_integrity import _row
    for i in range({start}, {start} + {count}):
        write_shard(_row(i), {root!r}, "s")
        if i % 25 == 0:
            print("seen", len(load_results({root!r}, ["s"])))
"""

UNION_READER = """
    import sys, warnings
    warnings.simplefilter("ignore")
    from bench_harness.results.store import load_results
    for _ in range({rounds}):
        df = load_results({root!r}, ["s"])
        assert df["run_id"].is_unique, "a run counted twice"
        print(len(df), int(df["run_id"].str[-6:].apply(int, base=16).max()) if len(df) else -1)
"""


@pytest.mark.integration
def test_readers_racing_appends_merges_and_compactions_never_miss_or_double_count(tmp_path):
    """Processes append run files and update the index (parts appended, merged past MAX_PARTS), a compactor folds
    the run files, readers read all along: each reader sees every run that existed before it started, none
    twice; at the end every run is there once."""
    base = 600
    _fill(tmp_path, base)
    update_index(tmp_path, SUITE)
    env = {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    writers = [_python(APPENDER.format(root=str(tmp_path), start=base + k * 150, count=150), **env) for k in range(2)]
    readers = [_python(UNION_READER.format(root=str(tmp_path), rounds=8), **env) for _ in range(2)]
    compactor = _python(f"""
        import time
        from bench_harness.results.compaction import compact
        for _ in range(3):
            time.sleep(0.5)
            compact({str(tmp_path)!r}, "s")
    """, **env)
    for proc in [*writers, *readers, compactor]:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        if proc in readers:
            for line in out.split("\n"):
                if line:
                    count, _ = map(int, line.split())
                    assert count >= base, f"a reader missed runs: {line}"
        if proc in writers:  # a writer's own runs so far are always seen
            assert all(int(line.split()[1]) >= base for line in out.split("\n") if line)
    df = _rows(tmp_path)
    assert len(df) == base + 300 and df["run_id"].is_unique
    table, _ = update_index(tmp_path, SUITE, rebuild=True)
    assert table.num_rows == base + 300
    assert dataset.list_store(paths.runs_dir(tmp_path, SUITE)).parts  # the compactor did compact
