"""One function per artifact path: nobody builds a result path by hand twice."""
from __future__ import annotations

import os
from pathlib import Path


def absolute_path(path: str | Path, base_dir: str | Path | None = None) -> str:
    """``path`` made absolute against ``base_dir`` (default: the current directory), ``~`` expanded, ``..``
    folded, symbolic links kept (a cluster's /home link stays the path people know). Resolved once, where a
    path enters the harness (a suite file, a command line), so a later ``os.chdir`` cannot move it."""
    path = os.path.expanduser(str(path))
    return os.path.normpath(os.path.join(os.fspath(base_dir) if base_dir is not None else os.getcwd(), path))


def suite_dir(results_root: str | Path, suite: str) -> Path:
    return Path(results_root) / suite


def shard_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    return suite_dir(results_root, suite) / "runs" / f"{run_id}.parquet"


def run_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    """Per-run working files (checkpoints, logs)."""
    return suite_dir(results_root, suite) / "work" / run_id


def artifacts_dir(results_root: str | Path) -> Path:
    """Stage artifacts shared by every suite of a results root (see bench_harness.contract.artifacts)."""
    return Path(results_root) / "artifacts"


def run_artifacts_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    """A run's own files, written by its pruner (``ctx.run_dir``); kept after the run."""
    return run_dir(results_root, suite, run_id) / "files"
