"""Submitting a suite to SLURM, and following it: status (one batched sacct call), resubmission, cancellation,
waiting with a progress bar."""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import shlex
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import submitit
from submitit.core.utils import FailedJobError

from bench_harness import paths
from bench_harness.config.slurm import Resources, slurm_plan
from bench_harness.config.suite import RunSpec, Suite
from bench_harness.errors import BenchError
from bench_harness.results import store as results
from bench_harness.slurm import ledger, preflight
from bench_harness.slurm.cluster import (
    ClusterLimits,
    cancel,
    expand_array_states,
    is_submit_limit_error,
    read_limits,
    sacct_states,
)
from bench_harness.slurm.task import PretrainTask, RunTask, StageTask


@dataclass
class Submission:
    arrays: list[tuple[str, int]] = field(default_factory=list)  # (array job id, tasks)
    stage_jobs: list[str] = field(default_factory=list)
    runs: int = 0
    left_out: list[str] = field(default_factory=list)  # not submitted: a submit limit of the cluster is reached
    limit: str = ""  # the limit that left runs out, e.g. "GrpSubmitJobs of account 'lab' = 7 (7 in use)"
    log_folder: str = ""
    seconds: float = 0.0


class _LimitReached(Exception):
    """sbatch refused a job because a submit limit is reached."""


def log_folder(suite: Suite | str, results_root: str | Path) -> Path:
    name = suite if isinstance(suite, str) else suite.name
    return paths.suite_dir(results_root, name) / "slurm" / "%j"


PYTHON_CHECK = ('command -v {py} >/dev/null 2>&1 || {{ echo "bench: the Python interpreter {shown} (suite key '
                '{key}) does not exist on $(hostname): set {key} to an interpreter that exists on the compute '
                'nodes" >&2; exit 3; }}\n'
                '{py} -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec(\'bench_harness\') and '
                'u.find_spec(\'submitit\') else 1)" || {{ echo "bench: {shown} on $(hostname) cannot import '
                'bench_harness and submitit: install the harness in that environment or set {key}" >&2; exit 3; }}')


def python_of(res: Resources) -> str:
    """The interpreter jobs run: ``slurm.python`` or the submitting interpreter."""
    return res.python or sys.executable


def _executor(folder: Path, name: str, res: Resources, dependency: list[str],
              python_key: str = "slurm.python") -> submitit.AutoExecutor:
    python = python_of(res)
    # submitit's own time-out count is switched off: the tasks count time-limit requeues themselves
    # (bench_harness.slurm.task), so that a preemption never uses up max_requeues
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=10 ** 6,
                               slurm_python=shlex.quote(python))
    params = res.submitit_parameters()
    extra = dict(params.pop("slurm_additional_parameters", {}))
    if dependency:
        extra["dependency"] = "afterok:" + ":".join(sorted(set(dependency)))
        extra["kill-on-invalid-dep"] = "yes"
    params["slurm_setup"] = list(params.get("slurm_setup", [])) + PYTHON_CHECK.format(
        py=shlex.quote(python), shown=shlex.quote(python).replace('"', "'"), key=python_key).split("\n")
    ex.update_parameters(name=name, slurm_additional_parameters=extra, **params)
    return ex


def _sbatch(submit, folder: Path, origin):
    """Call ``submit()`` (one sbatch); a refusal becomes a clear error (or _LimitReached) and leaves no
    submission files behind."""
    base = folder.parent if folder.name == "%j" else folder
    before = set(base.iterdir()) if base.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr too
            result = submit()
        # submitit leaves a symlink to each job's submission script in the log folder: the job folder has it
        for f in (set(base.iterdir()) - before) if base.is_dir() else ():
            if f.is_symlink() and f.name.startswith(".submission_file_"):
                f.unlink(missing_ok=True)
        return result
    except FailedJobError as exc:
        if base.is_dir():
            for f in set(base.iterdir()) - before:
                if f.is_file() and (f.name.startswith(".submission_file_") or f.suffix == ".pkl"):
                    f.unlink(missing_ok=True)
        message = str(exc).strip()
        if is_submit_limit_error(message):
            raise _LimitReached(message) from None
        raise BenchError(preflight.explain_sbatch_error(message, origin)) from None


