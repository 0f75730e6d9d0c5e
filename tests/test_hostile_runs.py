"""Hostile runs, for real (real files, folders, FIFOs and `bench run` processes): a forged checkpoint cannot say
which run a result is; no link under work/ is followed; a FIFO or /dev/zero as a checkpoint neither hangs nor
exhausts memory; a worker that ignores its timeout is killed; a run whose row was not stored is never "ok"; and
what a pruner changes in the process (umask, stdout/stderr) is put back after its run."""
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from bench_harness import paths
from bench_harness.config.suite import load_suite
from bench_harness.results.store import load_results
from bench_harness.running import checkpoint
from bench_harness.running.runner import execute_run
from tests.conftest import runs_of
from tests.test_hostile_plugins import BENCH, _bench, _rows, _suite, hostile_env  # noqa: F401 - hostile_env: a fixture

SUITE = """
name: forge
grid:
  models: [mlp]
  datasets: [{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}]
  sparsities: [0.5]
  seeds: [0, 1]
  pruners: [magnitude]
recipe: {epochs: 3, batch_size: 32, lr: 0.05}
"""


def _runs(root):
    return runs_of(SUITE, root, "forge.yaml")


def _interrupted(run, at_epoch=1):
    """Run with checkpoints and stop it with a real Ctrl-C at the end of training epoch ``at_epoch``."""
    def interrupt(phase, epoch, total, loss):
        if epoch == at_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        execute_run(run, on_epoch=interrupt, resume=True)


def _warnings_of(row):
    return json.loads(row["warnings"] or "[]")


# -- 1. a forged pruned.pt cannot choose the run its result is stored as -------------------------------------------

@pytest.mark.parametrize("target", ["other-run", "../../../outside"])
def test_a_forged_checkpoint_row_cannot_redirect_the_result(tmp_path, target):
    a, b = _runs(tmp_path / "results")
    _interrupted(a)
    path = checkpoint.pruned_path(a.results_root, a.suite, a.run_id)
    owner = checkpoint.run_owner(a.suite, a.run_id)
    payload = checkpoint.load(path, owner)
    forged = {"run_id": b.run_id if target == "other-run" else target, "suite": "elsewhere", "seed": 99,
              "config": "{}", "status": "ok", "model": "resnet50"}
    payload["row"].update(forged)
    checkpoint.save(path, payload, owner)  # well-formed: the checksum is no signature
    checkpoint.checkpoint_path(a.results_root, a.suite, a.run_id).unlink()

    row = execute_run(a, resume=True)

    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0  # the checkpoint was used...
    assert (row["run_id"], row["suite"], row["seed"], row["model"]) == (a.run_id, a.suite, a.seed, "mlp")
    assert sorted(tmp_path.rglob("*.parquet")) == [paths.shard_path(a.results_root, a.suite, a.run_id)]
    stored = load_results(a.results_root, [a.suite])  # ...its identity columns were not
    assert list(stored.run_id) == [a.run_id] and list(stored.seed) == [a.seed]


def test_a_resumed_row_value_of_the_wrong_type_discards_the_checkpoint(tmp_path):
    run = _runs(tmp_path / "results")[0]
    _interrupted(run)
    path = checkpoint.pruned_path(run.results_root, run.suite, run.run_id)
    owner = checkpoint.run_owner(run.suite, run.run_id)
    payload = checkpoint.load(path, owner)
    payload["row"]["top1_before_training"] = "very high"
    checkpoint.save(path, payload, owner)

    row = execute_run(run, resume=True)

    assert row["status"] == "ok" and isinstance(row["top1_before_training"], float)
    assert any("pruned.pt discarded" in w and "wrong type: top1_before_training" in w for w in _warnings_of(row))


# -- 2. no link under work/ is followed --------------------------------------------------------------------------

@pytest.mark.parametrize("linked", ["work/<run_id>", "work"])
def test_a_symlinked_work_folder_is_never_written_or_cleared(tmp_path, linked):
    run = _runs(tmp_path / "results")[0]
    victim = tmp_path / "victim-models"
    work = paths.run_dir(run.results_root, run.suite, run.run_id).parent
    work.parent.mkdir(parents=True)
    if linked == "work":
        os.symlink(victim, work)
        precious_dir = victim / run.run_id
    else:
        work.mkdir()
        os.symlink(victim, work / run.run_id)
        precious_dir = victim
    precious_dir.mkdir(parents=True)
    for name in ("resnet50-final.pt", "thesis-best.pt", "pruned.pt"):
        (precious_dir / name).write_bytes(b"precious weights")

    row = execute_run(run, resume=True)

    assert row["status"] == "ok", row["error"]
    assert sorted(p.name for p in precious_dir.glob("*.pt")) == ["pruned.pt", "resnet50-final.pt", "thesis-best.pt"]
    assert all(p.read_bytes() == b"precious weights" for p in precious_dir.glob("*.pt"))
    assert any("symbolic link" in w for w in _warnings_of(row)), row["warnings"]


def test_clear_removes_only_regular_files_of_a_real_folder(tmp_path):
    folder = paths.run_dir(tmp_path, "s", "r")
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"someone else's")
    os.symlink(outside, folder / "link.pt")
    os.mkfifo(folder / "fifo.pt")
    (folder / "train.pt").write_bytes(b"mine")
    (folder / "lock").write_bytes(b"")

    checkpoint.clear(tmp_path, "s", "r")

    assert sorted(os.listdir(folder)) == ["fifo.pt", "link.pt", "lock"]
    assert outside.read_bytes() == b"someone else's"


