"""Hostile tests (issue 28): the shard index stored as parts (bench_harness/results/index_parts.py) and the plugin
registry cache (bench_harness/contract/registry.py). The first tests each reproduced a finding of that review (strict
xfails until fixed); the others pin what held."""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pandas as pd
import pyarrow as pa
import pytest

from bench_harness import paths
from bench_harness.results import index_parts
from bench_harness.results.compaction import compact
from bench_harness.results.shard_index import update_index
from tests.test_store_integrity import SUITE, _fill


def _folder(root):
    return paths.index_dir(root, SUITE)


def _only_part(root) -> pa.Table:
    [name] = index_parts.list_parts(_folder(root))
    return index_parts.read_part(_folder(root) / name)


def _ids(table) -> list:
    return sorted(table.column("run_id").to_pylist(), key=str) if table is not None else []


def _truth(root) -> list[str]:
    """What a plain pandas read of the runs folder sees (run files and compacted parts)."""
    return sorted(pd.read_parquet(paths.runs_dir(root, SUITE))["run_id"])


def _mistyped_part(root) -> None:
    """A part whose signature column is a string: the columns are all there, the types are not."""
    _fill(root, 5)
    update_index(root, SUITE)
    good = _only_part(root)
    i = good.column_names.index("_mtime_ns")
    index_parts.write_part(_folder(root), good.set_column(i, "_mtime_ns", pa.array(["x"] * good.num_rows)))


def test_a_mistyped_part_is_ignored_by_readers(tmp_path):
    _mistyped_part(tmp_path)
    table, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path)


def test_a_mistyped_part_does_not_fail_compaction(tmp_path):
    _mistyped_part(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact(tmp_path, SUITE)
    assert len(_truth(tmp_path)) == 5


def test_a_part_row_with_a_null_run_id_is_rejected(tmp_path):
    _fill(tmp_path, 3)
    update_index(tmp_path, SUITE)
    good = _only_part(tmp_path)
    for name in index_parts.list_parts(_folder(tmp_path)):
        os.unlink(_folder(tmp_path) / name)
    ids = good.column("run_id").to_pylist()
    forged = good.set_column(good.column_names.index("run_id"), "run_id", pa.array([None] + ids[1:], pa.string()))
    index_parts.write_part(_folder(tmp_path), forged)
    table, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path)


def test_an_unremovable_part_does_not_make_the_index_grow_without_bound(tmp_path):
    _fill(tmp_path, 5)
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "ix-00000000000000000000-00000000.arrow").mkdir()
    for i in range(30):
        _fill(tmp_path, 1, start=100 + i)
        table, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path)  # holds
    assert len(index_parts.list_parts(folder)) <= index_parts.MAX_PARTS + 2  # 46 parts, merged copies each


KILLER = """
    import os, signal, sys, warnings
    warnings.simplefilter("ignore")
    from bench_harness.results import index_parts
    from bench_harness import atomic
    index_parts.SETTLE_S = 0.0  # the files were just written: cached at once, as in the tests' own process
    where = sys.argv[1]
    if where == "before-remove":   # a merge wrote its part, removed none of the old ones
        index_parts.remove = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    if where == "before-rename":   # a part's temporary file written, not renamed
        atomic.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    from bench_harness.results.shard_index import update_index
    from bench_harness.results.compaction import compact
    if sys.argv[2] == "compact":
        compact(sys.argv[3], "s")
    else:
        update_index(sys.argv[3], "s")
"""


def _killed(where: str, what: str, root) -> int:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), where, what, str(root)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.mark.parametrize("where,what", [("before-remove", "compact"), ("before-rename", "update"),
                                        ("before-rename", "compact")])
def test_a_kill_in_the_middle_of_an_index_write_loses_and_doubles_nothing(tmp_path, where, what):
    assert SUITE == "s"
    _fill(tmp_path, 20)
    for i in range(3):  # a few parts to merge
        update_index(tmp_path, SUITE)
        _fill(tmp_path, 2, start=50 + 2 * i)
    assert _killed(where, what, tmp_path) == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _ = update_index(tmp_path, SUITE)
        again, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _ids(again) == _truth(tmp_path) and len(_truth(tmp_path)) == 26


