"""The results store never loses or duplicates a row: compaction racing readers (real processes, thousands of
files), a compaction killed at every one of its file operations, run files rewritten during a compaction, legacy
stores, leftovers of killed compactions, `bench verify` on compacted rows, one claim lock for every executor."""
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench_harness import paths
from bench_harness.results.compaction import compact
from bench_harness.results.store import load_results, shard_status, write_shard
from tests.conftest import bench

SUITE = "s"


def _row(i: int, top1: float = 0.5, hours: int = 0) -> dict:
    return {"run_id": f"{i:040x}", "suite": SUITE, "pruner": "magnitude", "model": "mlp", "dataset": "synthetic",
            "seed": i, "target_sparsity": 0.5, "status": "ok", "top1": top1,
            "finished_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=hours)}


def _fill(root, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        write_shard(_row(i), root, SUITE)


def _rows(root) -> pd.DataFrame:
    return load_results(root, [SUITE])


def _glob_rows(root) -> pd.DataFrame:
    """What a user's pandas sees: the dataset folder."""
    runs = paths.runs_dir(root, SUITE)
    return pd.read_parquet(runs) if any(p.suffix == ".parquet" for p in runs.iterdir()) else pd.DataFrame()


def _python(code: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


READER = """
    import sys, time, warnings
    warnings.simplefilter("ignore")
    from bench_harness.results.store import load_results
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for _ in range(3):
        print(len(load_results({root!r}, ["s"])))
"""


def test_compaction_racing_readers_in_other_processes_loses_nothing(tmp_path):
    """Finding 1: on bf202ae a reader that read the index before compaction wrote it put the rows back as not
    compacted, and the next update dropped every one of them (3,500 rows lost in 3 of 5 tries)."""
    n = 2500
    _fill(tmp_path, n)
    for attempt in range(3):
        compactor = _python(f"""
            from bench_harness.results.compaction import compact
            print(compact({str(tmp_path)!r}, "s")["compacted"])
        """)
        readers = [_python(READER.format(root=str(tmp_path))) for _ in range(3)]
        for proc in [compactor, *readers]:
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err
            if proc is not compactor:  # a reader never sees a partial suite
                assert set(out.split()) == {str(n)}, (attempt, out)
        df = _rows(tmp_path)
        assert len(df) == n and df["run_id"].is_unique, attempt
        assert len(_glob_rows(tmp_path)) == n
        _fill(tmp_path, 200, start=n)  # more runs arrive; the next compaction folds them too
        n += 200
    assert len(_rows(tmp_path)) == n


KILLER = """
    import os, sys
    from bench_harness.results import compaction, dataset
    budget = [int(sys.argv[1])]

    def fault(fn):
        def wrapped(*args, **kwargs):
            budget[0] -= 1
            if budget[0] < 0:
                os._exit(137)  # a kill -9 right before this file operation
            return fn(*args, **kwargs)
        return wrapped

    for name in ("replace", "unlink", "link", "rmdir", "mkdir"):
        setattr(os, name, fault(getattr(os, name)))
    result = compaction.compact({root!r}, "s")
    print("done", result)
"""


def _snapshot(root) -> dict:
    return _rows(root).set_index("run_id")["top1"].to_dict()


def test_a_compaction_killed_at_every_file_operation_loses_and_duplicates_nothing(tmp_path):
    """Kill compaction before each of its file operations in turn (journal, part, removal of folded parts, each
    run file moved aside and removed, the journal's removal): the next command repairs the store, every row is
    there once, and the dataset folder holds exactly the rows."""
    base = tmp_path / "base"
    _fill(base, 6)
    compact(base, SUITE)                                  # a part of 6 rows...
    _fill(base, 4, start=6)                               # ...4 new run files...
    write_shard(_row(0, top1=0.9, hours=1), base, SUITE)  # ...and a compacted run redone (its old row superseded)
    expected = _snapshot(base)
    assert len(expected) == 10 and expected[f"{0:040x}"] == 0.9
    step = 0
    while True:
        root = tmp_path / f"k{step}"
        subprocess.run(["cp", "-a", str(base), str(root)], check=True)
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER.format(root=str(root))), str(step)],
                              capture_output=True, text=True, timeout=900)
        killed = proc.returncode == 137
        assert killed or (proc.returncode == 0 and "done" in proc.stdout), proc.stderr
        assert _snapshot(root) == expected, f"killed before file operation {step}"   # repaired by this reader
        assert not paths.compaction_journal(root, SUITE).exists()
        assert not paths.compaction_aside(root, SUITE).exists()
        compact(root, SUITE)                              # the next compaction: exactly the rows, once each
        glob = _glob_rows(root)
        assert len(glob) == 10 and glob["run_id"].is_unique, f"killed before file operation {step}"
        assert glob.set_index("run_id")["top1"].to_dict() == expected
        if not killed:
            break
        step += 1
    assert step >= 8  # journal, part, old part, 5 run files aside + removed, journal removal: every one was tried


