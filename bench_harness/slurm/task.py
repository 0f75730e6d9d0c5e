"""What a SLURM job runs: an array task of a few runs, or a stage job. Every job is checkpointable: submitit requeues
it on preemption or at its time limit, and the runs resume from their epoch checkpoints.

Requeues: submitit counts every USR2 that comes in the last 20% of the time limit (with ``time_min <= 12``: every
one) as a time-out and gives up after a few. The harness counts itself instead: a signal well before the time limit
is a preemption and never counts; time-limit requeues count against ``max_requeues``.

GPUs: a task with several runs and several GPUs (``CUDA_VISIBLE_DEVICES`` of the job, set by SLURM for ``gpus: N``)
runs ``runs_per_gpu`` worker processes per GPU, each worker seeing one GPU only."""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import os
import sys
import time

import submitit

from bench_harness import paths
from bench_harness.config.suite import RunSpec
from bench_harness.locks import Claim
from bench_harness.results import store as results


def log(message: str) -> None:
    """A line in the job's log (stderr), with the time and, in a worker, the GPU it uses."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    gpu = os.environ.get("BENCH_WORKER_GPU")
    print(f"[{stamp}]{f' [gpu {gpu}]' if gpu else ''} {message}", file=sys.stderr, flush=True)


def execute_once(run: RunSpec) -> str:
    """Run unless finished; the run's claim (the same lock the local runner takes) makes sure two tasks, or a task
    and a local runner, never work on the same run at the same time."""
    if results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
        return "skipped"
    with Claim(paths.run_dir(run.results_root, run.suite, run.run_id) / "lock") as claim:
        if not claim.acquired:
            log(f"run {run.run_id} is being run by another task or runner; skipped")
            return "busy"
        if results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
            return "skipped"
        from bench_harness.running.runner import execute_run

        short = run.run_id[:12]

        def on_epoch(phase: str, epoch: int, total: int, loss: float) -> None:
            log(f"run {short} {phase} epoch {epoch}/{total} loss {loss:.4f}")

        log(f"run {run.describe()}")
        t0 = time.perf_counter()
        row = execute_run(run, on_epoch=on_epoch, resume=True)
        if row.get("resumed_from_epoch") is not None:
            log(f"run {run.run_id} resumed from epoch {row['resumed_from_epoch']}")
        if row.get("status") == "ok":
            log(f"run {short} ok in {time.perf_counter() - t0:.1f} s: top1 {row.get('top1')}")
        else:
            log(f"run {short} FAILED: {row.get('error')}")
            tb = (row.get("traceback") or "").rstrip().splitlines()
            for line in tb[-8:]:
                print(f"    {line}", file=sys.stderr, flush=True)
        return row["status"]


# ---- GPUs of a task -----------------------------------------------------------------------------------------------

def visible_gpus(environ: dict | None = None) -> list[str]:
    """The GPUs SLURM gave the job (``CUDA_VISIBLE_DEVICES``); empty on CPU-only nodes."""
    value = (environ if environ is not None else os.environ).get("CUDA_VISIBLE_DEVICES", "").strip()
    if not value or value in ("NoDevFiles", "-1"):
        return []
    return [d.strip() for d in value.split(",") if d.strip()]


def worker_devices(runs_per_gpu: int, gpus: list[str]) -> list[str | None]:
    """One entry per worker process: the GPU it sees (``CUDA_VISIBLE_DEVICES``), None without GPUs. Workers are
    spread round-robin, so with 2 GPUs and ``runs_per_gpu: 2``: [0, 1, 0, 1]."""
    per = max(1, runs_per_gpu)
    if not gpus:
        return [None] * per
    return [gpus[i % len(gpus)] for i in range(per * len(gpus))]


def _init_worker(slots, devices: list, threads: int) -> None:
    from bench_harness.processes import die_with_parent

    die_with_parent(os.getppid())  # a task killed by SLURM (scancel, node failure) takes its workers with it
    slot = slots.get()
    device = devices[slot]
    if device is not None:
        # before any CUDA call: the worker sees exactly one GPU, which is cuda:0 for the run
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        os.environ["BENCH_WORKER_GPU"] = device
    import torch

    torch.set_num_threads(max(1, threads))
    log(f"worker {slot} started (CUDA_VISIBLE_DEVICES={device if device is not None else 'unset'})")


# ---- requeue accounting -------------------------------------------------------------------------------------------

def _process_start() -> float | None:
    """When this process started (before Python's imports), from /proc; None where that is not available."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float(open("/proc/uptime").read().split()[0])
        return time.time() - (uptime - int(fields[19]) / ticks)
    except (OSError, ValueError, IndexError):
        return None


class _Requeueable(submitit.helpers.Checkpointable):
    """Counts time-limit requeues itself (see the module docstring); subclasses define ``_run`` and ``_again``."""

    time_min: int = 60
    signal_delay_s: int = 90
    max_requeues: int = 100
    timeouts: int = 0

    def __call__(self):
        self._started = _process_start() or time.time()
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1
        if attempt > 1:
            log(f"attempt {attempt} (time-limit requeues so far: {self.timeouts})")
        return self._run()

    def _timed_out(self) -> bool:
        started = getattr(self, "_started", None)
        if started is None:
            return False
        window = self.time_min * 60 - self.signal_delay_s  # USR2 comes this long after the start at the limit
        margin = min(30.0, 0.25 * max(0, window))
        return time.time() - started >= window - margin

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission | None:
        # Training state is already on disk (atomic, every epoch end); the requeued job is rebuilt from the run
        # specifications alone, so nothing stale is pickled.
        timeouts = self.timeouts
        if self._timed_out():
            timeouts += 1
            if timeouts > self.max_requeues:
                log(f"time limit reached {timeouts} times: not requeued again (slurm.max_requeues = "
                    f"{self.max_requeues}); raise slurm.time_min or slurm.max_requeues")
                return None
            log(f"time limit: checkpointed, requeued ({timeouts}/{self.max_requeues} time-limit requeues)")
        else:
            log("preempted: checkpointed, requeued (preemptions do not count against slurm.max_requeues)")
        again = self._again()
        again.timeouts = timeouts
        return submitit.helpers.DelayedSubmission(again)

    def _limits_from(self, resources) -> None:
        if resources is not None:
            self.time_min = resources.time_min
            self.signal_delay_s = resources.signal_delay_s
            self.max_requeues = resources.max_requeues


class RunTask(_Requeueable):
    """Holds only the run specifications (small, no model, no state): a requeued task starts fresh from them."""

    def __init__(self, runs: list[RunSpec], runs_per_gpu: int = 1, resources=None) -> None:
        self.runs = runs
        self.runs_per_gpu = runs_per_gpu
        self.resources = resources
        self._limits_from(resources)

    def _run(self) -> dict[str, str]:
        try:
            return self._execute()
        finally:
            _compact_if_due(self.runs)

    def _execute(self) -> dict[str, str]:
        devices = worker_devices(self.runs_per_gpu, visible_gpus())
        workers = min(len(devices), len(self.runs))
        if workers <= 1:
            return {run.run_id: execute_once(run) for run in self.runs}
        devices = devices[:workers]
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or (os.cpu_count() or 1)
        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(i)
        log(f"{len(self.runs)} runs on {workers} workers"
            + (f" over GPUs {','.join(sorted(set(d for d in devices if d is not None)))}" if devices[0] else ""))
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(slots, devices, cpus // workers)) as pool:
            return dict(zip([r.run_id for r in self.runs], pool.map(execute_once, self.runs)))

    def _again(self) -> RunTask:
        return RunTask(self.runs, self.runs_per_gpu, self.resources)


def _compact_if_due(runs: list[RunSpec]) -> None:
    """After a task's runs: compact the suite when it is due (1,000 run files, or a compacted run redone — a
    retried failure), so the results folder keeps one row per run. Tasks that end together take turns on the
    store's lock; a failure here never fails the task (its rows are stored)."""
    from bench_harness.results.compaction import maybe_compact

    for root, suite in sorted({(r.results_root, r.suite) for r in runs}):
        try:
            maybe_compact(root, suite)
        except Exception as exc:  # noqa: BLE001 - the rows are stored; the next command compacts
            log(f"note: {suite}: run files not compacted ({type(exc).__name__}: {exc})")


class PretrainTask(_Requeueable):
    """A stage job: the pretrained weights that several runs wait for (SLURM afterok dependency)."""

    def __init__(self, run: RunSpec, resources=None) -> None:
        self.run = run
        self.resources = resources
        self._limits_from(resources)

    def _run(self) -> str:
        from bench_harness.running.runner import pretrain_only

        log(f"pretraining for {self.run.describe()}")
        return pretrain_only(self.run)

    def _again(self) -> PretrainTask:
        return PretrainTask(self.run, self.resources)


class StageTask(_Requeueable):
    """A stage job: the pruner stage artifacts (see ``Pruner.stages``) that several runs wait for (afterok).
    Produced under the artifact store's lock, so a run that gets there first is never duplicated."""

    def __init__(self, run: RunSpec, resources=None) -> None:
        self.run = run
        self.resources = resources
        self._limits_from(resources)

    def _run(self) -> list[str]:
        from bench_harness.running.runner import produce_stages

        log(f"stage artifacts for {self.run.describe()}")
        return produce_stages(self.run)

    def _again(self) -> StageTask:
        return StageTask(self.run, self.resources)
