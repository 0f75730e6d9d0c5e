"""Hostile trial of the SLURM submission that imports no plugin (commit 02ded8cf).

The submission is simulated without a cluster: `bench run SUITE --executor slurm` runs in a subprocess whose
submitit executor is replaced by one that cloudpickles what would be submitted (as submitit does) into a folder;
each pickle is then loaded in a FRESH subprocess that imports the plugins, as a SLURM job does. A job whose
installed plugin differs from the submitting machine's is simulated by changing the pruner class in the job
process after the registry is loaded and before the pickle is read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench_harness.config.suite import RebuiltParams, load_suite
from bench_harness.contract import registry as lazy
from bench_harness.contract.plugins import Registry
from bench_harness.errors import BenchError
from tests.conftest import ROOT

ENV_PATH = os.pathsep.join([str(ROOT), str(ROOT / ".pypath"), *sys.path])

# Every built-in pruner family, with non-default parameters of each kind it has: Literal, list, dict[str, Any]
# nested (with ints where floats would do), Optional/None, bools, N:M strings, floats given as ints.
SUITE = """\
name: hostile
grid:
  models: [mlp]
  datasets: [synthetic]
  sparsities: [0.5]
  pruners:
    - {name: autosparse, params: {teacher_model: mlp, teacher_model_params: {hidden: [8, 4], act: relu, scale: 1},
       teacher_recipe: {lr: 1, epochs: 1, milestones: [1, 2]}, levels: 3, final_density: 1, prune_first: false,
       predictor: mlp, predictor_lr: 1}}
    - {name: magnitude, params: {allocation: erk, erk_power_scale: 2, tie_rule: exact}}
    - {name: synflow, params: {rounds: 3, double: true, erk_power_scale: 1}}
    - {name: px_head, params: {classifier_substrings: [fc, head], examples_per_class: 1}}
    - {name: wanda, params: {nm: "2:4", scope: input}}
    - {name: edge_popup, params: {epochs: 2, weight_init: signed_constant}}
    - {name: slt_frozen, params: {epochs: null, pruning_ratio: 0, locking_ratio: 0.5}}
    - {name: gmp, params: {begin: 0, end: 1, initial_sparsity: 0.1}}
    - {name: imp, params: {rate: 0.5, levels: 2}}
    - {name: snows, params: {nm: "2:4", k_step: 2, damping: 1}}
    - {name: rigl, params: {noise_std: 0, drop_fraction: 1}}
    - {name: sparsegpt, params: {nm: "4:8", percdamp: 1}}
    - {name: ntksap, params: {rounds: 2, epsilon: 1}}
    - {name: grasp, params: {allocation: null, temperature: 1}}
    - {name: lamp, params: {scope: layerwise}}
    - random
    - dense