def test_a_run_file_rewritten_during_compaction_keeps_the_newer_row(tmp_path, monkeypatch):
    """A run redone while compaction runs: compaction read the old file, the new one must survive."""
    from bench_harness.results import compaction, dataset

    _fill(tmp_path, 5)
    real_write_part = dataset.write_part

    def write_part_then_a_run_finishes(runs, name, table):
        out = real_write_part(runs, name, table)
        write_shard(_row(2, top1=0.77, hours=3), tmp_path, SUITE)  # another process finishes run 2 again
        return out

    monkeypatch.setattr(compaction.dataset, "write_part", write_part_then_a_run_finishes)
    result = compact(tmp_path, SUITE)
    assert result["put_back"] == 1 and result["compacted"] == 4
    monkeypatch.undo()
    assert _snapshot(tmp_path)[f"{2:040x}"] == 0.77
    compact(tmp_path, SUITE)
    glob = _glob_rows(tmp_path)
    assert len(glob) == 5 and glob.set_index("run_id").loc[f"{2:040x}", "top1"] == 0.77


def test_a_legacy_index_is_migrated_without_loss(tmp_path):
    """Stores written before the dataset layout kept compacted rows only in index.parquet: they become a part,
    including rows the old protocol had wrongly marked not compacted after their file was removed."""
    _fill(tmp_path, 3)
    rows = [_row(i) for i in range(3, 8)]
    table = pa.Table.from_pylist(rows).append_column("_shard", pa.array([f"{r['run_id']}.parquet" for r in rows]))
    table = table.append_column("_compacted", pa.array([True, True, True, False, False]))
    pq.write_table(table, paths.legacy_index(tmp_path, SUITE))
    df = _rows(tmp_path)
    assert len(df) == 8 and df["run_id"].is_unique
    assert not paths.legacy_index(tmp_path, SUITE).exists()
    assert len(_glob_rows(tmp_path)) == 8
    assert shard_status(tmp_path, SUITE, f"{5:040x}") == "ok"


def test_files_left_by_a_killed_compaction_are_repaired(tmp_path):
    """Finding 7: a file left in .compacting/ after a kill stayed there forever (its row unread)."""
    _fill(tmp_path, 3)
    aside = paths.compaction_aside(tmp_path, SUITE)
    aside.mkdir()
    src = paths.shard_path(tmp_path, SUITE, f"{1:040x}")
    os.replace(src, aside / src.name)
    assert len(_rows(tmp_path)) == 3
    assert not aside.exists() and src.exists()
    # a planted, unreadable journal is ignored: nothing is removed
    paths.compaction_journal(tmp_path, SUITE).write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable compaction journal"):
        assert len(_rows(tmp_path)) == 3


def _bench(*args):
    return bench(*args, check=False, timeout=900)


