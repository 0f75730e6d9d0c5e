"""The SLURM executor as a cluster user meets it, on the real dev cluster: submit limits set with sacctmgr, sbatch
refusals turned into errors naming the suite key, the `python:` setting, traceability (log folder, per-epoch log
lines, `bench status` with the exception, `bench logs`), runs of a task spread over the job's GPUs."""
import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench_harness.config.suite import load_suite
from bench_harness.errors import BenchError
from bench_harness.results.store import load_results
from bench_harness.slurm import ledger
from bench_harness.slurm.cluster import ClusterLimits, SubmitLimit, _limit_used, gres_gpus, parse_time_min
from bench_harness.slurm.preflight import explain_sbatch_error
from bench_harness.slurm.task import visible_gpus, worker_devices
from tests.conftest import bench

GRID = """
name: {name}
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}}}]
  sparsities: {sparsities}
  pruners: {pruners}
recipe: {{epochs: {epochs}, batch_size: 32}}
results_root: {root}
slurm: {slurm}
"""


def _suite(tmp_path, name, slurm="{cpus: 1, time_min: 10}", pruners="[magnitude]", sparsities="[0.5]", epochs=1):
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, sparsities=sparsities, pruners=pruners, epochs=epochs, slurm=slurm,
                                root=tmp_path / "results"))
    return path


def _sacctmgr(*args):
    proc = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True)
    assert proc.returncode == 0 or "Nothing" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _user():
    import getpass

    return getpass.getuser()


def _own_jobs(root, suite):
    return [e.job_id for e in ledger.read_all(root, suite).values() if e.job_id]


@contextlib.contextmanager
def _cancel_own_jobs_after(root, suite):
    try:
        yield
    finally:  # only the jobs this test submitted, by id
        jobs = _own_jobs(root, suite)
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True)


def _leftover_submission_files(root):
    return [p for p in Path(root).rglob("*") if p.name.startswith(".submission_file_") or p.suffix == ".pkl"
            and "slurm" in p.parts and p.parent.name == "slurm"]


# ---- unit checks (no cluster) -------------------------------------------------------------------------------------

def test_parsing_of_limits_gres_and_time():
    assert _limit_used("7(3)") == (7, 3) and _limit_used("N(2)") == (None, 2) and _limit_used("") == (None, 0)
    assert gres_gpus("gpu:a100:4(S:0-1)") == 4 and gres_gpus("gpu:2,mps:100") == 2 and gres_gpus("(null)") == 0
    assert parse_time_min("UNLIMITED") is None and parse_time_min("1-12:00:00") == 2160
    assert parse_time_min("2:00:00") == 120 and parse_time_min("30") == 30
    limits = ClusterLimits(5, 100, (SubmitLimit("GrpSubmitJobs of account 'a'", 7, 5),
                                    SubmitLimit("MaxSubmitJobsPerUser of QOS 'normal'", 10, 1)))
    assert limits.free_slots == 2 and "account 'a'" in limits.binding.describe()
    assert ClusterLimits(5, 100).free_slots is None


def test_sbatch_messages_name_the_suite_key():
    def key(k):
        return f"slurm.pruners.imp.{k}" if k == "mem_gb" else f"slurm.{k}"

    msg = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    assert "change slurm.partition" in explain_sbatch_error(msg, key)
    msg = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert "change slurm.account" in explain_sbatch_error(msg, key)
    msg = "sbatch: error: Memory specification can not be satisfied"
    assert "slurm.pruners.imp.mem_gb" in explain_sbatch_error(msg, key)
    msg = "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    assert "slurm.additional.exclude" in explain_sbatch_error(msg, key)


def test_worker_devices_spread_runs_over_the_jobs_gpus():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"] and visible_gpus({}) == []
    assert worker_devices(1, []) == [None]
    assert worker_devices(3, []) == [None, None, None]
    assert worker_devices(1, ["0", "1"]) == ["0", "1"]
    assert worker_devices(2, ["4", "5", "6"]) == ["4", "5", "6", "4", "5", "6"]


# ---- on the dev cluster -------------------------------------------------------------------------------------------

