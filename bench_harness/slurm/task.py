"""What a SLURM array task runs: a few runs, checkpointable (submitit requeues it on preemption or at the time
limit, and the runs resume from their epoch checkpoints)."""
from __future__ import annotations

import concurrent.futures as cf
import fcntl
import multiprocessing as mp
import sys

import submitit

from bench_harness import paths, results
from bench_harness.suite import RunSpec


def execute_once(run: RunSpec) -> str:
    """Run unless finished; a lock file makes sure two tasks never work on the same run at the same time."""
    if results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
        return "skipped"
    folder = paths.run_dir(run.results_root, run.suite, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"run {run.run_id} is being run by another task; skipped", file=sys.stderr, flush=True)
            return "busy"
        if results.shard_status(run.results_root, run.suite, run.run_id) == "ok":
            return "skipped"
        from bench_harness.runner import execute_run

        print(f"run {run.describe()}", file=sys.stderr, flush=True)
        row = execute_run(run, resume=True)
        if row.get("resumed_from_epoch") is not None:
            print(f"run {run.run_id} resumed from epoch {row['resumed_from_epoch']}", file=sys.stderr, flush=True)
        return row["status"]


class RunTask(submitit.helpers.Checkpointable):
    """Holds only the run specifications (small, no model, no state): a requeued task starts fresh from them."""

    def __init__(self, runs: list[RunSpec], runs_per_gpu: int = 1) -> None:
        self.runs = runs
        self.runs_per_gpu = runs_per_gpu

    def __call__(self) -> dict[str, str]:
        if self.runs_per_gpu <= 1 or len(self.runs) == 1:
            return {run.run_id: execute_once(run) for run in self.runs}
        with cf.ProcessPoolExecutor(self.runs_per_gpu, mp_context=mp.get_context("spawn")) as pool:
            return dict(zip([r.run_id for r in self.runs], pool.map(execute_once, self.runs)))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # Training state is already on disk (atomic, every epoch end); the requeued task is rebuilt from the
        # run specifications alone, so nothing stale is pickled.
        return submitit.helpers.DelayedSubmission(RunTask(self.runs, self.runs_per_gpu))


class PretrainTask(submitit.helpers.Checkpointable):
    """A stage job: the pretrained weights that several runs wait for (SLURM afterok dependency)."""

    def __init__(self, run: RunSpec) -> None:
        self.run = run

    def __call__(self) -> str:
        from bench_harness.runner import pretrain_only

        return pretrain_only(self.run)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(PretrainTask(self.run))




class StageTask(submitit.helpers.Checkpointable):
    """A stage job: the pruner stage artifacts (see ``Pruner.stages``) that several runs wait for (afterok).
    Produced under the artifact store's lock, so a run that gets there first is never duplicated."""

    def __init__(self, run: RunSpec) -> None:
        self.run = run

    def __call__(self) -> list[str]:
        from bench_harness.runner import produce_stages

        return produce_stages(self.run)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(StageTask(self.run))