def test_verify_understands_compacted_rows_and_damaged_parts(tmp_path):
    """Finding 7: `bench verify` called compacted runs "missing" (exit 0)."""
    suite = tmp_path / "v.yaml"
    suite.write_text(f"""
name: v
grid: {{models: [mlp], datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 64,
        test_size: 32}}}}], sparsities: [0.5], seeds: [0, 1], pruners: [magnitude]}}
recipe: {{epochs: 1, batch_size: 32}}
results_root: {tmp_path / 'results'}
""")
    assert _bench("run", suite, "--no-progress").returncode == 0
    assert _bench("aggregate", "v", "--results-root", tmp_path / "results", "--compact").returncode == 0
    out = _bench("verify", suite)
    assert out.returncode == 0 and "2 ok (compacted)" in out.stdout, out.stdout + out.stderr
    part = next(p for p in (tmp_path / "results" / "v" / "runs").iterdir() if p.name.startswith("part-"))
    part.write_bytes(part.read_bytes()[:100])
    out = _bench("verify", suite)
    assert out.returncode == 1 and f"DAMAGED {part}" in out.stdout and "2 missing" in out.stdout, out.stdout


def test_the_readme_way_of_reading_results_sees_every_row_after_compaction(tmp_path):
    """Finding 6: after compaction `pd.read_parquet("results/<suite>/runs")` returned 0 rows on bf202ae."""
    _fill(tmp_path, 10)
    compact(tmp_path, SUITE)
    assert len(pd.read_parquet(tmp_path / SUITE / "runs")) == 10
    assert not list((tmp_path / SUITE).glob("*.parquet"))  # no derived file beside the rows counts them twice


CLAIM_SUITE = """
name: c
grid: {{models: [mlp], datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 64,
        test_size: 32}}}}], sparsities: [0.5], seeds: [0], pruners: [magnitude]}}
recipe: {{epochs: 1, batch_size: 32}}
results_root: {root}
"""

HOLDER = """
    import sys, time
    from bench_harness.config.suite import load_suite
    from bench_harness.running import executor, runner
    from bench_harness.slurm import task

    def hold(run, **kwargs):  # the run is claimed: say so, then work for a long time
        print("held", flush=True)
        time.sleep(600)

    runner.execute_run = hold
    run = load_suite(sys.argv[1]).runs[0]
    if sys.argv[2] == "slurm_task":
        task.execute_once(run)
    else:
        executor.execute_claimed(run)
"""