@pytest.mark.slow  # about a minute of real SLURM scheduling; scripts/test.sh --all (CI) runs it
def test_submit_limits_of_the_account_apply_and_wait_submits_the_rest(slurm_cluster, tmp_path):
    """GrpSubmitJobs=7 on the account: 7 of 12 runs go in, the rest is named, `--wait` submits it as slots free
    up. An unrelated QOS with MaxSubmitJobsPerUser=1 changes nothing."""
    user = _user()
    _sacctmgr("add", "account", "benchlim", "parent=root")
    _sacctmgr("add", "user", user, "account=benchlim")
    _sacctmgr("modify", "account", "benchlim", "set", "grpsubmitjobs=7")
    _sacctmgr("add", "qos", "benchunrelated", "maxsubmitjobsperuser=1")
    root = tmp_path / "results"
    path = _suite(tmp_path, "limits", slurm="{cpus: 1, time_min: 10, account: benchlim}",
                  pruners="[magnitude, random]", sparsities="[0.3, 0.5, 0.7, 0.8, 0.9, 0.95]")
    try:
        with _cancel_own_jobs_after(root, "limits"):
            out = bench("run", path, "--executor", "slurm")
            assert "submitted 7 runs" in out.stderr, out.stderr
            assert "5 runs were not submitted: GrpSubmitJobs of account 'benchlim' = 7" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr and "benchunrelated" not in out.stderr
            assert out.stderr.count("  mlp") + out.stderr.count("magnitude") >= 5  # the runs left out, by name
            assert f"bench resubmit {path} --missing" in out.stderr
            assert "logs: " in out.stderr and str(root / "limits" / "slurm") in out.stderr
            status = bench("status", path).stdout
            assert "5 missing" in status, status
            proc = bench("run", path, "--executor", "slurm", "--wait", "--no-progress", check=False, timeout=600)
            assert proc.returncode == 0, proc.stderr
            assert "more runs as submit slots freed up (0 still waiting for slots)" in proc.stderr, proc.stderr
            df = load_results(root, ["limits"])
            assert len(df) == 12 and (df.status == "ok").all()
            assert "12 runs: 12 done" in bench("status", path).stdout
    finally:
        _sacctmgr("delete", "qos", "benchunrelated")
        _sacctmgr("delete", "user", user, "account=benchlim")
        _sacctmgr("delete", "account", "benchlim")


def test_sbatch_refusing_a_limit_is_no_traceback(slurm_cluster, tmp_path):
    """Limits unknown to the harness (here: not read) and sbatch refuses the second array: the runs it could not
    submit are recorded as not submitted, nothing is left behind, and no exception escapes."""
    from bench_harness.slurm.executor import submit_runs

    user = _user()
    _sacctmgr("add", "account", "benchlim2", "parent=root")
    _sacctmgr("add", "user", user, "account=benchlim2")
    _sacctmgr("modify", "account", "benchlim2", "set", "grpsubmitjobs=3")
    root = tmp_path / "results"
    path = _suite(tmp_path, "refused", slurm="{cpus: 1, time_min: 10, account: benchlim2, partition: high}",
                  sparsities="[0.3, 0.5, 0.7, 0.8, 0.9, 0.95]")
    try:
        with _cancel_own_jobs_after(root, "refused"):
            # hold the jobs so that they count against the limit for the whole test
            subprocess.run(["scontrol", "update", "partitionname=high", "state=down"], check=True)
            try:
                suite = load_suite(path)
                sub = submit_runs(suite, suite.runs, limits=ClusterLimits(2, 10000, ()), report=False)
            finally:
                subprocess.run(["scontrol", "update", "partitionname=high", "state=up"], check=True)
            assert sub.runs == 2 and len(sub.left_out) == 4, sub
            assert "AssocGrpSubmitJobsLimit" in sub.limit or "submit limit" in sub.limit, sub.limit
            assert not _leftover_submission_files(root)
            entries = ledger.read_all(root, "refused")
            assert sum(e.state == ledger.UNSUBMITTED for e in entries.values()) == 4
    finally:
        _sacctmgr("delete", "user", user, "account=benchlim2")
        _sacctmgr("delete", "account", "benchlim2")


@pytest.mark.parametrize("slurm, key", [
    ("{partition: nosuch}", "slurm.partition: partition 'nosuch' does not exist"),
    ("{gpus: 1}", "slurm.gpus: 1 GPU per task, but no node of partition 'debug' has GPUs"),
    ("{mem_gb: 100000}", "slurm.mem_gb: 100000 GB"),
    ("{pruners: {magnitude: {mem_gb: 100000}}}", "slurm.pruners.magnitude.mem_gb"),
    ("{account: nosuchaccount}", "slurm.account: you"),
    ("{partition: high, time_min: 120}", "slurm.time_min: 120 min is above the MaxTime of partition 'high' (60 min)"),
    ("{additional: {exclude: NODE}}", "slurm.additional.exclude: excludes every node"),
    ("{cpus: 64}", "slurm.cpus: 64 CPUs per task"),
])
def test_requests_are_checked_against_the_cluster(slurm_cluster, tmp_path, slurm, key):
    import socket

    path = _suite(tmp_path, "bad", slurm=slurm.replace("NODE", socket.gethostname().split(".")[0]))
    proc = bench("run", path, "--executor", "slurm", check=False)
    assert proc.returncode == 2 and key in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "nothing was submitted" in proc.stderr
    assert not ledger.read_all(tmp_path / "results", "bad") and not _leftover_submission_files(tmp_path)


@pytest.mark.parametrize("slurm, key", [
    ("{partition: nosuch}", "change slurm.partition"),
    ("{gpus: 1}", "change slurm.gpus"),
    ("{account: nosuchaccount}", "change slurm.account"),
])
def test_sbatch_refusals_name_the_suite_key_and_clean_up(slurm_cluster, tmp_path, slurm, key):
    """Without the pre-check (as when the cluster's configuration could not be read), sbatch's own message."""
    from bench_harness.slurm.executor import submit_runs

    suite = load_suite(_suite(tmp_path, "refusal", slurm=slurm, sparsities="[0.5, 0.9]"))
    with pytest.raises(BenchError, match=key) as info:
        submit_runs(suite, suite.runs, check=False, report=False)
    assert "sbatch refused the job" in str(info.value)
    assert not _leftover_submission_files(tmp_path) and not ledger.read_all(tmp_path / "results", "refusal")


