"""The SLURM executor against a real single-node cluster (sbatch, sacct, scontrol, scancel)."""
import json
import os
import subprocess
import sys
import time

import pytest

from bench_harness.config.slurm import slurm_plan
from bench_harness.config.suite import load_suite
from bench_harness.errors import SuiteError
from bench_harness.results.store import load_results
from bench_harness.slurm import ledger
from tests.conftest import bench


def _suite(tmp_path, name, pruners="[dense, magnitude, random]", sparsities="[0.5, 0.8, 0.9]", epochs=3,
           slurm="{cpus: 1, time_min: 10}", extra="", train_size=256):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: {train_size}, test_size: 64}}}}]
  sparsities: {sparsities}
  pruners: {pruners}
recipe: {{epochs: {epochs}, batch_size: 32}}
results_root: {tmp_path / 'results'}
slurm: {slurm}
{extra}
""")
    return path


def _wait(path, timeout=300):
    return bench("run", path, "--executor", "slurm", "--wait", "--no-progress", check=False, timeout=timeout)


def _settle(path, timeout=300):
    """Poll `bench status` (no resubmission) until no run is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = bench("status", path).stdout
        if "running" not in out.splitlines()[0] and "pending" not in out.splitlines()[0]:
            return out
        time.sleep(2)
    raise AssertionError("runs still active: " + out)


def test_resources_merge_overrides_and_name_errors(tmp_path):
    path = _suite(tmp_path, "res", slurm="{partition: gpu, gpus: 1, time_min: 60, setup: ['module load cuda'], "
                                         "pruners: {magnitude: {time_min: 5}}, models: {mlp: {mem_gb: 4}}}")
    suite = load_suite(path)
    plan = slurm_plan(suite)
    by = {r.pruner.name: plan.for_run(r) for r in suite.runs}
    assert by["magnitude"].time_min == 5 and by["magnitude"].mem_gb == 4 and by["magnitude"].gpus == 1
    assert by["random"].time_min == 60 and by["random"].mem_gb == 4
    params = by["random"].submitit_parameters()
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1
    assert params["slurm_setup"] == ["module load cuda"]
    bad = _suite(tmp_path, "bad", slurm="{partiton: gpu}")
    with pytest.raises(SuiteError, match="slurm.partiton.*Did you mean 'partition'"):
        slurm_plan(load_suite(bad))
    bad = _suite(tmp_path, "bad2", slurm="{pruners: {snpi: {time_min: 5}}}")
    with pytest.raises(SuiteError, match="slurm.pruners.snpi"):
        slurm_plan(load_suite(bad))


def test_arrays_split_at_max_array_size_and_the_ledger(slurm_cluster, tmp_path):
    path = _suite(tmp_path, "arrays")  # 7 runs, MaxArraySize 5 -> arrays of 5 and 2 tasks
    t0 = time.perf_counter()
    out = bench("run", path, "--executor", "slurm")
    assert time.perf_counter() - t0 < 30  # detached: returns at once
    assert "submitted 7 runs" in out.stderr and "2 array(s)" in out.stderr and "(5 tasks)" in out.stderr
    entries = ledger.read_all(tmp_path / "results", "arrays")
    assert len(entries) == 7 and all("_" in e.job_id and e.stdout for e in entries.values())
    proc = _wait(path)
    assert proc.returncode == 0, proc.stderr
    status = bench("status", path).stdout
    assert "7 runs: 7 done" in status
    df = load_results(tmp_path / "results", ["arrays"])
    assert len(df) == 7 and (df.status == "ok").all()
    again = bench("run", path, "--executor", "slurm")
    assert "nothing to submit" in again.stderr


LIGHT = """
import sys
from bench_harness.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
print("PLUGINS:" + ",".join(sorted(m for m in sys.modules if m.startswith("bench_harness_plugins."))))
sys.exit(code)
"""


