"""The issue's acceptance run: a suite of 21 runs through the real cluster, packed into long array tasks on the
preemptable `low` partition with a 2-minute limit, so that tasks are preempted by a `high` job and hit their time
limit mid-training. Every run must finish exactly once, resumed from its checkpoints, with metrics identical to a
local run of the same suite. Slow (several minutes): run with `-m slow` (CI does, through scripts/test.sh --all)."""
import subprocess
import time

import pytest

from bench_harness.results.store import load_results
from tests.conftest import bench

pytestmark = pytest.mark.slow

SUITE = """
name: preempt
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 16, train_size: 2048, test_size: 512}}}}]
  sparsities: [0.5, 0.8, 0.9, 0.95, 0.98]
  pruners: [dense, magnitude, random, snip, {{name: synflow, params: {{rounds: 10}}}}]
recipe: {{epochs: 6, batch_size: 32, lr: 0.02}}
results_root: {root}
slurm: {{partition: low, cpus: 1, time_min: 2, signal_delay_s: 60, runs_per_task: 11}}
"""


def test_preempted_and_timed_out_suite_equals_a_local_run(slurm_cluster, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(SUITE.format(root=tmp_path / "cluster"))
    t0 = time.perf_counter()
    out = bench("run", cluster, "--executor", "slurm")
    submit_seconds = time.perf_counter() - t0
    assert "submitted 21 runs" in out.stderr and "(2 tasks)" in out.stderr
    # let both tasks train for a while, then take the node with a high-priority job: both are preempted
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = subprocess.run(["squeue", "-h", "-t", "R", "-p", "low", "-o", "%i"], capture_output=True,
                               text=True).stdout.split()
        if len(lines) >= 2:
            break
        time.sleep(1)
    time.sleep(20)
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", "2", "-t", "2", "-o", "/dev/null",
                           "--wrap", "sleep 10"],
                          capture_output=True, text=True)
    assert high.returncode == 0, high.stderr
    bench("run", cluster, "--executor", "slurm", "--wait", "--no-progress", timeout=900)
    total_seconds = time.perf_counter() - t0
    df = load_results(tmp_path / "cluster", ["preempt"])
    assert len(df) == 21 and df.run_id.is_unique and (df.status == "ok").all(), df.error.tolist()
    resumed = df[df.resumed_from_epoch.notna()]
    assert len(resumed) >= 2, "expected runs resumed after preemption and after the time limit"
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "cluster" / "preempt" / "slurm").rglob("*.err"))
    assert "resumed from epoch" in logs
    sacct = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "-p", "--format=JobID,State", "-r", "low"],
                           capture_output=True, text=True).stdout
    assert "PREEMPTED" in sacct or "REQUEUED" in sacct
    assert "TIMEOUT" in sacct or "REQUEUED" in sacct

    local = tmp_path / "local.yaml"
    local.write_text(SUITE.format(root=tmp_path / "local"))
    bench("run", local, "--no-progress", timeout=900)
    ref = load_results(tmp_path / "local", ["preempt"]).set_index("run_id")
    got = df.set_index("run_id")
    assert set(ref.index) == set(got.index)
    for column in ("top1", "top5", "loss", "top1_before_training", "achieved_sparsity", "layer_density"):
        assert (ref[column] == got.loc[ref.index, column]).all(), column
    aggregate = bench("aggregate", cluster).stdout
    assert "21 runs -> 21 leaderboard rows" in aggregate
    print(f"\nsubmission {submit_seconds:.1f} s; whole suite on the cluster {total_seconds:.0f} s; "
          f"resumed runs: {len(resumed)}")
