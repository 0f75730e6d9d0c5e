"""Submitting a suite to SLURM, and following it: status (one batched sacct call), resubmission, cancellation,
waiting with a progress bar."""
from __future__ import annotations

import datetime as dt
import getpass
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import submitit

from bench_harness import paths, results
from bench_harness.slurm import ledger
from bench_harness.slurm.cluster import ClusterLimits, cancel, expand_array_states, read_limits, sacct_states
from bench_harness.slurm.resources import Resources, slurm_plan
from bench_harness.slurm.task import PretrainTask, RunTask, StageTask
from bench_harness.suite import RunSpec, Suite


@dataclass
class Submission:
    arrays: list[tuple[str, int]] = field(default_factory=list)  # (array job id, tasks)
    stage_jobs: list[str] = field(default_factory=list)
    runs: int = 0
    left_out: list[str] = field(default_factory=list)  # not submitted: over the cluster's MaxSubmitJobs
    seconds: float = 0.0


def log_folder(suite: Suite | str, results_root: str | Path) -> Path:
    name = suite if isinstance(suite, str) else suite.name
    return paths.suite_dir(results_root, name) / "slurm" / "%j"


def _queued_jobs() -> int:
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                             text=True, timeout=60).stdout
        return len(out.split())
    except (OSError, subprocess.TimeoutExpired):
        return 0


def _executor(folder: Path, name: str, res: Resources, dependency: list[str]) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = res.submitit_parameters()
    extra = dict(params.pop("slurm_additional_parameters", {}))
    if dependency:
        extra["dependency"] = "afterok:" + ":".join(sorted(set(dependency)))
        extra["kill-on-invalid-dep"] = "yes"
    ex.update_parameters(name=name, slurm_additional_parameters=extra, **params)
    return ex


def submit_runs(suite: Suite, runs: list[RunSpec], limits: ClusterLimits | None = None) -> Submission:
    """Submit the given runs (already filtered) in job arrays grouped by resource profile; returns at once."""
    t0 = time.perf_counter()
    plan = slurm_plan(suite)
    limits = limits or read_limits()
    root = runs[0].results_root if runs else "results"
    folder = log_folder(suite, root)
    previous = ledger.read_all(root, suite.name)
    out = Submission()
    budget = None
    if limits.max_submit_jobs is not None:
        budget = max(0, limits.max_submit_jobs - _queued_jobs())

    # Stage jobs: one pretraining job per distinct pretrained model that is not stored yet, then one job per
    # distinct set of missing pruner stage artifacts (after the pretraining it needs, if any).
    from bench_harness.runner import missing_stages, pretrain_key, pretrained_cached
    from bench_harness.identity import config_hash

    stage_of: dict[str, list[str]] = defaultdict(list)
    pretrain_groups: dict[str, list[RunSpec]] = defaultdict(list)
    for run in runs:
        if not pretrained_cached(run):
            pretrain_groups[config_hash(pretrain_key(run))].append(run)
    for key, group in pretrain_groups.items():
        res = plan.for_run(group[0])
        job = _executor(folder, f"bench-{suite.name}-pretrain", res, []).submit(PretrainTask(group[0]))
        out.stage_jobs.append(job.job_id)
        for run in group:
            stage_of[run.run_id].append(job.job_id)
    artifact_groups: dict[tuple[str, ...], list[RunSpec]] = defaultdict(list)
    for run in runs:
        missing = tuple(missing_stages(run))
        if missing:
            artifact_groups[missing].append(run)
    for missing, group in artifact_groups.items():
        res = plan.for_run(group[0])
        job = _executor(folder, f"bench-{suite.name}-stage", res, stage_of.get(group[0].run_id, [])).submit(
            StageTask(group[0]))
        out.stage_jobs.append(job.job_id)
        for run in group:
            stage_of[run.run_id].append(job.job_id)

    by_profile: dict[Resources, list[RunSpec]] = defaultdict(list)
    for run in runs:
        by_profile[plan.for_run(run)].append(run)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    for res, group in by_profile.items():
        tasks = [group[i:i + max(1, res.runs_per_task)] for i in range(0, len(group), max(1, res.runs_per_task))]
        if budget is not None:
            out.left_out += [r.run_id for t in tasks[budget:] for r in t]
            tasks = tasks[:budget]
            budget -= len(tasks)
        size = max(1, limits.max_array_size)  # indices 0 .. MaxArraySize-1
        for start in range(0, len(tasks), size):
            chunk = tasks[start:start + size]
            deps = [j for t in chunk for r in t for j in stage_of.get(r.run_id, [])]
            ex = _executor(folder, f"bench-{suite.name}", res, deps)
            jobs = []
            with ex.batch():
                for task in chunk:
                    jobs.append(ex.submit(RunTask(task, res.runs_per_gpu)))
            out.arrays.append((jobs[0].job_id.split("_")[0], len(jobs)))
            for job, task in zip(jobs, chunk):
                for run in task:
                    prior = previous.get(run.run_id)
                    ledger.write(root, suite.name, ledger.Entry(
                        run_id=run.run_id, job_id=job.job_id, state="SUBMITTED",
                        attempts=(prior.attempts + 1) if prior else 1, stdout=str(job.paths.stdout),
                        stderr=str(job.paths.stderr), submitted_at=now, profile=asdict(res),
                        depends_on=list(stage_of.get(run.run_id, []))))
                    out.runs += 1
    out.seconds = time.perf_counter() - t0
    return out


