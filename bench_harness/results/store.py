"""The run files: writing, reading and checking one run's row, and the suite's finished runs.

One row per run, in the suite's dataset folder ``results/<suite>/runs/`` (see
:mod:`bench_harness.results.dataset`): the run writes ``runs/<run_id>.parquet`` atomically (temporary file in
the same folder, then ``os.replace``). A failed run is a row too (status ``failed``, with error and traceback); a
later successful attempt replaces it. From 1,000 run files (or with ``bench aggregate --compact``), compaction
folds the run files into ``runs/part-*.parquet`` files (:mod:`bench_harness.results.compaction`): the folder
holds exactly the suite's rows before and after, so ``pd.read_parquet("results/<suite>/runs")`` reads them all.

The columns and their meaning: :mod:`bench_harness.results.schema`.
"""
from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench_harness import paths
from bench_harness.atomic import atomic_write
from bench_harness.results.schema import COLUMNS, SCHEMA, SCHEMA_VERSION


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _clean(value: Any, kind: pa.DataType) -> Any:
    """NaN (pandas' missing value) becomes null in non-float columns."""
    if isinstance(value, float) and value != value and not pa.types.is_floating(kind):
        return None
    return value


# A run file holds one row: column statistics, dictionary pages and compression only cost a reader time (a reader
# parses one file per run; about a fifth less per file without them, docs/measurements.md) and the file is smaller.
ONE_ROW_FILE = {"write_statistics": False, "use_dictionary": False, "compression": "none"}


