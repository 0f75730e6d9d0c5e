"""The local executor: runs a suite's unfinished runs in-process (default) or in worker processes, one per
device, with a progress bar over runs and per-epoch progress within a run.

Every finished run is on disk the moment it ends (atomic shard), so Ctrl-C loses nothing finished; a run that
fails becomes a failure row and the sweep goes on. A run is claimed (a kernel lock on
``<results>/<suite>/work/<run_id>/lock``, released when its holder ends or dies) before it starts, so several
`bench run` of one suite — two shells, a login node and a SLURM job — share the work instead of repeating it.
With ``--workers N`` the machine's cores are divided between the workers (torch, OpenMP and MKL threads), so N
workers are never slower than one.

A run's ``timeout_min`` is enforced inside the process that runs it (SIGALRM, see runner.time_limit); in worker
mode (``--workers N``, ``--isolate``) the parent enforces it from outside as well: a worker still busy
:func:`timeout_grace` seconds after its run's timeout is killed and the run gets a failure row. Whatever mode,
a run reported "ok" or "failed" whose row is not in the store (plugin code broke the harness's writer) is
counted as failed, never as ok.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import sys
import time
from dataclasses import dataclass, field, replace
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench_harness import paths
from bench_harness.config.suite import RunSpec, Suite
from bench_harness.diskspace import ensure_free_space
from bench_harness.errors import DiskFullError
from bench_harness.processes import describe_exit, die_with_parent
from bench_harness.results import store as results


@dataclass
class SweepReport:
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # claimed by another runner at the time
    interrupted: bool = False


def execute_claimed(run: RunSpec, **kwargs) -> dict | None:
    """Run unless another runner holds the run's claim or has finished it meanwhile; None when skipped."""
    from bench_harness import paths
    from bench_harness.locks import Claim
    from bench_harness.running.runner import execute_run

    with Claim(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock") as claim:
        if not claim.acquired:
            return None
        if results.shard_status(run.results_root, run.suite, run.run_id) == "ok" and not kwargs.pop("force", False):
            return {"status": "ok", "skipped": True}
        kwargs.pop("force", None)
        return execute_run(run, **kwargs)


def pack_groups(runs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """Runs that may train together (same model, data set, recipe, device), in chunks of ``size``; the final
    check happens after pruning (bench_harness.running.packing.packable_key)."""
    from bench_harness.identity import config_hash

    groups: dict = {}
    for run in runs:
        key = (run.model.name, config_hash(run.model.params), run.dataset.name, config_hash(run.dataset.params),
               repr(run.recipe), run.device, run.results_root)
        groups.setdefault(key, []).append(run)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def execute_packed_claimed(group: list[RunSpec], force: bool = False) -> list[tuple[str, str, str | None]]:
    """Claim the runs of a group (skipping those another runner holds or finished), run them packed."""
    from bench_harness import paths
    from bench_harness.locks import Claim
    from bench_harness.running.runner import execute_packed

    claims, mine, out = [], [], []
    try:
        for run in group:
            claim = Claim(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock")
            if not claim.acquired:
                out.append((run.run_id, "busy", None))
                continue
            claims.append(claim)
            if not force and results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
                out.append((run.run_id, "skipped", None))
                continue
            mine.append(run)
        if mine:
            rows = execute_packed(mine)
            out += [(r["run_id"], r["status"], r.get("error")) for r in rows]
    finally:
        for claim in claims:
            claim.release()
    return out


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Cores divided between workers (at least one thread each)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    """A worker: dies with its parent (kill -9 included), and uses its share of the cores."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def pending_runs(suite: Suite, force: bool = False) -> tuple[list[RunSpec], list[RunSpec]]:
    """(to run, already finished). Failed runs are retried; --force reruns everything.

    The finished set comes from the suite's shard index (read only for new or changed shards), a set lookup per
    run: linear in the number of runs, without opening every shard."""
    if force:
        return list(suite.runs), []
    finished = results.finished_run_ids(suite.results_root, suite.name)
    todo, done = [], []
    for run in suite.runs:
        (done if run.run_id in finished else todo).append(run)
    return todo, done


def _worker(run: RunSpec, force: bool = False) -> tuple[str, str, str | None]:
    row = execute_claimed(run, force=force)
    if row is None:
        return run.run_id, "busy", None
    return run.run_id, "skipped" if row.get("skipped") else row["status"], row.get("error")


def _worker_loop(conn, threads: int, parent_pid: int) -> None:
    """A worker process: receives (run, force), answers (run id, status, error) until it receives None. A full disk
    is answered with status "disk-full" (the parent stops the sweep)."""
    _init_worker(threads, parent_pid)
    while True:
        data = conn.recv_bytes()
        try:
            job = ForkingPickler.loads(data)
        except Exception as exc:  # noqa: BLE001 - e.g. a Params class this process cannot import
            conn.send((None, UNREADABLE, f"{type(exc).__name__}: {exc}"))
            continue
        if job is None:
            return
        run, force = job
        try:
            answer = _worker(run, force)
        except DiskFullError as exc:
            answer = (run.run_id, "disk-full", str(exc))
        conn.send(answer)


UNREADABLE = "unreadable"  # a worker's answer to a job it could not unpickle


def unpicklable_error(exc: BaseException) -> str:
    return (f"this run cannot be sent to a worker process (--workers/--isolate): {type(exc).__name__}: {exc}. "
            f"Its pruner's parameters must pickle: no lambdas or local functions as values or defaults")


def unreadable_error(error: str) -> str:
    return (f"the worker process could not unpickle this run ({error}): its pruner's Params class and every "
            f"value they hold must be importable by module name in a fresh process (module level of the plugin)")


def record_dead_worker(run: RunSpec, how: str) -> str:
    """Write the failure row of a run whose worker process died (unless another runner holds or finished it);
    returns the error."""
    error = (f"worker process died ({how}) while running this run: the pruner or a library ended or crashed the "
             f"process (os._exit, a segfault, out of memory)")
    return record_failure_here(run, error)


def record_failure_here(run: RunSpec, error: str, replace_ok: bool = False) -> str:
    """Write ``run``'s failure row from this process, under the run's claim (unless another runner holds it, or
    the stored row is "ok" and not ``replace_ok``); returns the error. A write that fails (the writer broken
    in this process) leaves the error to the caller's report."""
    from bench_harness.locks import Claim
    from bench_harness.running.runner import write_failure_row

    with Claim(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock") as claim:
        if claim.acquired and (replace_ok or results.shard_status(run.results_root, run.suite, run.run_id) != "ok"):
            try:
                write_failure_row(run, error)
            except Exception as exc:  # noqa: BLE001 - the report says it; the sweep goes on
                error += f" (its failure row could not be written either: {type(exc).__name__}: {exc})"
    return error


NOT_STORED = ("the run reported {status} but no {status} row was stored (plugin code replaced or broke the "
              "harness's writer?)")


def checked_stored(run: RunSpec, status: str, error: str | None) -> tuple[str, str | None]:
    """(status, error) of a run that reported ``status``, checked against the store: an "ok" run must have an
    "ok" row, a "failed" run a row. Otherwise the run is failed (a failure row is written from here when
    possible) and the error says that its row is missing. Other statuses (busy, skipped) pass unchanged."""
    if status not in ("ok", "failed"):
        return status, error
    stored = results.shard_status(run.results_root, run.suite, run.run_id)
    if stored == status or (status == "failed" and stored is not None):
        return status, error
    missing = NOT_STORED.format(status=status) + (f"; its error was: {error}" if error else "")
    return "failed", record_failure_here(run, missing, replace_ok=True)


MIN_TIMEOUT_GRACE_S = 10.0


def timeout_grace(timeout_min: float) -> float:
    """Seconds a worker may run past its run's ``timeout_min`` (its own SIGALRM should have ended the run and
    written the failure row by then) before the parent kills it: 10 % of the timeout, at least
    MIN_TIMEOUT_GRACE_S."""
    return max(MIN_TIMEOUT_GRACE_S, 0.1 * timeout_min * 60.0)


def overdue_error(timeout_min: float) -> str:
    return (f"timed out after {timeout_min:g} min; the worker was killed because the run did not stop at its "
            f"timeout (it ignored or reset SIGALRM, or hung in code that signals cannot interrupt)")


@dataclass
class _Slot:
    """One worker process and the run it is executing (None: idle)."""

    process: mp.process.BaseProcess
    conn: mpc.Connection
    run: RunSpec | None = None
    deadline: float | None = None  # time.monotonic() past which the run is overdue (its timeout plus grace)

    def give(self, run: RunSpec, job: bytes) -> None:
        """Hand ``run`` (pickled with its force flag as ``job``) to the worker; its deadline starts now."""
        self.run = run
        self.deadline = (time.monotonic() + run.timeout_min * 60.0 + timeout_grace(run.timeout_min)
                         if run.timeout_min else None)
        self.conn.send_bytes(job)

    def overdue(self, now: float) -> bool:
        return self.run is not None and self.deadline is not None and now >= self.deadline


class WorkerPool:
    """Worker processes (spawn) that each execute one run at a time. Unlike concurrent.futures' pool, a worker
    that dies (os._exit, a segfault, the OOM killer) costs only its own run, which gets a failure row; a new
    worker replaces it; so does a worker still running past its run's timeout plus :func:`timeout_grace`
    (killed with SIGKILL). Workers die with the parent."""

    def __init__(self, workers: int, threads: int) -> None:
        self.context = mp.get_context("spawn")
        self.threads = threads
        self.slots = [self._start() for _ in range(workers)]

    def _start(self) -> _Slot:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(target=_worker_loop, args=(child_end, self.threads, os.getpid()),
                                       daemon=True)
        process.start()
        child_end.close()
        return _Slot(process, parent_end)

    def run(self, jobs: list[RunSpec], force: bool, record, before_start=None) -> None:
        """Execute ``jobs``, calling ``record(run_id, status, error)`` as each ends and ``before_start(run)`` before
        each is handed out. A full disk (DiskFullError from ``before_start`` or from a worker) stops handing out
        runs; the runs in progress finish (and are stored if they fit), then the DiskFullError is raised."""
        pending = list(jobs)
        stopped: DiskFullError | None = None
        while (pending and stopped is None) or self._busy():
            if stopped is None:
                try:
                    self._hand_out(pending, force, before_start, record)
                except DiskFullError as exc:
                    stopped = exc
            busy = self._busy()
            if not busy:
                continue
            ready = mpc.wait([s.conn for s in busy] + [s.process.sentinel for s in busy],
                             timeout=self._seconds_to_deadline(busy))
            for slot in busy:
                if slot.conn in ready or slot.process.sentinel in ready:
                    stopped = self._collect(slot, record) or stopped
                elif slot.overdue(time.monotonic()):
                    self._kill_overdue(slot, record)
        if stopped is not None:
            raise stopped

    @staticmethod
    def _seconds_to_deadline(busy: list[_Slot]) -> float | None:
        deadlines = [s.deadline for s in busy if s.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _kill_overdue(self, slot: _Slot, record) -> None:
        """Kill a worker whose run is past its deadline and record the run's failure; the slot is replaced
        when it is next handed a run."""
        run, slot.run, slot.deadline = slot.run, None, None
        slot.process.kill()
        slot.process.join()
        record(run.run_id, "failed", record_failure_here(run, overdue_error(run.timeout_min)))

    def _busy(self) -> list[_Slot]:
        return [s for s in self.slots if s.run is not None]

    def _hand_out(self, pending: list[RunSpec], force: bool, before_start, record) -> None:
        """Give the next pending runs to idle workers, replacing workers that died."""
        for i, slot in enumerate(self.slots):
            if slot.run is None and pending:
                if not slot.process.is_alive():
                    slot.process.join()
                    self.slots[i] = slot = self._start()
                if before_start is not None:
                    before_start(pending[0])
                run = pending.pop(0)
                try:
                    job = bytes(ForkingPickler.dumps((run, force)))
                except Exception as exc:  # noqa: BLE001 - the run fails, the sweep goes on
                    record(run.run_id, "failed", record_failure_here(run, unpicklable_error(exc)))
                    continue
                slot.give(run, job)

    def _collect(self, slot: _Slot, record) -> DiskFullError | None:
        """Record the run a worker finished, or the failure of a worker that died; a DiskFullError it reported."""
        run, slot.run = slot.run, None
        try:
            run_id, status, error = slot.conn.recv()
        except (EOFError, OSError):
            slot.process.join()
            record(run.run_id, "failed", record_dead_worker(run, describe_exit(slot.process.exitcode)))
            return None
        if status == "disk-full":
            return DiskFullError(error)
        if status == UNREADABLE:
            record(run.run_id, "failed", record_failure_here(run, unreadable_error(error)))
            return None
        record(run_id, *checked_stored(run, status, error))
        return None

    def close(self) -> None:
        """Stop every worker: idle ones are told to exit, busy ones (an interrupted sweep) killed."""
        for slot in self.slots:
            try:
                if slot.run is None and slot.process.is_alive():
                    slot.conn.send(None)
                else:
                    slot.process.kill()
            except (OSError, ValueError):
                slot.process.kill()
        for slot in self.slots:
            slot.process.join(timeout=30)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()


class SpaceCheck:
    """Before a run starts: enough free space in its results folder for its shard (bench_harness.diskspace), the
    threshold growing with the largest shard the sweep has written."""

    def __init__(self) -> None:
        self.largest_shard = 0
        self.unwritten: list[RunSpec] = []  # runs started whose shard has not been seen yet

    def __call__(self, run: RunSpec) -> None:
        for started in list(self.unwritten):
            shard = paths.shard_path(started.results_root, started.suite, started.run_id)
            if shard.exists():
                self.largest_shard = max(self.largest_shard, shard.stat().st_size)
                self.unwritten.remove(started)
        ensure_free_space(paths.suite_dir(run.results_root, run.suite), self.largest_shard)
        self.unwritten.append(run)


def run_local(suite: Suite, force: bool = False, workers: int = 1, progress: bool = True,
              isolate: bool = False) -> SweepReport:
    """Execute the suite's unfinished runs here: in this process (``workers`` 1), or in worker processes
    (``workers`` > 1, or ``isolate``: one worker) that survive nothing but cost only their own run when they die.
    Raises DiskFullError (after the runs already stored) when the results folder is full."""
    todo, done = pending_runs(suite, force)
    report = SweepReport(skipped=[r.run_id for r in done])
    if not todo:
        return report
    results.ensure_writable(Path(suite.results_root) / suite.name)
    results.save_suite_file(suite)  # the site shows its description and recipe
    # progress: bars on a terminal; plain log lines otherwise (a SLURM log, a CI log, a pipe)
    tty = progress and sys.stderr.isatty()
    lines = progress and not tty
    bar = tqdm(total=len(todo), desc=f"{suite.name}", unit="run", disable=not tty, file=sys.stderr)
    started = time.perf_counter()

    def log(text: str) -> None:
        if lines:
            elapsed = time.perf_counter() - started
            print(f"[{time.strftime('%H:%M:%S')} +{elapsed:6.0f}s] {text}", file=sys.stderr, flush=True)

    def record(run_id: str, status: str, error: str | None) -> None:
        if status == "busy":
            report.busy.append(run_id)
            tqdm.write(f"run {run_id} is being run by another runner: left to it", file=sys.stderr)
        elif status == "skipped":
            report.skipped.append(run_id)
        elif status == "ok":
            report.ok.append(run_id)
        else:
            report.failed.append((run_id, error or ""))
            tqdm.write(f"run {run_id} failed: {error}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(ok=len(report.ok), failed=len(report.failed))
        finished = len(report.ok) + len(report.failed) + len(report.busy)
        if lines and finished:
            rate = (time.perf_counter() - started) / finished
            log(f"{finished}/{len(todo)} runs ({len(report.ok)} ok, {len(report.failed)} failed); "
                f"{rate:.1f} s/run, about {rate * (len(todo) - finished) / 60:.1f} min left")

    space = SpaceCheck()
    pool = None
    try:
        packing = suite.settings.packing
        if packing > 1 and workers <= 1 and not isolate:
            for group in pack_groups(todo, packing):
                bar.set_description(f"{suite.name} packed x{len(group)}")
                space(group[0])
                by_id = {run.run_id: run for run in group}
                for run_id, status, error in execute_packed_claimed(group, force):
                    record(run_id, *checked_stored(by_id[run_id], status, error))
        elif workers <= 1 and not isolate:
            for run in todo:
                bar.set_description(f"{suite.name} {run.pruner.name} s={run.sparsity:g}")
                state = {"phase": None, "bar": None}

                log(f"run {run.run_id}: {run.model.name} {run.dataset.name} {run.pruner.name} "
                    f"sparsity {run.sparsity:g} seed {run.seed}")

                def on_epoch(phase, epoch, total, loss, state=state):
                    if lines:
                        log(f"  {phase} epoch {epoch}/{total}: loss {loss:.4f}")
                        return
                    if state["phase"] != phase:
                        if state["bar"] is not None:
                            state["bar"].close()
                        state["phase"] = phase
                        state["bar"] = tqdm(total=total, desc=phase, leave=False, disable=not progress,
                                            file=sys.stderr, bar_format="{desc}: {n}/{total} epochs "
                                            "[{elapsed}<{remaining}{postfix}]")
                    state["bar"].update(1)
                    state["bar"].set_postfix(loss=f"{loss:.4f}")

                space(run)
                row = execute_claimed(run, on_epoch=on_epoch, force=force)
                if state["bar"] is not None:
                    state["bar"].close()
                if row is None:
                    record(run.run_id, "busy", None)
                else:
                    record(run.run_id, *checked_stored(run, "skipped" if row.get("skipped") else row["status"],
                                                       row.get("error")))
        else:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or [None]
            jobs = []
            for i, run in enumerate(todo):
                device = devices[i % len(devices)]
                jobs.append(run.with_settings(replace(run.settings, device=device))
                            if device and run.device in ("auto", "cuda") else run)
            workers = max(1, workers)
            pool = WorkerPool(workers, threads_per_worker(workers))
            pool.run(jobs, force, record, before_start=space)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    return report