def submit_runs(suite: Suite, runs: list[RunSpec], limits: ClusterLimits | None = None,
                check: bool = True, report: bool = True) -> Submission:
    """Submit the given runs (already filtered) in job arrays grouped by resource profile; returns at once.

    The request is checked against the cluster first (``check``); arrays are split at MaxArraySize and cut to
    the free submit slots of the limits that apply (user, account, QOS, partition). Runs that do not fit are
    recorded as not submitted in the ledger (``bench status`` counts them missing, ``bench run --wait`` and
    ``bench resubmit --missing`` submit them later). With ``report``, the log folder and what was left out are
    printed to stderr."""
    t0 = time.perf_counter()
    plan = slurm_plan(suite)
    root = suite.results_root
    folder = log_folder(suite, root)
    out = Submission(log_folder=str(folder.parent))
    if not runs:
        return out
    previous = ledger.read_all(root, suite.name)

    by_profile: dict[Resources, list[RunSpec]] = defaultdict(list)
    for run in runs:
        by_profile[plan.for_run(run)].append(run)
    batch = _Batch(suite, plan, folder, out, limits)
    if check:
        preflight.check([preflight.Request(res, batch.origin_of(group[0]), len(group))
                         for res, group in by_profile.items()])

    results.save_suite_file(suite)  # before the first sbatch, as the local executor does: the site shows it

    # Artifact jobs: one pretraining job per distinct pretrained model that is not stored yet, then one job per
    # distinct set of missing pruner stage artifacts (after the pretraining it needs, if any).
    from bench_harness.contract.registry import light_registry
    from bench_harness.running.plan import PRETRAINING, STAGE, artifact_plan, missing

    registry = light_registry()  # the cache's metadata: a pruner is imported only when it declares stages
    needs = {run.run_id: missing(artifact_plan(run, registry)) for run in runs}
    for kind, job_kind, task in ((PRETRAINING, "pretrain", PretrainTask), (STAGE, "stage", StageTask)):
        _submit_artifact_jobs(batch, runs, job_kind, task,
                              lambda run, kind=kind: tuple(a.label for a in needs[run.run_id] if a.kind == kind))

    now = dt.datetime.now(dt.timezone.utc).isoformat()
    for res, group in by_profile.items():
        _submit_arrays(batch, res, group, previous, root, now)
    # runs left out: recorded, so that status, --wait and resubmit --missing find them
    for run_id in out.left_out:
        prior = previous.get(run_id)
        ledger.write(root, suite.name, ledger.Entry(
            run_id=run_id, job_id="", state=ledger.UNSUBMITTED, attempts=prior.attempts if prior else 0,
            submitted_at=now, reason=out.limit, stdout=prior.stdout if prior else "",
            stderr=prior.stderr if prior else ""))
    out.seconds = time.perf_counter() - t0
    if report:
        report_submission(suite, runs, out)
    return out


class _Batch:
    """What the jobs of one ``submit_runs`` call share: the submit slots they use, the submit limit that
    stopped them, the artifact jobs each run waits for and the runs whose artifact job was not submitted."""

    def __init__(self, suite: Suite, plan, folder: Path, out: Submission, limits: ClusterLimits | None) -> None:
        self.suite, self.plan, self.folder, self.out = suite, plan, folder, out
        self.limits = limits
        self.limit_cache: dict[tuple, ClusterLimits] = {}
        self.submitted = 0  # jobs (array tasks count one each) submitted by this call
        self.refused = ""  # sbatch's message once it refused a job for a submit limit: nothing more is tried
        self.stage_of: dict[str, list[str]] = defaultdict(list)  # run id -> artifact jobs it depends on
        self.blocked: set[str] = set()  # runs whose artifact job could not be submitted

    def origin_of(self, run: RunSpec):
        return lambda key: self.plan.origin(run, key)

    def limits_for(self, res: Resources) -> ClusterLimits:
        if self.limits is not None:
            return self.limits
        key = (res.account, res.qos, res.partition)
        if key not in self.limit_cache:
            self.limit_cache[key] = read_limits(res.account, res.qos, res.partition)
        return self.limit_cache[key]

    def slots(self, res: Resources) -> int | None:
        free = self.limits_for(res).free_slots
        return None if free is None else max(0, free - self.submitted)

    def leave_out(self, group_runs: list[RunSpec], res: Resources) -> None:
        if not self.out.limit:
            binding = self.limits_for(res).binding
            self.out.limit = self.refused or (binding.describe() if binding else "a submit limit")
        self.out.left_out += [r.run_id for r in group_runs]


def _submit_artifact_jobs(batch: _Batch, runs: list[RunSpec], job_kind: str, task_cls,
                          wanted: Callable[[RunSpec], tuple[str, ...]]) -> None:
    """One ``task_cls`` job per distinct set of missing artifacts (``wanted(run)``: their labels) among the runs
    not blocked yet, after the artifact jobs the run already waits for; a run whose job cannot be submitted
    is blocked."""
    groups: dict[tuple[str, ...], list[RunSpec]] = defaultdict(list)
    for run in runs:
        if run.run_id in batch.blocked:
            continue
        labels = wanted(run)
        if labels:
            groups[labels].append(run)
    for group in groups.values():
        res = batch.plan.for_run(group[0])
        if batch.refused or batch.slots(res) == 0:
            batch.blocked.update(r.run_id for r in group)
            continue
        try:
            job = _sbatch(lambda: _executor(batch.folder, f"bench-{batch.suite.name}-{job_kind}", res,
                                            batch.stage_of.get(group[0].run_id, []),
                                            batch.plan.origin(group[0], "python")).submit(task_cls(group[0], res)),
                          batch.folder, batch.origin_of(group[0]))
        except _LimitReached as exc:
            batch.refused = _limit_message(exc)
            batch.blocked.update(r.run_id for r in group)
            continue
        batch.submitted += 1
        batch.out.stage_jobs.append(job.job_id)
        for run in group:
            batch.stage_of[run.run_id].append(job.job_id)