@pytest.mark.parametrize("holder", ["slurm_task", "local_runner"])
def test_slurm_tasks_and_local_runners_exclude_each_other(tmp_path, holder):
    """Finding 3: SLURM tasks used flock and local runners lockf, which do not exclude each other on Linux: both
    executed the same run, in both directions. Now both take the same claim (real processes, real lock files)."""
    import fcntl

    from bench_harness.config.suite import load_suite
    from bench_harness.running import executor
    from bench_harness.slurm import task

    path = tmp_path / "c.yaml"
    path.write_text(CLAIM_SUITE.format(root=tmp_path / "results"))
    run = load_suite(path).runs[0]
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path), holder],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read() if proc.poll() is not None else ""
        if holder == "slurm_task":
            assert executor.execute_claimed(run) is None  # the local runner leaves it to the task
        else:
            assert task.execute_once(run) == "busy"  # the SLURM task leaves it to the local runner
        with open(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock", "a+") as fh:
            with pytest.raises(OSError):  # the classic POSIX lock an older version takes is excluded too
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        proc.kill()
        proc.wait()
    from bench_harness.locks import Claim

    with Claim(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock") as claim:
        assert claim.acquired  # released when its holder died


def test_compaction_moves_damaged_files_out_of_the_dataset(tmp_path):
    """A truncated run file or part would make every glob reader fail: compaction moves it to damaged/ (kept),
    its runs count as missing and are redone, and the folder reads again."""
    _fill(tmp_path, 4)
    compact(tmp_path, SUITE)
    _fill(tmp_path, 2, start=4)
    part = next(p for p in paths.runs_dir(tmp_path, SUITE).iterdir() if p.name.startswith("part-"))
    part.write_bytes(part.read_bytes()[:50])
    bad_run = paths.shard_path(tmp_path, SUITE, f"{5:040x}")
    bad_run.write_bytes(b"PAR1 not really")
    with pytest.warns(UserWarning, match="moved to"):
        result = compact(tmp_path, SUITE)
    assert result["quarantined"] == 2
    assert sorted(p.name for p in paths.quarantine_dir(tmp_path, SUITE).iterdir()) == sorted([part.name,
                                                                                             bad_run.name])
    assert len(_glob_rows(tmp_path)) == 1 and len(_rows(tmp_path)) == 1  # run 4; the others are to be redone
    assert shard_status(tmp_path, SUITE, f"{0:040x}") is None


# ---- planted and crafted files (found by a hostile fault trial) ----------------------------------------------------

def test_a_part_with_the_highest_sequence_number_does_not_hide_the_rows(tmp_path):
    """A file named part-99999999-… made the next part 9 digits long, unrecognised: its rows vanished."""
    _fill(tmp_path, 5)
    (paths.runs_dir(tmp_path, SUITE) / "part-99999999-deadbeef.parquet").write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        compact(tmp_path, SUITE)
    assert len(_rows(tmp_path)) == 5 and len(_glob_rows(tmp_path)) == 5
    _fill(tmp_path, 2, start=5)
    compact(tmp_path, SUITE)
    assert len(_rows(tmp_path)) == 7 and len(_glob_rows(tmp_path)) == 7


def test_a_planted_journal_removes_nothing(tmp_path):
    """A compaction.json naming existing files, whose 'new part' does not hold their rows, is ignored."""
    _fill(tmp_path, 4)
    compact(tmp_path, SUITE)
    _fill(tmp_path, 3, start=4)
    runs = paths.runs_dir(tmp_path, SUITE)
    part = next(p.name for p in runs.iterdir() if p.name.startswith("part-"))
    decoy = "part-00000007-0badc0de.parquet"
    pq.write_table(pa.Table.from_pylist([_row(99)]), runs / decoy)
    journal = {"new_part": decoy, "replaced": [part],
               "consumed": {f"{i:040x}.parquet": [0, 0, 0] for i in range(4, 7)}}
    paths.compaction_journal(tmp_path, SUITE).write_text(json.dumps(journal))
    with pytest.warns(UserWarning, match="journal is ignored"):
        df = _rows(tmp_path)
    assert len(df) == 8  # the 7 runs and the decoy's row: nothing removed
    assert (runs / part).exists() and all(paths.shard_path(tmp_path, SUITE, f"{i:040x}").exists() for i in (4, 5, 6))


def test_merge_refuses_rows_whose_run_id_is_a_path(tmp_path):
    """`bench merge` built file names from the source rows' run ids: '../x' wrote outside every results folder."""
    from bench_harness.results.aggregate import merge_results

    src = tmp_path / "src"
    runs = paths.runs_dir(src, SUITE)
    runs.mkdir(parents=True)
    evil = [dict(_row(1), run_id="../../../escaped"), _row(2)]
    pq.write_table(pa.Table.from_pylist(evil), runs / "part-00000001-00000001.parquet")
    with pytest.warns(UserWarning, match="invalid run id"):
        stats = merge_results([src], tmp_path / "into")
    assert stats["copied"] == 1 and stats["refused"] == 1
    assert not list(tmp_path.rglob("escaped*"))


def test_another_suites_part_is_not_read_as_this_suites_rows(tmp_path):
    _fill(tmp_path, 3)
    other = [dict(_row(i), suite="other") for i in range(10, 13)]
    pq.write_table(pa.Table.from_pylist(other), paths.runs_dir(tmp_path, SUITE) / "part-00000005-00000005.parquet")
    with pytest.warns(UserWarning, match="suite 'other'"):
        assert len(_rows(tmp_path)) == 3
    with pytest.warns(UserWarning):
        compact(tmp_path, SUITE)
    assert len(_glob_rows(tmp_path)) == 3


def test_a_legacy_index_never_overrides_newer_rows(tmp_path):
    """A legacy index.parquet appearing in a current store: its stale rows must not win over newer files."""
    _fill(tmp_path, 3)
    compact(tmp_path, SUITE)
    stale = [dict(_row(i), status="failed", top1=None) for i in range(3)] + [_row(3)]
    pq.write_table(pa.Table.from_pylist(stale), paths.legacy_index(tmp_path, SUITE))
    df = _rows(tmp_path)
    assert len(df) == 4 and (df["status"] == "ok").all()
    compact(tmp_path, SUITE)
    glob = _glob_rows(tmp_path)
    assert len(glob) == 4 and (glob["status"] == "ok").all()


@pytest.mark.parametrize("craft", ["repeated row", "another run's row", "repeated part"])
def test_a_crafted_cache_is_not_trusted(tmp_path, craft):
    """An index part with a row repeated or another run's row under a file's signature is discarded; a part
    repeated (two readers appending the same rows) counts each run once."""
    from bench_harness.results import index_parts
    from bench_harness.results.shard_index import update_index

    _fill(tmp_path, 3)
    update_index(tmp_path, SUITE)
    folder = paths.index_dir(tmp_path, SUITE)
    [part] = index_parts.list_parts(folder)
    table = pa.ipc.open_file(pa.OSFile(str(folder / part))).read_all()
    if craft == "repeated row":
        crafted = pa.concat_tables([table, table.slice(0, 1)])
    elif craft == "another run's row":
        crafted = table.set_column(table.column_names.index("run_id"), "run_id",
                                   pa.array(list(reversed(table.column("run_id").to_pylist()))))
    else:
        crafted = table
    target = folder / (part if craft != "repeated part" else part.replace("ix-0", "ix-1"))
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, crafted.schema) as writer:
        writer.write_table(crafted)
    df = _rows(tmp_path)
    assert len(df) == 3 and df.index.is_unique
    assert sorted(df["top1"]) == sorted(_row(i)["top1"] for i in range(3))


@pytest.mark.parametrize("planted", ["index.arrow", "index part", "compaction.json", "runs/run", "legacy"])
def test_a_fifo_planted_in_the_results_folder_never_hangs_a_reader(tmp_path, planted):
    _fill(tmp_path, 2)
    target = {"index.arrow": paths.index_cache(tmp_path, SUITE),
              "index part": paths.index_dir(tmp_path, SUITE) / f"ix-{9:020d}-{0:08x}.arrow",
              "compaction.json": paths.compaction_journal(tmp_path, SUITE),
              "runs/run": paths.shard_path(tmp_path, SUITE, f"{7:040x}"),
              "legacy": paths.legacy_index(tmp_path, SUITE)}[planted]
    target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(f"""
        from bench_harness.results.store import load_results, shard_status
        print(len(load_results({str(tmp_path)!r}, ["s"])), shard_status({str(tmp_path)!r}, "s", "{7:040x}"))
    """)], capture_output=True, text=True, timeout=600)  # a hang is the failure; minutes of margin
    assert proc.returncode == 0 and proc.stdout.split() == ["2", "None"], proc.stderr


