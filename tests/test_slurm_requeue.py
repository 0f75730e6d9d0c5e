"""Long preemptible runs on the real dev cluster: a run preempted five times with a short time limit (where submitit
would count every preemption as a time-out and give up after three) finishes with metrics identical to a local
run; a node that goes down mid-run leaves the run requeued and finished, or recorded as failed, never lost.
Slow (minutes): run with `-m slow` (CI does, through scripts/test.sh --all)."""
import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench_harness.results.store import load_results
from bench_harness.slurm import ledger
from bench_harness.slurm.cluster import read_nodes
from tests.conftest import bench

pytestmark = pytest.mark.slow

SUITE = """
name: {name}
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 16, train_size: 2048, test_size: 256}}}}]
  sparsities: [0.8]
  pruners: [magnitude]
recipe: {{epochs: {epochs}, batch_size: 32, lr: 0.02}}
results_root: {root}
slurm: {slurm}
"""


def _entry(root, suite):
    entries = list(ledger.read_all(root, suite).values())
    assert len(entries) == 1
    return entries[0]


def _starts(log: str) -> int:
    """How many times the run was started in this task's log (first attempt and every requeue)."""
    try:
        return len(re.findall(r"\] run [0-9a-f]{16}  mlp", Path(log).read_text(errors="replace")))
    except OSError:
        return 0


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.split()
    return out[0] if out else ""


def _until(predicate, timeout: float, what: str, poll: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _job_pids(job_id: str) -> list[int]:
    """The processes of a job (``scontrol listpids``): this test's own job only."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in out[1:] if line.split() and line.split()[0].isdigit()
            and int(line.split()[0]) != os.getpid()]


def _job_processes(job_id: str) -> list[str]:
    """slurmstepd processes of a job on this machine (read only)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if line.startswith(f"slurmstepd: [{job_id}.")]


def _settle(path, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        first = bench("status", path).stdout.splitlines()[0]
        if "running" not in first and "pending" not in first:
            return first
        time.sleep(2)
    raise AssertionError("the run is still active")


def test_five_preemptions_with_a_short_time_limit(slurm_cluster, tmp_path):
    root = tmp_path / "cluster"
    path = tmp_path / "preempt5.yaml"
    # time_min 5 (<= 12: submitit would count each preemption as a time-out and fail at the fourth);
    # max_requeues 2: preemptions must not count against it
    path.write_text(SUITE.format(name="preempt5", epochs=20, root=root,
                                 slurm="{partition: low, cpus: 1, time_min: 5, signal_delay_s: 60, max_requeues: 2}"))
    bench("run", path, "--executor", "slurm")
    entry = _entry(root, "preempt5")
    cpus = max(n.cpus for n in read_nodes().values())
    high_jobs = []
    try:
        for k in range(5):
            # the task runs (attempt k + 1) and has started the run: its signal handler is installed
            _until(lambda: _squeue_state(entry.job_id) == "RUNNING" and _starts(entry.stderr) >= k + 1, 240,
                   f"attempt {k + 1} to start")
            high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "-t", "1", "-o", "/dev/null",
                                   "--wrap", "sleep 3"], capture_output=True, text=True)
            assert high.returncode == 0, high.stderr
            high_jobs.append(high.stdout.strip().split(";")[0])
            _until(lambda: _squeue_state(entry.job_id) != "RUNNING", 60, f"preemption {k + 1}")
        assert "done" in _settle(path)
    finally:
        if high_jobs:
            subprocess.run(["scancel", *high_jobs], capture_output=True)
        subprocess.run(["scancel", entry.job_id], capture_output=True)
    df = load_results(root, ["preempt5"])
    assert len(df) == 1 and df.status.iloc[0] == "ok", df.error.tolist()
    assert df.slurm_attempt.iloc[0] == 6 and df.slurm_job_id.iloc[0] == entry.job_id
    log = Path(entry.stderr).read_text(errors="replace")
    assert log.count("preempted: checkpointed, requeued") == 5, log
    assert "time limit" not in log and "timed-out too many times" not in log

    local = tmp_path / "local.yaml"
    local.write_text(SUITE.format(name="preempt5", epochs=20, root=tmp_path / "local", slurm="{}"))
    bench("run", local, "--no-progress", timeout=900)
    ref = load_results(tmp_path / "local", ["preempt5"]).set_index("run_id")
    got = df.set_index("run_id")
    for column in ("top1", "top5", "loss", "achieved_sparsity"):
        assert (ref[column] == got.loc[ref.index, column]).all(), column


def test_a_node_going_down_mid_run_loses_nothing(slurm_cluster, tmp_path):
    root = tmp_path / "results"
    path = tmp_path / "nodedown.yaml"
    path.write_text(SUITE.format(name="nodedown", epochs=40, root=root, slurm="{cpus: 1, time_min: 10}"))
    bench("run", path, "--executor", "slurm")
    entry = _entry(root, "nodedown")
    node = next(iter(read_nodes()))
    try:
        _until(lambda: "train epoch 1/" in (Path(entry.stderr).read_text(errors="replace")
                                             if Path(entry.stderr).exists() else ""), 300, "the first epoch")
        # a node that dies takes the job's processes with it: the dev node has no cgroups, so the test ends
        # them itself (this job's only, by pid) right after marking the node down
        pids = _job_pids(entry.job_id)
        assert pids
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=bench-test"], check=True)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _until(lambda: _squeue_state(entry.job_id) != "RUNNING", 60, "the job to leave the node")
        _until(lambda: not _job_processes(entry.job_id), 120, "the job's processes to end", poll=1)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    try:
        first = _settle(path)
    finally:
        subprocess.run(["scancel", entry.job_id], capture_output=True)
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", entry.job_id, "--format=State"],
                             capture_output=True, text=True).stdout
    assert "NODE_FAIL" in history or "REQUEUED" in history, history  # the node failure reached the job
    df = load_results(root, ["nodedown"])
    assert len(df) == 1, first  # never lost, never duplicated
    row = df.iloc[0]
    if row.status == "ok":
        if row.slurm_attempt >= 2:  # requeued by SLURM and resumed from its checkpoint
            assert row.resumed_from_epoch >= 1
    else:
        assert "NODE_FAIL" in row.error, row.error