def _submit_arrays(batch: _Batch, res: Resources, group: list[RunSpec], previous: dict, root, now: str) -> None:
    """The arrays of one resource profile's runs (those whose artifact jobs were submitted), split at
    MaxArraySize and cut to the free submit slots; each run's ledger entry is written as it is submitted."""
    out, suite = batch.out, batch.suite
    if batch.blocked:
        batch.leave_out([r for r in group if r.run_id in batch.blocked], res)
        group = [r for r in group if r.run_id not in batch.blocked]
    per_task = max(1, res.runs_per_task)
    tasks = [group[i:i + per_task] for i in range(0, len(group), per_task)]
    size = max(1, batch.limits_for(res).max_array_size)  # indices 0 .. MaxArraySize-1
    while tasks:
        free = batch.slots(res)
        n = min(len(tasks), size, free if free is not None else len(tasks))
        if batch.refused or n == 0:
            batch.leave_out([r for t in tasks for r in t], res)
            break
        chunk, tasks = tasks[:n], tasks[n:]
        deps = [j for t in chunk for r in t for j in batch.stage_of.get(r.run_id, [])]
        ex = _executor(batch.folder, f"bench-{suite.name}", res, deps, batch.plan.origin(chunk[0][0], "python"))
        try:
            jobs = _sbatch(lambda: ex.submit_array([RunTask(t, res.runs_per_gpu, res) for t in chunk]),
                           batch.folder, batch.origin_of(chunk[0][0]))
        except _LimitReached as exc:
            batch.refused = _limit_message(exc)
            tasks = chunk + tasks
            continue
        except BenchError as exc:
            if out.runs or out.stage_jobs:
                raise BenchError(f"{exc}\n({out.runs} runs and {len(out.stage_jobs)} stage jobs were submitted "
                                 f"before this; they are in the ledger)") from None
            raise
        batch.submitted += len(jobs)
        out.arrays.append((jobs[0].job_id.split("_")[0], len(jobs)))
        for job, task in zip(jobs, chunk):
            for run in task:
                prior = previous.get(run.run_id)
                ledger.write(root, suite.name, ledger.Entry(
                    run_id=run.run_id, job_id=job.job_id, state="SUBMITTED",
                    attempts=(prior.attempts + 1) if prior and prior.job_id else 1,
                    stdout=str(job.paths.stdout), stderr=str(job.paths.stderr), submitted_at=now,
                    profile=asdict(res), depends_on=list(batch.stage_of.get(run.run_id, []))))
                out.runs += 1


def _limit_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    text = text.split("sbatch: error: ")[-1]
    return f"sbatch: {text}"


def report_submission(suite: Suite, runs: list[RunSpec], sub: Submission, stream=None) -> None:
    """Where the logs go and, when runs were left out, which, why, and how to submit them."""
    stream = stream or sys.stderr
    if sub.runs or sub.stage_jobs:
        print(f"logs: {sub.log_folder}/<job id>/ (`bench logs RUN_ID` prints a run's log)", file=stream)
    if sub.left_out:
        by_id = {r.run_id: r for r in runs}
        were = "runs were" if len(sub.left_out) != 1 else "run was"
        print(f"{len(sub.left_out)} {were} not submitted: {sub.limit} (limits are read from "
              f"`scontrol show assoc_mgr` and `sacctmgr`). Not submitted:", file=stream)
        for rid in sub.left_out[:20]:
            run = by_id.get(rid)
            print(f"  {run.describe() if run else rid}", file=stream)
        if len(sub.left_out) > 20:
            print(f"  ... and {len(sub.left_out) - 20} more (`bench status {suite.path}` counts them missing)",
                  file=stream)
        print(f"Submit them when jobs have finished: `bench resubmit {suite.path} --missing`, or run "
              f"`bench run {suite.path} --executor slurm --wait`, which keeps submitting as slots free up.",
              file=stream)


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