def test_a_lock_path_that_is_not_a_file_is_an_error_not_a_silent_unlocked_read(tmp_path):
    from bench_harness.errors import BenchError

    _fill(tmp_path, 2)
    lock = paths.store_lock(tmp_path, SUITE)
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(BenchError, match="not a regular file"):
        _rows(tmp_path)


def test_bench_run_folds_a_compacted_run_redone_by_an_earlier_killed_command(tmp_path):
    """A `bench run --force` killed after redoing compacted runs left a part row and a run file for one run; the
    next `bench run` (nothing to run) must leave one row per run in the folder."""
    suite = tmp_path / "v.yaml"
    suite.write_text(CLAIM_SUITE.format(root=tmp_path / "results").replace("seeds: [0]", "seeds: [0, 1]")
                     .replace("name: c", "name: v"))
    assert _bench("run", suite, "--no-progress").returncode == 0
    assert _bench("aggregate", "v", "--results-root", tmp_path / "results", "--compact").returncode == 0
    runs = tmp_path / "results" / "v" / "runs"
    row = pd.read_parquet(runs).iloc[0].to_dict()
    write_shard(dict(row, finished_at=pd.Timestamp.now(tz="UTC").to_pydatetime()), tmp_path / "results", "v")
    assert len(pd.read_parquet(runs)) == 3  # the killed command's state: one run twice
    out = _bench("run", suite, "--no-progress")
    assert out.returncode == 0, out.stderr
    glob = pd.read_parquet(runs)
    assert len(glob) == 2 and glob["run_id"].is_unique


