"""Aggregation of run shards into leaderboards, and merging result folders from several machines."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench_harness import paths
from bench_harness.atomic import atomic_write
from bench_harness.results.leaderboard import build_leaderboard, prepare_runs
from bench_harness.results.shard_index import update_index
from bench_harness.results.store import write_shard


def suite_runs(results_root: str | Path, suite: str, rebuild: bool = False) -> pd.DataFrame:
    table, _ = update_index(results_root, suite, rebuild=rebuild)
    return table.to_pandas() if table is not None else pd.DataFrame()


def leaderboard_path(results_root: str | Path, suite: str | None) -> Path:
    return (paths.suite_dir(results_root, suite) if suite else Path(results_root)) / "leaderboard.parquet"


@dataclass
class Aggregated:
    boards: dict[str, pd.DataFrame]
    runs: dict[str, pd.DataFrame]
    cross: pd.DataFrame | None


def aggregate(results_root: str | Path, suites: list[str], rebuild: bool = False, write: bool = True) -> Aggregated:
    boards, runs = {}, {}
    for suite in suites:
        df = suite_runs(results_root, suite, rebuild)
        runs[suite] = prepare_runs(df) if len(df) else df
        boards[suite] = build_leaderboard(df, [suite]) if len(df) else pd.DataFrame()
        if write and len(boards[suite]):
            _save(boards[suite], leaderboard_path(results_root, suite))
    cross = None
    if len(suites) > 1:
        frames = [df for df in runs.values() if len(df)]
        if frames:
            cross = build_leaderboard(pd.concat(frames, ignore_index=True), suites)
            if write:
                _save(cross, leaderboard_path(results_root, None))
    return Aggregated(boards, runs, cross)


def _save(board: pd.DataFrame, path: Path) -> None:
    """Write a leaderboard atomically; on a read-only results folder, warn and go on (the caller has it)."""
    try:
        atomic_write(path, lambda tmp: board.to_parquet(tmp, index=False))
    except OSError as exc:
        warnings.warn(f"leaderboard not saved to {path} ({type(exc).__name__}: {exc.strerror or exc}); the results "
                      f"folder is not writable", stacklevel=3)


def _rows_by_run(root: Path, suite: str) -> dict[str, dict]:
    """run id -> row (run files and compacted rows alike)."""
    table, _ = update_index(root, suite)
    if table is None:
        return {}
    table = table.drop_columns([c for c in table.column_names if c.startswith("_")])
    return {row["run_id"]: row for row in table.to_pylist()}


def merge_results(sources: list[str | Path], into: str | Path) -> dict[str, int]:
    """Combine results roots into one: one row per run id (written as a run shard), the newest finished wins.
    Compacted rows count like run files. A row whose run id is not a valid file name (a crafted folder) or whose
    suite is another suite's is refused with a warning; each merged suite is compacted at the end, so its folder
    holds one row per run."""
    from bench_harness.results.compaction import maybe_compact

    into = Path(into)
    stats = {"copied": 0, "kept": 0, "replaced": 0, "refused": 0}
    touched: set[str] = set()
    for src in map(Path, sources):
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: no such results folder")
        suites = sorted({p.parent.name for p in src.glob("*/runs")}
                        | {p.parent.name for p in src.glob("*/index.parquet")})
        for suite in suites:
            existing = _rows_by_run(into, suite) if (into / suite).is_dir() else {}
            for run_id, row in sorted(_rows_by_run(src, suite).items(), key=lambda kv: str(kv[0])):
                try:
                    paths.check_run_id(run_id)
                    if row.get("suite") not in (None, suite):
                        raise ValueError(f"a row of suite {row.get('suite')!r} in the folder of {suite!r}")
                except ValueError as exc:
                    stats["refused"] += 1
                    warnings.warn(f"{src / suite}: row refused ({exc})", stacklevel=2)
                    continue
                old = existing.get(run_id)
                if old is not None:
                    new_t, old_t = row.get("finished_at"), old.get("finished_at")
                    if old_t is not None and (new_t is None or new_t <= old_t):
                        stats["kept"] += 1
                        continue
                    stats["replaced"] += 1
                else:
                    stats["copied"] += 1
                write_shard(row, into, suite)
                touched.add(suite)
    for suite in sorted(touched):
        maybe_compact(into, suite)
    return stats