def failure_row(run: RunSpec, _cache: dict | None = None) -> dict:
    """The failure row of a run (its shard, or the suite's compacted index)."""
    shard = paths.shard_path(run.results_root, run.suite, run.run_id)
    if shard.exists():
        try:
            return results.read_shard(shard)
        except Exception:  # a damaged shard: nothing to show
            return {}
    cache = _cache if _cache is not None else {}
    if "df" not in cache:
        try:
            cache["df"] = results.load_results(run.results_root, [run.suite])
        except Exception:
            cache["df"] = None
    df = cache["df"]
    if df is None or "run_id" not in getattr(df, "columns", []):
        return {}
    rows = df[df.run_id == run.run_id]
    return rows.iloc[-1].to_dict() if len(rows) else {}


def failure_report(run: RunSpec, entry: ledger.Entry | None, row: dict, lines: int = 8) -> str:
    """What `bench status` shows under a failed run: the exception, the traceback's last lines, the log's end."""
    parts = []
    tb = str(row.get("traceback") or "").rstrip()
    if tb and "Traceback" in tb:
        last = tb.splitlines()[-lines:]
        parts.append("traceback (last lines):\n" + "\n".join("  " + x for x in last))
    tail = _tail(entry.stderr, lines) if entry is not None and entry.stderr else ""
    if tail:
        parts.append(f"log {entry.stderr} (last lines):\n" + "\n".join("  " + x for x in tail.splitlines()))
    elif tb and not parts:
        parts.append("\n".join(tb.splitlines()[-lines:]))
    return "\n".join(parts)


def reconcile(suite: Suite) -> list[RunState]:
    """The state of every run: shards first, then the ledger reconciled with one sacct call. A job that ended
    without writing its run's shard (cancelled, out of memory, node failure, time limit, crash) becomes a failure
    row carrying sacct's state and reason. Runs left out by a submit limit are ``missing`` (detail: the limit)."""
    if not suite.runs:
        return []
    root = suite.results_root
    entries = ledger.read_all(root, suite.name)
    shard = {r.run_id: results.shard_status(root, suite.name, r.run_id) for r in suite.runs}
    ask = [e.job_id for rid, e in entries.items() if shard.get(rid) != "ok" and e.job_id]
    ask += [d for e in entries.values() for d in e.depends_on]
    states = sacct_states(ask) if ask else {}
    out = []
    cache: dict = {}
    for run in suite.runs:
        entry = entries.get(run.run_id)
        status = shard.get(run.run_id)
        if status == "ok":
            out.append(RunState(run, "done", entry.job_id if entry else ""))
            continue
        if entry is not None and entry.state == ledger.UNSUBMITTED:
            out.append(RunState(run, "missing", "", f"not submitted: {entry.reason}"))
            continue
        if entry is None:
            if status == "failed":
                out.append(RunState(run, "failed", "", "", failure_report(run, None, failure_row(run, cache))))
            else:
                out.append(RunState(run, "missing"))
            continue
        info = expand_array_states(states, entry.job_id)
        slurm_state = info["state"] if info else entry.state
        if slurm_state != entry.state:
            entry.state = slurm_state
            entry.reason = info.get("reason", "") if info else entry.reason
            ledger.write(root, suite.name, entry)
        if slurm_state in ("PENDING", "SUBMITTED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                           "SUSPENDED"):
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
            out.append(RunState(run, "failed", entry.job_id, slurm_state,
                                failure_report(run, entry, failure_row(run, cache))))
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


def wait(suite: Suite, poll_s: float = 5.0, progress: bool = True, submit_left_out: bool = True) -> list[RunState]:
    """Block until no run is pending or running. With ``submit_left_out``, runs that a submit limit left out are
    submitted as slots free up, so that every run ends done or failed."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(suite.runs), desc=suite.name, unit="run", disable=not progress, file=sys.stderr)
    waiting_since = None
    while True:
        states = reconcile(suite)
        left_out = [s.run for s in states if s.state == "missing" and s.detail.startswith("not submitted")]
        if submit_left_out and left_out:
            sub = submit_runs(suite, left_out, report=False)
            if sub.runs:
                print(f"\nsubmitted {sub.runs} more runs as submit slots freed up ({len(sub.left_out)} still waiting "
                      f"for slots)", file=sys.stderr)
                waiting_since = None
                states = reconcile(suite)
            elif not any(s.state in ("pending", "running") for s in states):
                # nothing of the suite is queued and still no slot: other jobs of yours (or your account) hold them
                waiting_since = waiting_since or time.time()
                if time.time() - waiting_since > 60 and sub.limit and " = 0 (" in sub.limit:
                    bar.close()
                    raise BenchError(f"no run can be submitted: {sub.limit}")
        counts = Counter(s.state for s in states)
        bar.n = counts["done"] + counts["failed"]
        bar.set_postfix(done=counts["done"], failed=counts["failed"], running=counts["running"],
                        pending=counts["pending"], **({"unsubmitted": len(left_out)} if left_out else {}))
        bar.refresh()
        if not counts["pending"] and not counts["running"] and not (submit_left_out and left_out):
            bar.close()
            return states
        time.sleep(poll_s)