@dataclass
class RunState:
    run: RunSpec
    state: str  # done | failed | pending | running | missing
    job_id: str = ""
    detail: str = ""
    log: str = ""


def _tail(path: str, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def reconcile(suite: Suite) -> list[RunState]:
    """The state of every run: shards first, then the ledger reconciled with one sacct call. A job that ended
    without writing its run's shard (cancelled, out of memory, node failure, time limit, crash) becomes a failure
    row carrying sacct's state and reason."""
    if not suite.runs:
        return []
    root = suite.runs[0].results_root
    entries = ledger.read_all(root, suite.name)
    shard = {r.run_id: results.shard_status(root, suite.name, r.run_id) for r in suite.runs}
    ask = [e.job_id for rid, e in entries.items() if shard.get(rid) != "ok"]
    ask += [d for e in entries.values() for d in e.depends_on]
    states = sacct_states(ask) if ask else {}
    out = []
    for run in suite.runs:
        entry = entries.get(run.run_id)
        status = shard.get(run.run_id)
        if status == "ok":
            out.append(RunState(run, "done", entry.job_id if entry else ""))
            continue
        if entry is None:
            out.append(RunState(run, "failed" if status == "failed" else "missing"))
            continue
        info = expand_array_states(states, entry.job_id)
        slurm_state = info["state"] if info else entry.state
        if slurm_state != entry.state:
            entry.state = slurm_state
            entry.reason = info.get("reason", "") if info else entry.reason
            ledger.write(root, suite.name, entry)
        if slurm_state in ("PENDING", "SUBMITTED", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "SUSPENDED"):
            out.append(RunState(run, "pending", entry.job_id, slurm_state))
        elif slurm_state in ("RUNNING", "COMPLETING", "PREEMPTED", "SIGNALING", "RESIZING", "STAGE_OUT"):
            out.append(RunState(run, "running", entry.job_id, slurm_state))
        elif slurm_state in ledger.FAILED or slurm_state == "COMPLETED":
            if status != "failed":
                reason = info.get("reason", "") if info else ""
                code = info.get("exit_code", "") if info else ""
                what = ("the job completed without writing the run's result" if slurm_state == "COMPLETED"
                        else f"SLURM job {entry.job_id} ended {slurm_state}")
                _write_failure(run, f"{what} (exit code {code}, reason {reason or 'None'})", _tail(entry.stderr, 40))
            out.append(RunState(run, "failed", entry.job_id, slurm_state, _tail(entry.stderr)))
        else:
            out.append(RunState(run, "pending", entry.job_id, slurm_state))
    return out


def _write_failure(run: RunSpec, error: str, log: str) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    results.write_shard({
        "run_id": run.run_id, "suite": run.suite, "pruner": run.pruner.name,
        "pruner_params": results.to_json(run.identity().get("pruner_params", {})), "ablation": run.ablation,
        "model": run.model.name, "model_params": results.to_json(run.model.params), "dataset": run.dataset.name,
        "seed": run.seed, "target_sparsity": run.sparsity, "config": results.to_json(run.identity()),
        "status": "failed", "error": error, "traceback": log, "started_at": now, "finished_at": now,
    }, run.results_root, run.suite)


def active_job_ids(states: list[RunState]) -> list[str]:
    return sorted({s.job_id for s in states if s.state in ("pending", "running") and s.job_id})


def cancel_suite(suite: Suite) -> list[str]:
    states = reconcile(suite)
    jobs = active_job_ids(states)
    cancel(jobs)
    return jobs


def wait(suite: Suite, poll_s: float = 5.0, progress: bool = True) -> list[RunState]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(suite.runs), desc=suite.name, unit="run", disable=not progress, file=sys.stderr)
    while True:
        states = reconcile(suite)
        counts = Counter(s.state for s in states)
        bar.n = counts["done"] + counts["failed"]
        bar.set_postfix(done=counts["done"], failed=counts["failed"], running=counts["running"],
                        pending=counts["pending"])
        bar.refresh()
        if not counts["pending"] and not counts["running"]:
            bar.close()
            return states
        time.sleep(poll_s)