pretrain: {epochs: 1}
results_root: RESULTS
"""

# `bench run SUITE --executor slurm` with submitit's executor replaced: what would be submitted is cloudpickled
# (as submitit does) to OUT/<n>.pkl; no sbatch, no cluster.
SUBMIT = r'''
import sys, types, itertools, cloudpickle
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(exist_ok=True)
from bench_harness.slurm import executor as ex, preflight
from bench_harness.slurm.cluster import ClusterLimits
count = itertools.count()

class Job:
    def __init__(self, n):
        self.job_id = str(1000 + n)
        self.paths = types.SimpleNamespace(stdout=out / f"{n}.out", stderr=out / f"{n}.err")

class Fake:
    def submit(self, task):
        n = next(count)
        (out / f"{n}.pkl").write_bytes(cloudpickle.dumps(task))
        return Job(n)
    def submit_array(self, tasks):
        return [self.submit(t) for t in tasks]

ex._executor = lambda *a, **k: Fake()
preflight.check = lambda *a, **k: None
ex.read_limits = lambda *a, **k: ClusterLimits(max_array_size=1000, max_job_count=10**6)
from bench_harness.cli import main
code = main(["run", sys.argv[2], "--executor", "slurm"])
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
sys.exit(code)
'''

# A job: load the plugins, optionally change the installed pruner (CHANGE: python code run with `reg` and
# `cls`), unpickle the task and report what it holds.
JOB = r'''
import sys, json, pickle, dataclasses, traceback
from bench_harness.contract.plugins import get_registry
reg = get_registry()
exec(sys.argv[2])
out = {"error": None, "runs": []}
try:
    task = pickle.loads(open(sys.argv[1], "rb").read())
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
else:
    from bench_harness.running.plan import artifact_plan, validated_params
    from bench_harness.config.suite import check_version
    runs = getattr(task, "runs", None) or [task.run]
    for run in runs:  # what the runner does when each run starts: check the version, validate the parameters
        cached = run.run_id
        facts = {"pruner": run.pruner.name, "cached_id": cached, "version": run.pruner_version,
                 "task": type(task).__name__, "error": None}
        try:
            check_version(run.pruner.name, run.pruner_version, reg.get("pruner", run.pruner.name))
            params = validated_params(run)
            facts.update(params_type=f"{type(params).__module__}.{type(params).__qualname__}", params=repr(params),
                         labels=[a.label for a in artifact_plan(run)])
            run.__dict__.pop("_run_id", None)
            facts["id"] = run.run_id
        except Exception as exc:
            facts["error"] = f"{type(exc).__name__}: {exc}"
        out["runs"].append(facts)
print(json.dumps(out))
'''


def _env(cache: Path | str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ENV_PATH, lazy.CACHE_ENV: str(cache)}


def _submit(tmp_path: Path, text: str = SUITE, cache: str | None = None) -> tuple[Path, list[Path], str]:
    suite = tmp_path / "hostile.yaml"
    suite.write_text(text.replace("RESULTS", str(tmp_path / "results")))
    out = tmp_path / "submitted"
    env = _env(cache or tmp_path / "cache.json")
    # the cache is built once (a validate imports the plugins), so the submission reads it as a user's would
    subprocess.run([sys.executable, "-m", "bench_harness.cli", "validate", str(suite)], env=env, cwd=tmp_path,
                   capture_output=True, text=True, timeout=300, check=True)
    proc = subprocess.run([sys.executable, "-c", SUBMIT, str(out), str(suite)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return suite, sorted(out.glob("*.pkl"), key=lambda p: int(p.stem)), proc.stdout.split()[-1]


def _job(pkl: Path, tmp_path: Path, change: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", JOB, str(pkl), textwrap.dedent(change)], cwd=tmp_path,
                          env=_env("off"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submit")
    suite, pkls, torch_state = _submit(tmp)
    return tmp, suite, pkls, torch_state


def _reference(suite: Path, tmp_path: Path) -> dict[str, dict]:
    """The runs as `load_suite` with the plugins imported gives them: id -> facts."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        runs = load_suite(suite, Registry()).runs
    finally:
        os.chdir(cwd)
    from bench_harness.running.plan import artifact_plan

    return {r.run_id: {"pruner": r.pruner.name, "params": repr(r.pruner_params),
                       "params_type": f"{type(r.pruner_params).__module__}.{type(r.pruner_params).__qualname__}",
                       "labels": [a.label for a in artifact_plan(r)]} for r in runs}


# -- 1. every built-in pruner: submission -> pickle -> fresh job process ----------------------------------------
def test_every_builtin_pruner_travels_to_a_job_with_the_same_id_params_and_plan(submitted):
    tmp, suite, pkls, _ = submitted
    want = _reference(suite, tmp)
    seen, jobs = {}, [_job(pkl, tmp) for pkl in pkls]
    for got in jobs:
        assert got["error"] is None, got["error"]
        for run in got["runs"]:
            if run["task"] != "RunTask":
                continue
            assert run["error"] is None and run["id"] == run["cached_id"], run  # the id computed again in the job
            ref = want[run["id"]]
            assert (run["pruner"], run["params_type"], run["params"], run["labels"]) == \
                (ref["pruner"], ref["params_type"], ref["params"], ref["labels"]), run["pruner"]
            seen[run["id"]] = run["pruner"]
    assert set(seen) == set(want)  # every run submitted once, none lost
    stage_jobs = [r for got in jobs for r in got["runs"] if r["task"] == "StageTask"]
    assert [r["pruner"] for r in stage_jobs] == ["autosparse"]  # the one stage pruner gets its stage job


def test_a_submission_without_stage_pruners_imports_no_torch(tmp_path):
    text = SUITE.split("  pruners:\n")[0] + "  pruners: [random, magnitude, {name: synflow, params: {rounds: 3}}]\n"
    text += "results_root: RESULTS\n"
    _, pkls, torch_state = _submit(tmp_path, text)
    assert len(pkls) == 3 and torch_state == "NO-TORCH"