# -- 3. a checkpoint that is a FIFO, a link to /dev/zero or a huge sparse file ------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY))  # /dev/zero must not eat the host
    from bench_harness.config.suite import load_suite
    from bench_harness.running.runner import execute_run
    row = execute_run(load_suite(sys.argv[1]).runs[0], resume=True)
    print(json.dumps({"status": row["status"], "error": row.get("error"), "warnings": row["warnings"]}))
""")


def _plant(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    else:  # a regular file with a valid header that declares a small body, then 64 GiB of holes
        header = json.dumps({"format": checkpoint.FORMAT, "sha256": "0" * 64, "size": 10}).encode()
        path.write_bytes(checkpoint.MAGIC + header + b"\n")
        os.truncate(path, 64 * 2**30)


@pytest.mark.parametrize("kind,why", [("fifo", "not a regular file"), ("devzero", "symbolic link"),
                                      ("sparse", "its header declares a body of 10 bytes")])
def test_a_checkpoint_that_is_no_regular_file_is_discarded_without_reading_it(tmp_path, kind, why):
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(SUITE.replace("seeds: [0, 1]", "seeds: [0]").replace("epochs: 3", "epochs: 1")
                          + f"results_root: {tmp_path / 'results'}\n")
    run = load_suite(str(suite_file)).runs[0]
    pruned = checkpoint.pruned_path(run.results_root, run.suite, run.run_id)
    pruned.parent.mkdir(parents=True)
    _plant(pruned, kind)

    out = subprocess.run([sys.executable, "-c", CHILD, str(suite_file)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})

    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok", row["error"]
    assert any("pruned.pt discarded" in w and why in w for w in json.loads(row["warnings"])), row["warnings"]
    assert not os.path.lexists(pruned) or stat.S_ISREG(os.lstat(pruned).st_mode)  # the entry went, not /dev/zero


# -- 4.-7. `bench run` with pruners that attack the harness -------------------------------------------------------

def test_a_worker_that_ignores_its_timeout_is_killed_and_its_run_fails(tmp_path, hostile_env):
    path = _suite(tmp_path, ["hostile_ignores_alarm", "magnitude"], extra="timeout_min: 0.05")
    out = _bench({**hostile_env, "HOSTILE_SLEEP_S": "90"}, "run", path, "--no-progress", "--isolate")
    assert out.returncode == 1 and "1 ok, 1 failed" in out.stderr, out.stderr
    rows = _rows(tmp_path / "results")
    assert rows["magnitude"].status == "ok"  # the replacement worker ran it
    assert rows["hostile_ignores_alarm"].status == "failed"
    assert "timed out after 0.05 min; the worker was killed" in rows["hostile_ignores_alarm"].error


@pytest.mark.parametrize("mode", [[], ["--isolate"]])
def test_a_pruner_that_replaces_the_result_writer_fails_and_later_runs_are_stored(tmp_path, hostile_env, mode):
    path = _suite(tmp_path, ["hostile_replaces_writer", "magnitude"])
    out = _bench(hostile_env, "run", path, "--no-progress", *mode)
    assert out.returncode == 1 and "1 ok, 1 failed" in out.stderr, out.stderr
    rows = _rows(tmp_path / "results")
    assert rows["magnitude"].status == "ok"
    assert rows["hostile_replaces_writer"].status == "failed"
    assert "replaced the harness's result writer" in rows["hostile_replaces_writer"].error


def test_a_run_reported_ok_without_a_stored_row_is_failed(tmp_path, hostile_env):
    # the pruner rewires the runner itself (not only the writer it restores): every run of that worker then
    # reports "ok" and stores nothing; the parent sees the missing rows and writes failure rows
    path = _suite(tmp_path, ["hostile_fakes_row", "magnitude"])
    out = _bench(hostile_env, "run", path, "--no-progress", "--isolate")
    assert out.returncode == 1 and "0 ok, 2 failed" in out.stderr, out.stderr
    rows = _rows(tmp_path / "results")
    for row in rows.values():
        assert row.status == "failed" and "reported ok but no ok row was stored" in row.error, row.error


def test_umask_and_closed_stdio_are_restored_after_the_pruner_in_process(tmp_path, hostile_env):
    path = _suite(tmp_path, ["hostile_umask", "hostile_closes_stdio", "magnitude"])
    out = subprocess.run([BENCH, "run", str(path), "--no-progress"], env=hostile_env,
                         capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o022))
    assert out.returncode == 0 and "3 ok, 0 failed" in out.stderr, (out.returncode, out.stderr)
    runs = paths.runs_dir(tmp_path / "results", "hostile")
    assert stat.S_IMODE(runs.stat().st_mode) == 0o755
    assert sorted(stat.S_IMODE(p.stat().st_mode) for p in runs.glob("*.parquet")) == [0o644] * 3
    rows = _rows(tmp_path / "results")
    assert "the umask (0777, restored to 0022)" in rows["hostile_umask"].warnings
    assert "file descriptor 2 (stderr; restored)" in rows["hostile_closes_stdio"].warnings
