"""``bench logs RUN_ID``: print the SLURM log of a run (found through the run ledger)."""
from __future__ import annotations

import sys
from pathlib import Path

from bench_harness.errors import BenchError
from bench_harness.slurm import ledger


def find_entries(run_id: str, results_root: str | Path, suite: str | None = None) -> list[tuple[str, ledger.Entry]]:
    """Ledger entries whose run id starts with ``run_id``: (suite name, entry)."""
    root = Path(results_root)
    suites = [suite] if suite else sorted(p.parent.name for p in root.glob("*/ledger") if p.is_dir())
    found = []
    for name in suites:
        for rid, entry in ledger.read_all(root, name).items():
            if rid.startswith(run_id):
                found.append((name, entry))
    return found


def print_logs(run_id: str, results_root: str | Path = "results", suite: str | None = None,
               lines: int | None = None, stream=None) -> int:
    stream = stream or sys.stdout
    found = find_entries(run_id, results_root, suite)
    if not found:
        where = f"suite {suite!r} under {results_root}" if suite else f"{results_root}"
        raise BenchError(f"no SLURM run {run_id!r} in {where}: `bench logs` needs a run submitted with "
                         f"--executor slurm (pass the suite file with --suite, or --results-root)")
    if len({e.run_id for _, e in found}) > 1:
        ids = ", ".join(sorted(e.run_id for _, e in found)[:10])
        raise BenchError(f"{run_id!r} matches several runs: {ids}; give more of the run id")
    name, entry = found[0]
    print(f"run {entry.run_id} of suite {name}: job {entry.job_id or '(not submitted)'}, state {entry.state}, "
          f"attempts {entry.attempts}" + (f", reason {entry.reason}" if entry.reason else ""), file=stream)
    if not entry.job_id:
        print("no log: the run was not submitted (a submit limit); `bench resubmit SUITE --missing` submits it",
              file=stream)
        return 0
    shown = 0
    for label, path in (("stdout", entry.stdout), ("stderr", entry.stderr)):
        p = Path(path) if path else None
        if p is None or not p.exists():
            print(f"--- {label}: {path or '-'} (not written yet: the job has not started)", file=stream)
            continue
        text = p.read_text(errors="replace")
        body = text.splitlines()
        if lines:
            body = body[-lines:]
        print(f"--- {label}: {p}", file=stream)
        if body:
            print("\n".join(body), file=stream)
        shown += 1
    return 0


def cmd_logs(args) -> int:
    """The `bench logs` command (registered in bench_harness.cli)."""
    suite_name, root = None, args.results_root or "results"
    if args.suite:
        from bench_harness.config.suite import load_suite

        if Path(args.suite).is_file():
            suite = load_suite(args.suite)
            suite_name = suite.name
            if not args.results_root:
                root = suite.results_root
        else:
            suite_name = args.suite
    return print_logs(args.run_id, root, suite_name, args.lines)