# -- 2. the job's plugin is not the submitting machine's ---------------------------------------------------------
def _one_run_task(tmp_path: Path, pruners: str) -> Path:
    text = (SUITE.split("  pruners:\n")[0] + f"  pruners: {pruners}\nslurm: {{runs_per_task: 4}}\n"
            + "results_root: RESULTS\n")
    _, pkls, _ = _submit(tmp_path, text)
    assert len(pkls) == 1
    return pkls[0]


def test_a_job_whose_plugin_version_was_bumped_fails_that_run_naming_the_fix(tmp_path):
    """(Found by the trial: the row was written under the id of version 1 with pruner_version 2.)"""
    pkl = _one_run_task(tmp_path, "[{name: synflow, params: {rounds: 3}}]")
    got = _job(pkl, tmp_path, "reg.get('pruner', 'synflow').version = '2'")
    [run] = got["runs"]
    assert got["error"] is None and run["error"].startswith("BenchError") and "version 2" in run["error"]
    assert "install the same version of its plugin" in run["error"]


CHANGE_ROUNDS_DEFAULT = """
import dataclasses
cls = reg.get('pruner', 'synflow')
cls.Params = dataclasses.make_dataclass('Params', [(f.name, f.type, dataclasses.field(
    default=(50 if f.name == 'rounds' else f.default))) for f in dataclasses.fields(cls.Params)])
"""


def test_a_default_changed_in_the_job_is_a_clear_error(tmp_path):
    pkl = _one_run_task(tmp_path, "[synflow]")
    [run] = _job(pkl, tmp_path, CHANGE_ROUNDS_DEFAULT)["runs"]
    assert run["error"].startswith("BenchError") and "install the same version of its plugin" in run["error"]


def test_a_parameter_removed_in_the_job_names_the_plugin_mismatch(tmp_path):
    """(Found by the trial: a ValueError that said nothing of the two machines' plugins.)"""
    pkl = _one_run_task(tmp_path, "[{name: synflow, params: {rounds: 3}}]")
    [run] = _job(pkl, tmp_path, """
        import dataclasses
        cls = reg.get('pruner', 'synflow')
        cls.Params = dataclasses.make_dataclass('Params', [(f.name, f.type, dataclasses.field(default=f.default))
                                                          for f in dataclasses.fields(cls.Params)
                                                          if f.name != 'double'])
        """)["runs"]
    assert "double" in run["error"] and run["error"].startswith("BenchError") and "same version" in run["error"]


def test_a_pruner_removed_in_the_job_is_a_clear_error(tmp_path):
    pkl = _one_run_task(tmp_path, "[synflow]")
    [run] = _job(pkl, tmp_path, "del reg.entries['pruner']['synflow']")["runs"]
    assert run["error"] is not None and "synflow" in run["error"]


def test_one_run_the_job_cannot_validate_does_not_take_the_other_runs_of_its_task_down(tmp_path):
    """(Found by the trial: validation while the task unpickled failed every run of the task, without rows.)"""
    pkl = _one_run_task(tmp_path, "[random, synflow]")
    got = _job(pkl, tmp_path, CHANGE_ROUNDS_DEFAULT)
    assert got["error"] is None, got["error"]
    assert [(r["pruner"], r["error"] is None) for r in got["runs"]] == [("random", True), ("synflow", False)]


def test_a_run_in_a_job_whose_parameters_its_plugin_refuses_gets_a_failure_row(tmp_path):
    """The runner's own path: the BenchError of validated_params becomes the run's failure row, under its id."""
    import pickle

    from bench_harness.paths import shard_path
    from bench_harness.results.store import read_shard
    from bench_harness.running.runner import execute_run

    suite = tmp_path / "one.yaml"
    suite.write_text(SUITE.split("  pruners:\n")[0] + "  pruners: [{name: synflow, params: {rounds: 3}}]\n"
                     f"results_root: {tmp_path / 'results'}\n")
    full = Registry()
    light = lazy.LightRegistry(lazy.registry_data(full, lazy.installed_set()), lambda: full)
    [run] = load_suite(suite, light).runs
    state = pickle.loads(pickle.dumps(run)).__dict__
    state["pruner_params"] = RebuiltParams("synflow", {"rounds": "three"}, {"rounds": 3})
    odd = object.__new__(type(run))
    odd.__dict__.update(state)
    row = execute_run(odd, full)
    stored = read_shard(shard_path(tmp_path / "results", "hostile", run.run_id))
    assert row["status"] == stored["status"] == "failed" and "same version" in stored["error"]


