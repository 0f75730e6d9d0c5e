"""One function per artifact path: nobody builds a result path by hand twice."""
from __future__ import annotations

import os
import re
from pathlib import Path


def absolute_path(path: str | Path, base_dir: str | Path | None = None) -> str:
    """``path`` made absolute against ``base_dir`` (default: the current directory), ``~`` expanded, ``..``
    folded, symbolic links kept (a cluster's /home link stays the path people know). Resolved once, where a
    path enters the harness (a suite file, a command line), so a later ``os.chdir`` cannot move it."""
    path = os.path.expanduser(str(path))
    return os.path.normpath(os.path.join(os.fspath(base_dir) if base_dir is not None else os.getcwd(), path))


def suite_dir(results_root: str | Path, suite: str) -> Path:
    return Path(results_root) / suite


_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_run_id(run_id: str) -> str:
    """A run id is used as a file name: letters, digits, '_' and '-' only (the harness's ids are hex hashes). A row
    read from a folder someone else wrote (``bench merge``) may carry anything: refused here, before any path is
    built from it."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: a run id is 1-128 letters, digits, '_' or '-'")
    return run_id


def shard_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    check_run_id(run_id)
    return runs_dir(results_root, suite) / f"{run_id}.parquet"


def run_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    """Per-run working files (checkpoints, logs)."""
    check_run_id(run_id)
    return suite_dir(results_root, suite) / "work" / run_id


def artifacts_dir(results_root: str | Path) -> Path:
    """Stage artifacts shared by every suite of a results root (see bench_harness.contract.artifacts)."""
    return Path(results_root) / "artifacts"


def run_artifacts_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    """A run's own files, written by its pruner (``ctx.run_dir``); kept after the run."""
    return run_dir(results_root, suite, run_id) / "files"


def runs_dir(results_root: str | Path, suite: str) -> Path:
    """The suite's rows as a Parquet dataset: run files and compacted parts, nothing else (see results.shard_index)."""
    return suite_dir(results_root, suite) / "runs"


def store_lock(results_root: str | Path, suite: str) -> Path:
    """The results store's lock: shared by readers, exclusive while the dataset's files are swapped."""
    return suite_dir(results_root, suite) / "store.lock"


def index_cache(results_root: str | Path, suite: str) -> Path:
    """The single-file cache of the run files' rows of earlier versions (read once, then a part of
    :func:`index_dir`)."""
    return suite_dir(results_root, suite) / "index.arrow"


def index_dir(results_root: str | Path, suite: str) -> Path:
    """The shard index: a cache of the run files' rows in parts (Arrow IPC, not Parquet: a glob over
    ``*.parquet`` never counts them; derived, safe to delete)."""
    return suite_dir(results_root, suite) / "index"


def compaction_journal(results_root: str | Path, suite: str) -> Path:
    """What an unfinished compaction was doing (present only while one runs or after one was killed)."""
    return suite_dir(results_root, suite) / "compaction.json"


def compaction_aside(results_root: str | Path, suite: str) -> Path:
    """Where compaction moves a run file before checking that it is the very file it folded into a part."""
    return suite_dir(results_root, suite) / ".compacting"


def legacy_index(results_root: str | Path, suite: str) -> Path:
    """The index of schema-2 stores before the dataset layout (it held compacted rows); migrated on first use."""
    return suite_dir(results_root, suite) / "index.parquet"


def quarantine_dir(results_root: str | Path, suite: str) -> Path:
    """Damaged files compaction moved out of ``runs/`` (kept for inspection; their runs are run again)."""
    return suite_dir(results_root, suite) / "damaged"