def test_a_submission_imports_no_plugin_and_the_jobs_validate_the_runs_again(slurm_cluster, tmp_path):
    from bench_harness.contract.registry import CACHE_ENV

    path = _suite(tmp_path, "light", pruners="[dense, magnitude, {name: synflow, params: {rounds: 3}}]",
                  sparsities="[0.5]", epochs=1)
    env = {CACHE_ENV: str(tmp_path / "registry.json")}
    bench("validate", path, env=env)  # builds the registry cache (imports the plugins)
    proc = subprocess.run([sys.executable, "-c", LIGHT, "run", str(path), "--executor", "slurm"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert "submitted 3 runs" in proc.stderr and lines[-2] == "NO-TORCH" and lines[-1] == "PLUGINS:", proc.stdout
    done = _wait(path)
    assert done.returncode == 0, done.stderr
    df = load_results(tmp_path / "results", ["light"])
    assert sorted(df.run_id) == sorted(r.run_id for r in load_suite(path).runs) and (df.status == "ok").all()
    assert set(df.pruner_params) == {"{}", '{"rounds": 3}'}


def test_packing_and_stage_dependencies(slurm_cluster, tmp_path, example_plugin_installed):
    # a post-training pruner needs the harness's pretraining (a stage job); a teacher-fed pruner needs its teacher
    # artifact (another stage job); an at-init pruner in the same suite needs neither
    path = _suite(tmp_path, "stages", pruners="[example_post_magnitude, example_teacher, random]",
                  sparsities="[0.5, 0.9]", slurm="{cpus: 1, time_min: 10, runs_per_task: 2}",
                  extra="pretrain: {epochs: 1, batch_size: 32}")
    out = bench("run", path, "--executor", "slurm")
    assert "submitted 6 runs" in out.stderr and "stage jobs" in out.stderr
    entries = ledger.read_all(tmp_path / "results", "stages")
    suite = load_suite(path)
    pruner_of = {r.run_id: r.pruner.name for r in suite.runs}
    deps = {name: {tuple(e.depends_on) for rid, e in entries.items() if pruner_of[rid] == name}
            for name in ("example_post_magnitude", "example_teacher", "random")}
    assert deps["random"] == {()}
    assert len(deps["example_post_magnitude"]) == 1 and len(next(iter(deps["example_post_magnitude"]))) == 1
    assert len(deps["example_teacher"]) == 1 and len(next(iter(deps["example_teacher"]))) == 1
    assert deps["example_post_magnitude"] != deps["example_teacher"]  # one pretraining job, one teacher job
    assert len({e.job_id for e in entries.values()}) == 3  # two runs per array task
    assert _wait(path).returncode == 0
    df = load_results(tmp_path / "results", ["stages"])
    assert (df.status == "ok").all()
    post = df[df.pruner == "example_post_magnitude"]
    assert post.top1_pretrained.nunique() == 1 and (post.pretrain_seconds < 5).all()
    assert df[df.pruner == "random"].pretrained_source.isna().all()
    teacher = [json.loads(a)["example-teacher"] for a in df[df.pruner == "example_teacher"].artifacts]
    assert [t["produced"] for t in teacher] == [False, False]  # produced by the stage job, before the runs
    assert bench("artifacts", path).returncode == 0


def test_crash_cancel_and_resubmit(slurm_cluster, tmp_path, example_plugin_installed):
    path = _suite(tmp_path, "crash", pruners="[hard_crash, magnitude]", sparsities="[0.5]", epochs=60,
                  train_size=4096)  # the magnitude run trains long enough to be cancelled
    bench("run", path, "--executor", "slurm")
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the magnitude run trains
        states = bench("status", path).stdout
        if "running" in states and "failed" in states:
            break
        time.sleep(2)
    else:
        raise AssertionError("the runs never reached running/failed: " + states)
    cancelled = bench("cancel", path).stdout
    assert "cancelled 1 jobs" in cancelled, cancelled
    status = _settle(path)
    assert "2 failed" in status, status
    df = load_results(tmp_path / "results", ["crash"]).set_index("pruner")
    assert "ended FAILED" in df.loc["hard_crash", "error"]  # crashed without a row: the reason comes from sacct
    assert "ended CANCELLED" in df.loc["magnitude", "error"]
    out = bench("resubmit", path, "--failed")
    assert "submitted 2 runs" in out.stderr
    _settle(path)
    df = load_results(tmp_path / "results", ["crash"]).set_index("pruner")
    assert len(df) == 2  # one row per run, never duplicated
    assert df.loc["magnitude", "status"] == "ok" and df.loc["hard_crash", "status"] == "failed"
    entry = ledger.read_all(tmp_path / "results", "crash")
    assert {e.attempts for e in entry.values()} == {2}


def test_a_submitted_suite_publishes_with_its_description_and_recipe(slurm_cluster, tmp_path):
    """Issue 29: SLURM-run suites were published with description "—", recipe {} (no suite.yaml was kept)."""
    path = _suite(tmp_path, "described", pruners="[magnitude]", sparsities="[0.5]", epochs=1,
                  extra="description: one magnitude run on the cluster")
    out = bench("run", path, "--executor", "slurm")
    assert "submitted 1 run of suite described" in out.stderr, out.stderr
    kept = tmp_path / "results" / "described" / "suite.yaml"
    assert kept.read_text() == path.read_text()  # kept at submission, before any job ran
    assert _wait(path).returncode == 0
    bench("publish", path, "--out", tmp_path / "site")
    page = (tmp_path / "site" / "described" / "index.html").read_text()
    assert "one magnitude run on the cluster" in page and "{&quot;batch_size&quot;: 32, &quot;epochs&quot;: 1}" in page