# ---- second hostile pass ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", [".compacting", "damaged", "runs"])
def test_a_store_folder_that_is_a_link_never_moves_files_outside(tmp_path, where):
    from bench_harness.errors import BenchError

    root = tmp_path / "results"
    _fill(root, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mydata.parquet").write_bytes(b"someone else's file")
    target = paths.suite_dir(root, SUITE) / where
    if where == "runs":
        os.replace(target, outside / "runs-moved")
        os.symlink(outside, target)
    else:
        os.symlink(outside, target)
    bad = paths.shard_path(root, SUITE, f"{1:040x}") if where != "runs" else None
    if bad is not None:
        bad.write_bytes(b"garbage")  # a damaged file compaction would move to damaged/
    with pytest.raises(BenchError, match="not a folder"):
        _rows(root) if where == "runs" else compact(root, SUITE)
    assert (sorted(p.name for p in outside.iterdir())
            == sorted(["mydata.parquet"] + (["runs-moved"] if where == "runs" else [])))
    assert (outside / "mydata.parquet").read_bytes() == b"someone else's file"


def test_a_planted_file_with_the_harness_own_columns_or_bad_types_is_only_damaged(tmp_path):
    """A run file with a `_shard` column made every reader fail; one with `top1: "abc"` blocked compaction."""
    _fill(tmp_path, 3)
    own = dict(_row(1), _shard="x")
    pq.write_table(pa.Table.from_pylist([own]), paths.shard_path(tmp_path, SUITE, f"{1:040x}"))
    typed = dict(_row(2), top1="abc")
    pq.write_table(pa.Table.from_pylist([typed]), paths.shard_path(tmp_path, SUITE, f"{2:040x}"))
    with pytest.warns(UserWarning):
        assert len(_rows(tmp_path)) == 1
    with pytest.warns(UserWarning):
        assert compact(tmp_path, SUITE)["quarantined"] == 2
    assert len(_glob_rows(tmp_path)) == 1


def test_a_forked_child_does_not_keep_its_parents_claim(tmp_path):
    """Open-file-description locks are shared with a forked child: a pruner's stray child outliving its worker
    kept the run's claim, so the run's failure row was never written."""
    from bench_harness.locks import Claim

    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from bench_harness.locks import Claim
        c = Claim(Path({str(tmp_path / 'lock')!r})); assert c.acquired
        child = os.fork()
        if child == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1); os.dup2(devnull, 2)
            time.sleep(600); os._exit(0)
        print(child, flush=True)
        os._exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    child = int(proc.stdout.strip())
    try:
        claim = Claim(tmp_path / "lock")
        assert claim.acquired  # the parent is gone; its stray child does not hold the claim
        claim.release()
    finally:
        os.kill(child, 9)