def test_python_setting_and_a_clear_error_when_it_is_missing_on_the_node(slurm_cluster, tmp_path):
    root = tmp_path / "results"
    path = _suite(tmp_path, "py", slurm="{cpus: 1, time_min: 10, python: " + sys.executable
                  + ", pruners: {random: {python: /nonexistent/venv/bin/python}}}", pruners="[magnitude, random]")
    with _cancel_own_jobs_after(root, "py"):
        bench("run", path, "--executor", "slurm", "--wait", "--no-progress", check=False)
        scripts = "\n".join(p.read_text() for p in (root / "py" / "slurm").rglob("*_submission.sh"))
        assert f"{sys.executable} -u -m submitit.core._submit" in scripts
        assert "/nonexistent/venv/bin/python -u -m submitit.core._submit" in scripts
        status = bench("status", path).stdout
        assert "1 done" in status and "1 failed" in status, status
        assert ("the Python interpreter /nonexistent/venv/bin/python (suite key slurm.pruners.random.python) "
                "does not exist on") in status, status
        df = load_results(root, ["py"]).set_index("pruner")
        assert df.loc["magnitude", "status"] == "ok" and "exit code 3" in df.loc["random", "error"]


def test_traceability_status_shows_the_exception_and_bench_logs(slurm_cluster, tmp_path, example_plugin_installed):
    root = tmp_path / "results"
    path = _suite(tmp_path, "trace", slurm="{cpus: 1, time_min: 10, runs_per_task: 2}",
                  pruners="[magnitude, always_fails]", sparsities="[0.5, 0.9]", epochs=2)
    with _cancel_own_jobs_after(root, "trace"):
        proc = bench("run", path, "--executor", "slurm", "--wait", "--no-progress", check=False)
        assert proc.returncode == 1 and f"logs: {root / 'trace' / 'slurm'}" in proc.stderr, proc.stderr
        status = bench("status", path).stdout
        assert "2 done" in status and "2 failed" in status, status
        assert "this pruner always fails" in status and "traceback (last lines):" in status
        assert "RuntimeError: this pruner always fails" in status
        df = load_results(root, ["trace"])
        assert df.slurm_job_id.notna().all() and (df.slurm_attempt == 1).all()
        assert set(df.slurm_array_task_id) == {0, 1}  # 4 runs, 2 per task
        ok = df[df.status == "ok"].run_id.iloc[0]
        logs = bench("logs", ok[:10], "--suite", path).stdout
        assert f"run {ok} of suite trace: job " in logs
        assert "train epoch 1/2 loss" in logs and "train epoch 2/2 loss" in logs, logs
        assert f"run {ok[:12]} ok in" in logs
        tail = bench("logs", ok, "--results-root", root, "--lines", "3").stdout
        assert len([x for x in tail.splitlines() if not x.startswith(("run ", "---"))]) <= 6
        missing = bench("logs", "ffffffff", "--results-root", root, check=False)
        assert missing.returncode == 2 and "no SLURM run 'ffffffff'" in missing.stderr


def test_runs_of_a_task_spread_over_its_gpus(slurm_cluster, tmp_path):
    """A task with 4 runs on a job that sees GPUs 0 and 1 (CUDA_VISIBLE_DEVICES as SLURM sets it for gpus: 2;
    set by hand here, since the dev node has no GRES): two workers, one per GPU, each seeing only its own."""
    root = tmp_path / "results"
    path = _suite(tmp_path, "gpus", slurm="{cpus: 2, time_min: 10, runs_per_task: 4, "
                                          "setup: ['export CUDA_VISIBLE_DEVICES=0,1']}",
                  pruners="[magnitude, random]", sparsities="[0.5, 0.9]")
    with _cancel_own_jobs_after(root, "gpus"):
        proc = bench("run", path, "--executor", "slurm", "--wait", "--no-progress", check=False)
        assert proc.returncode == 0, proc.stderr
        log = "\n".join(p.read_text() for p in (root / "gpus" / "slurm").rglob("*_log.err"))
        assert "4 runs on 2 workers over GPUs 0,1" in log, log
        assert "CUDA_VISIBLE_DEVICES=0)" in log and "CUDA_VISIBLE_DEVICES=1)" in log
        per_gpu = {g: len(re.findall(rf"\[gpu {g}\] run [0-9a-f]{{16}}  mlp", log)) for g in ("0", "1")}
        assert per_gpu["0"] >= 1 and per_gpu["1"] >= 1 and sum(per_gpu.values()) == 4, per_gpu
        df = load_results(root, ["gpus"])
        assert len(df) == 4 and (df.status == "ok").all() and df.slurm_job_id.nunique() == 1