def write_shard(row: dict[str, Any], results_root: str | Path, suite: str) -> Path:
    """Write one run's row atomically; extra keys (e.g. metric_* columns) are kept."""
    path = paths.shard_path(results_root, suite, row["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {name: _clean(row.get(name), kind) for name, kind, _ in COLUMNS}
    full["schema_version"] = SCHEMA_VERSION
    fields = list(SCHEMA)
    for key, value in row.items():
        if key not in full:
            full[key] = value
            fields.append(pa.field(key, pa.float64() if isinstance(value, (int, float)) else pa.string()))
    schema = pa.schema(fields, metadata=SCHEMA.metadata)
    table = pa.Table.from_pylist([full], schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **ONE_ROW_FILE))



def read_shard(path: str | Path) -> dict[str, Any]:
    return pq.read_table(path).to_pylist()[0]


def shard_status(results_root: str | Path, suite: str, run_id: str) -> str | None:
    """'ok', 'failed' or None (no row: never run, or its shard is damaged): the run's file, else the row
    compacted into a part."""
    from bench_harness.results.shard_index import run_status

    return run_status(results_root, suite, run_id)


def finished_run_ids(results_root: str | Path, suite: str) -> set[str]:
    """Run ids of the suite whose row says ``ok`` (damaged files are not finished)."""
    import warnings

    from bench_harness.results.shard_index import update_index

    if not paths.runs_dir(results_root, suite).is_dir():
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged shards: reported by the readers and `bench verify`
        table, _ = update_index(results_root, suite, part_columns=())  # parts: run_id and status only
    if table is None:
        return set()
    ids = table.column("run_id").to_pylist()
    status = table.column("status").to_pylist()
    return {i for i, s in zip(ids, status) if s == "ok"}


def shard_health(path: str | Path, run_id: str | None = None, suite: str | None = None) -> str:
    """'ok' | 'failed' | 'missing' | 'damaged: <why>' for one run's shard; damaged by the readers' own checks
    (:func:`bench_harness.results.dataset._file_problem`: columns the harness never writes, a column of the wrong
    type, another suite's row), so that `bench verify` never counts a file the readers leave out."""
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        table = pq.read_table(path)
    except Exception as exc:
        return f"damaged: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if table.num_rows != 1 or "run_id" not in table.column_names or "status" not in table.column_names:
        return f"damaged: {table.num_rows} rows, columns {table.column_names[:4]}"
    row = table.to_pylist()[0]
    if run_id is not None and row["run_id"] != run_id:
        return f"damaged: holds run {row['run_id']!r}, not {run_id!r}"
    from bench_harness.results.dataset import _file_problem

    problem = _file_problem(table, str(path), suite)
    if problem is not None:
        return f"damaged: {problem}"
    return "ok" if row["status"] == "ok" else "failed"


@dataclass
class StoreReport:
    """What ``bench verify`` found: counts by state, damaged files (path, problem), rows of runs not asked for."""
    counts: Counter = field(default_factory=Counter)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    extra: int = 0


def verify_store(results_root: str | Path, suite: str, run_ids: list[str]) -> StoreReport:
    """Check the row of every run in ``run_ids`` (its run file, else its row in a compacted part) and every part."""
    from bench_harness.results import dataset
    from bench_harness.results.compaction import reading

    report = StoreReport()
    runs = paths.runs_dir(results_root, suite)
    with reading(results_root, suite) if runs.is_dir() else _nothing():
        listing = dataset.list_store(runs)
        compacted: dict[str, str] = {}
        for name in sorted(listing.parts, key=dataset.part_sequence):  # newer parts overwrite older rows
            try:
                table = dataset.read_part(runs / name, listing.parts[name], suite)
            except Exception as exc:
                report.damaged.append((str(runs / name), f"{type(exc).__name__}: {exc}".splitlines()[0]))
                continue
            compacted.update(zip(table.column("run_id").to_pylist(), table.column("status").to_pylist()))
        wanted = set(run_ids)
        for run_id in run_ids:
            name = f"{run_id}.parquet"
            if name in listing.runs:
                health = shard_health(runs / name, run_id, suite)
                if health.startswith("damaged"):
                    report.damaged.append((str(runs / name), health[len("damaged: "):]))
                    health = "damaged"
            elif run_id in compacted:
                health = f"{compacted[run_id]} (compacted)"
            else:
                health = "missing"
            report.counts[health] += 1
        others = {n[:-len(".parquet")] for n in listing.runs} | set(compacted)
        report.extra = len(others - wanted)
    return report


@contextmanager
def _nothing():
    yield


def save_suite_file(suite) -> Path | None:
    """Keep the suite file next to its results (``<results>/<suite>/suite.yaml``), written atomically by every
    executor before its first run starts or its first job is submitted: the published site shows its
    description and recipe, and a reader of the folder sees what produced it. A different suite file saved
    there before (an edited suite, or another file of the same name) is not lost: it is kept as
    ``suite-<sha256[:12]>.yaml`` beside it (the rows themselves each record their full configuration). None when
    the suite has no file (a suite built in Python)."""
    import hashlib

    try:
        text = Path(suite.path).read_text()
    except OSError:
        return None
    path = paths.suite_dir(suite.results_root, suite.name) / "suite.yaml"
    try:
        old = path.read_text()
    except (OSError, UnicodeDecodeError):
        old = None
    if old == text:
        return path
    if old is not None:
        earlier = path.with_name(f"suite-{hashlib.sha256(old.encode()).hexdigest()[:12]}.yaml")
        if not earlier.exists():
            atomic_write(earlier, lambda tmp: Path(tmp).write_text(old))
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def ensure_writable(folder: str | Path) -> None:
    """Raise a BenchError before any run starts when results cannot be written into ``folder`` (a suite's results
    folder) or its ``runs/`` dataset folder."""
    import tempfile

    from bench_harness.errors import BenchError

    for place in (Path(folder), Path(folder) / "runs"):
        try:
            place.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=place, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise BenchError(f"results cannot be written to {place} ({exc.strerror or exc}): make it writable, or "
                             f"choose another place with --results-root or `results_root:` in the suite") from None


def load_results(results_root: str | Path, suites: Iterable[str]) -> pd.DataFrame:
    """All runs of the given suites as one DataFrame (one row per run), through the incremental shard index."""
    from bench_harness.results.shard_index import update_index

    tables = [t for t in (update_index(results_root, suite)[0] for suite in suites) if t is not None]
    if not tables:
        return pd.DataFrame(columns=[n for n, _, _ in COLUMNS])
    table = pa.concat_tables(tables, promote_options="default")
    return table.drop_columns([c for c in table.column_names if c.startswith("_")]).to_pandas()