# -- 2b. the cache lies about stages ------------------------------------------------------------------------------
def test_a_declaration_that_says_a_stage_pruner_has_no_stages_is_caught_by_check_plugin(tmp_path, monkeypatch):
    """(Found by the trial: has_stages false for autosparse — a static declaration `stages: false` for a class that
    overrides stages, or a hand-edited cache — plans no stage job, and each array task trains the teacher and
    predictor itself. `bench check-plugin` compares what the cache says with the class.)"""
    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "c.json"))
    full = Registry()
    data = lazy.registry_data(full, lazy.installed_set())
    assert lazy.stages_problem(lazy.LightRegistry(data, lambda: full).get("pruner", "autosparse"),
                               full.get("pruner", "autosparse")) is None
    data["entries"]["pruner"]["autosparse"]["meta"]["has_stages"] = False
    problem = lazy.stages_problem(lazy.LightRegistry(data, lambda: full).get("pruner", "autosparse"),
                                  full.get("pruner", "autosparse"))
    assert "stages: true" in problem and "autosparse" in problem


# -- 3. RebuiltParams with unexpected values -----------------------------------------------------------------------
@pytest.mark.parametrize("values, name", [
    ({"rounds": 3, "nonsense": 1}, "nonsense"),
    ({"rounds": "three"}, "rounds"),
    ({"rounds": 3, "scope": "sideways"}, "scope"),
    ({"rounds": 3, "allocation": ["erk"]}, "allocation"),
    ({"rounds": 3, "erk_power_scale": {"x": 1}}, "erk_power_scale"),
    ({"rounds": object()}, "rounds"),
])
def test_rebuilt_params_with_unexpected_values_name_the_parameter(values, name):
    with pytest.raises((BenchError, ValueError), match=name):
        RebuiltParams("synflow", values, {"rounds": 3}).validate("1")


@pytest.mark.parametrize("values", [None, {}])
def test_rebuilt_params_whose_values_miss_the_hashed_ones_give_a_clear_error(values):
    with pytest.raises((BenchError, ValueError), match="synflow"):
        RebuiltParams("synflow", values, {"rounds": 3}).validate("1")


def test_rebuilt_params_of_an_unknown_pruner_name_it():
    with pytest.raises(BenchError, match="no_such_pruner"):
        RebuiltParams("no_such_pruner", {}, {}).validate("1")


# -- 4. commands with a cache missing, damaged, unwritable or off: the same ids, no torch -----------------------
NO_TORCH = r'''
import sys
from bench_harness.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
sys.exit(code)
'''


@pytest.mark.parametrize("state", ["missing", "damaged", "wellformed-other-key", "unwritable", "off"])
def test_the_slurm_side_commands_give_the_same_runs_whatever_the_cache(tmp_path, state):
    weights = tmp_path / "w.pt"
    import torch

    torch.save({"0.weight": torch.zeros(2, 2)}, weights)
    text = (SUITE.split("  models: [mlp]\n")[0]
            + f"  models: [mlp, {{name: mlp, weights: 'file:{weights}'}}]\n"
            + "  datasets: [synthetic]\n  sparsities: [0.5]\n"
            + "  pruners: [random, wanda, {name: synflow, params: {rounds: 3}}]\n"
            + "ablations: [shuffle]\npretrain: {epochs: 1}\nresults_root: " + str(tmp_path / "r") + "\n")
    suite = tmp_path / "s.yaml"
    suite.write_text(text)
    cache = tmp_path / "cache" / "registry.json"
    reference = subprocess.run([sys.executable, "-c", NO_TORCH, "run", str(suite), "--dry-run"], cwd=tmp_path,
                               env=_env("off"), capture_output=True, text=True, timeout=300)
    if reference.returncode != 0:
        pytest.skip(f"suite not accepted here: {reference.stderr[-400:]}")
    if state == "damaged":
        cache.parent.mkdir()
        cache.write_text("{not json")
        os.chmod(cache, 0o600)
    elif state == "wellformed-other-key":
        subprocess.run([sys.executable, "-m", "bench_harness.cli", "validate", str(suite)], cwd=tmp_path,
                       env=_env(cache), capture_output=True, timeout=300, check=True)
        data = json.loads(cache.read_text())
        data["key"] = "0" * 64
        cache.write_text(json.dumps(data))
    elif state == "unwritable":
        cache.parent.mkdir()
        os.chmod(cache.parent, 0o500)
    try:
        for args in (["run", str(suite), "--dry-run"], ["status", str(suite)], ["resubmit", str(suite), "--failed"],
                     ["cancel", str(suite)]):
            proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=tmp_path,
                                  env=_env("off" if state == "off" else cache), capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, (args, proc.stderr)
            if args[0] == "run":
                assert proc.stdout.splitlines()[:-1] == reference.stdout.splitlines()[:-1]
            if state not in ("off", "missing", "damaged", "wellformed-other-key", "unwritable"):
                assert proc.stdout.split()[-1] == "NO-TORCH"
    finally:
        if cache.parent.exists():
            os.chmod(cache.parent, 0o700)