def test_temporary_files_of_a_killed_index_writer_are_cleaned_up(tmp_path):
    _fill(tmp_path, 20)
    update_index(tmp_path, SUITE)
    _fill(tmp_path, 2, start=50)
    assert _killed("before-rename", "update", tmp_path) == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fill(tmp_path, 2, start=60)
        update_index(tmp_path, SUITE)
        compact(tmp_path, SUITE)
    assert [n for n in os.listdir(_folder(tmp_path)) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("plant", ["truncated", "fifo", "dev-zero-link", "other-suite", "empty", "not-arrow"])
def test_a_planted_or_damaged_part_is_ignored(tmp_path, plant):
    _fill(tmp_path, 6)
    update_index(tmp_path, SUITE)
    folder = _folder(tmp_path)
    [name] = index_parts.list_parts(folder)
    bogus = folder / "ix-99999999999999999999-deadbeef.arrow"
    if plant == "truncated":
        bogus.write_bytes((folder / name).read_bytes()[:200])
    elif plant == "fifo":
        os.mkfifo(bogus)
    elif plant == "dev-zero-link":
        os.symlink("/dev/zero", bogus)
    elif plant == "other-suite":  # a part of another suite's index, copied in
        other = tmp_path / "other"
        _fill(other, 6, start=1000)
        update_index(other, SUITE)
        [o] = index_parts.list_parts(_folder(other))
        bogus.write_bytes((_folder(other) / o).read_bytes())
    elif plant == "empty":
        bogus.write_bytes(b"")
    else:
        bogus.write_bytes(b"PAR1" * 1000)
    _fill(tmp_path, 2, start=10)
    table, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path) and len(_truth(tmp_path)) == 8


def test_the_legacy_single_file_index_next_to_the_parts_counts_once(tmp_path):
    _fill(tmp_path, 6)
    update_index(tmp_path, SUITE)
    [name] = index_parts.list_parts(_folder(tmp_path))
    legacy = paths.index_cache(tmp_path, SUITE)
    legacy.write_bytes((_folder(tmp_path) / name).read_bytes())  # an old index.arrow planted next to the folder
    table, _ = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path) and not legacy.exists()


def test_an_index_folder_that_is_a_file_is_only_a_cache_miss(tmp_path):
    _fill(tmp_path, 4)
    _folder(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    _folder(tmp_path).write_bytes(b"not a folder")
    table, stats = update_index(tmp_path, SUITE)
    assert _ids(table) == _truth(tmp_path) and "index_not_saved" in stats


# ---- the registry cache ------------------------------------------------------------------------------------------
HELPED = '''
from dataclasses import dataclass
from typing_extensions import Annotated
from pydantic import Field
from bench_harness import hookimpl, ScorePruner, param
from h28_consts import DEPTH, MAX


@dataclass
class Params:
    depth: int = param(DEPTH, "depth")
    width: Annotated[int, Field(le=MAX)] = param(1, "width")


class H28(ScorePruner):
    name = "h28"
    version = "1.0"
    Params = Params

    def score(self, model, ctx):
        return {}


@hookimpl
def bench_register_pruners():
    return [H28]
'''


def test_the_cache_follows_a_module_the_plugin_imports_its_declaration_from(tmp_path, monkeypatch):
    from bench_harness.contract import registry as lazy

    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "cache" / "registry.json"))
    site = tmp_path / "site"
    info = site / "h28_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: h28-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bench_harness]\nh28_plugin = h28_plugin\n")
    (site / "h28_consts.py").write_text("DEPTH = 3\nMAX = 10\n")
    (site / "h28_plugin.py").write_text(HELPED)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        lazy.light_registry()
        assert isinstance(lazy.light_registry(), lazy.LightRegistry)
        (site / "h28_consts.py").write_text("DEPTH = 5\nMAX = 2\n")
        for module in ("h28_plugin", "h28_consts"):  # the next command is a new process
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        reg = lazy.light_registry()
        pruner = reg.get("pruner", "h28")
        assert pruner.make_params({}).depth == 5
        with pytest.raises(ValueError, match="width"):
            pruner.make_params({"width": 8})
    finally:
        for module in ("h28_plugin", "h28_consts"):
            sys.modules.pop(module, None)


@pytest.mark.parametrize("where", ["directory", "fifo", "dev-zero-link", "group-writable"])
def test_a_cache_path_that_is_not_a_private_file_is_not_used(tmp_path, monkeypatch, where):
    from bench_harness.contract import registry as lazy
    from bench_harness.contract.plugins import Registry

    path = tmp_path / "registry.json"
    monkeypatch.setenv(lazy.CACHE_ENV, str(path))
    if where == "group-writable":
        lazy.light_registry()
        os.chmod(path, 0o664)
    elif where == "directory":
        path.mkdir()
    elif where == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = lazy.light_registry(notes.append)
    assert isinstance(reg, Registry) and notes and "magnitude" in reg.names("pruner")
