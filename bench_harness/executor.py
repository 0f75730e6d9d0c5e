"""The local executor: runs a suite's unfinished runs in-process (default) or in worker processes, one per
device, with a progress bar over runs and per-epoch progress within a run.

Every finished run is on disk the moment it ends (atomic shard), so Ctrl-C loses nothing finished; a run that
fails becomes a failure row and the sweep goes on.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import sys
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from bench_harness import results
from bench_harness.suite import RunSpec, Suite


@dataclass
class SweepReport:
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False


def pending_runs(suite: Suite, force: bool = False) -> tuple[list[RunSpec], list[RunSpec]]:
    """(to run, already finished). Failed runs are retried; --force reruns everything."""
    todo, done = [], []
    for run in suite.runs:
        if not force and results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
            done.append(run)
        else:
            todo.append(run)
    return todo, done


def _worker(run: RunSpec) -> tuple[str, str, str | None]:
    from bench_harness.runner import execute_run

    torch.set_num_threads(max(1, torch.get_num_threads()))
    row = execute_run(run)
    return run.run_id, row["status"], row.get("error")


def run_local(suite: Suite, force: bool = False, workers: int = 1, progress: bool = True) -> SweepReport:
    todo, done = pending_runs(suite, force)
    report = SweepReport(skipped=[r.run_id for r in done])
    if not todo:
        return report
    bar = tqdm(total=len(todo), desc=f"{suite.name}", unit="run", disable=not progress, file=sys.stderr)

    def record(run_id: str, status: str, error: str | None) -> None:
        if status == "ok":
            report.ok.append(run_id)
        else:
            report.failed.append((run_id, error or ""))
            tqdm.write(f"run {run_id} failed: {error}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(ok=len(report.ok), failed=len(report.failed))

    try:
        if workers <= 1:
            from bench_harness.runner import execute_run

            for run in todo:
                bar.set_description(f"{suite.name} {run.pruner.name} s={run.sparsity:g}")
                state = {"phase": None, "bar": None}

                def on_epoch(phase, epoch, total, loss, state=state):
                    if state["phase"] != phase:
                        if state["bar"] is not None:
                            state["bar"].close()
                        state["phase"] = phase
                        state["bar"] = tqdm(total=total, desc=phase, unit="epoch", leave=False,
                                            disable=not progress, file=sys.stderr)
                    state["bar"].update(1)
                    state["bar"].set_postfix(loss=f"{loss:.4f}")

                row = execute_run(run, on_epoch=on_epoch)
                if state["bar"] is not None:
                    state["bar"].close()
                record(run.run_id, row["status"], row.get("error"))
        else:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or [None]
            jobs = []
            for i, run in enumerate(todo):
                device = devices[i % len(devices)]
                jobs.append(replace(run, device=device) if device and run.device in ("auto", "cuda") else run)
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_worker, run): run for run in jobs}
                for future in cf.as_completed(futures):
                    run = futures[future]
                    try:
                        record(*future.result())
                    except Exception as exc:  # the worker process itself died
                        record(run.run_id, "failed", f"worker crashed: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
    return report