def test_status_resubmit_cancel_with_a_valid_cache_import_no_torch_even_with_stage_pruners(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE.replace("RESULTS", str(tmp_path / "r")))
    env = _env(tmp_path / "cache.json")
    subprocess.run([sys.executable, "-m", "bench_harness.cli", "validate", str(suite)], cwd=tmp_path, env=env,
                   capture_output=True, timeout=300, check=True)
    for args in (["status", str(suite)], ["resubmit", str(suite), "--failed"], ["cancel", str(suite)],
                 ["run", str(suite), "--dry-run"]):
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.split()[-1] == "NO-TORCH", args


# -- 5. run files written without statistics/dictionary/compression read as the old ones ------------------------
ONE_ROW_FILE = {"write_statistics": False, "use_dictionary": False, "compression": "none"}  # main's working tree


def _store(root: Path, new_format: bool) -> None:
    """Six run files of suite s (extra metric column on some, a column of another type on one, columns in
    another order on one), a damaged file and a file whose row is another run's."""
    from bench_harness.results import store

    for i in range(6):
        extra = {"metric_extra": 1.5} if i % 2 else {}
        if i == 5:
            extra = {"metric_extra": "n/a"}  # the same column of another type
        path = store.write_shard({"run_id": f"r{i:015d}", "suite": "s", "pruner": "random", "status": "ok",
                                  "top1": 0.5 + i / 100, "seed": i, **extra}, root, "s")
        table = pq.read_table(path)
        if i == 3:
            table = table.select(list(reversed(table.column_names)))
        options = ONE_ROW_FILE if new_format and i != 4 else {}  # one old-format file among the new ones
        pq.write_table(table, path, **options)
    folder = path.parent
    (folder / "r999999999999999.parquet").write_bytes(b"PAR1 damaged")
    other = pq.read_table(folder / "r000000000000000.parquet")
    pq.write_table(other, folder / "r888888888888888.parquet", **(ONE_ROW_FILE if new_format else {}))


def test_one_row_files_mixed_with_old_and_other_schemas_read_identically(tmp_path):
    import pandas as pd

    from bench_harness.results.dataset import _read_chunk
    from bench_harness.results.store import load_results

    old, new = tmp_path / "old", tmp_path / "new"
    _store(old, False)
    _store(new, True)

    def files(root):
        return sorted(str(p) for p in root.rglob("*.parquet"))

    def names(bad):
        return sorted((os.path.basename(f), problem.split(":")[0]) for f, problem in bad)

    (t_old, bad_old), (t_new, bad_new) = _read_chunk(files(old), "s"), _read_chunk(files(new), "s")
    assert names(bad_old) == names(bad_new) and len(bad_old) == 2
    keep = [c for c in t_old.column_names if not c.startswith("_")]
    a = t_old.select(keep).to_pandas().sort_values("run_id").reset_index(drop=True)
    b = t_new.select(sorted(keep, key=t_new.column_names.index)).to_pandas()[keep]
    pd.testing.assert_frame_equal(a, b.sort_values("run_id").reset_index(drop=True))
    la = load_results(old, ["s"]).sort_values("run_id").reset_index(drop=True)
    lb = load_results(new, ["s"]).sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(la, lb[la.columns])
    good = [f for f in files(new) if "999" not in f and "888" not in f]
    pandas_old = pd.concat([pd.read_parquet(f) for f in files(old) if "999" not in f and "888" not in f])
    pandas_new = pd.concat([pd.read_parquet(f) for f in good])
    cols = sorted(pandas_old.columns)
    pd.testing.assert_frame_equal(pandas_old[cols].sort_values("run_id").reset_index(drop=True),
                                  pandas_new[cols].sort_values("run_id").reset_index(drop=True))
