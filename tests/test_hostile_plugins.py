"""Hostile pruner plugins, run for real: `bench run` and `bench check-plugin` subprocesses load the pruners of
tests/fixtures/hostile through an entry point, and each way of breaking the contract must become a failure row
(or a failed check) while the other runs go on. Also: workers die with their parent, a full disk stops the sweep
with one line."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_harness.results.store import load_results

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
BENCH = str(Path(sys.executable).parent / "bench")
DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


@pytest.fixture
def hostile_env(tmp_path):
    """Environment variables under which `bench` loads the hostile pruners (a distribution on PYTHONPATH)."""
    site = tmp_path / "site"
    dist = site / "bench_hostile-0.1.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(HOSTILE / "bench_hostile_plugins.py", site)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-hostile\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench_harness]\nhostile = bench_hostile_plugins\n")
    path = os.pathsep.join([str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**os.environ, "PYTHONPATH": path}


def _suite(tmp_path, pruners, results=None, seeds="[0]", extra=""):
    path = tmp_path / "hostile.yaml"
    path.write_text(f"""
name: hostile
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], seeds: {seeds}, pruners: [{', '.join(pruners)}]}}
recipe: {{epochs: 1, batch_size: 32}}
results_root: {results or tmp_path / 'results'}
{extra}
""")
    return path


def _bench(env, *args, timeout=600):
    return subprocess.run([BENCH, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def _rows(root):
    df = load_results(root, ["hostile"])
    return {row.pruner: row for row in df.itertuples()}


def _assert_rows(root, expected_errors, ok):
    rows = _rows(root)
    for pruner, fragment in expected_errors.items():
        assert rows[pruner].status == "failed", (pruner, rows[pruner].error)
        assert fragment in rows[pruner].error, (pruner, rows[pruner].error)
    for pruner in ok:
        assert rows[pruner].status == "ok", (pruner, rows[pruner].error)
    return rows


IN_PROCESS_FAILURES = {
    "hostile_sys_exit": "sys.exit(0)",
    "hostile_keyboard_interrupt": "raised KeyboardInterrupt although no Ctrl-C",
    "hostile_none": "returned NoneType from prune()",
    "hostile_changes_weights": "changed weights net.1.weight without declaring it",
    "hostile_all_pruned": "removed every prunable weight",
}


def test_hostile_pruners_in_process_become_failure_rows_and_sparsity_is_counted_on_the_weights(tmp_path, hostile_env):
    path = _suite(tmp_path, ["hostile_sys_exit", "magnitude", "hostile_keyboard_interrupt", "hostile_none",
                             "hostile_changes_weights", "hostile_all_pruned", "hostile_zeroes_layer", "random"])
    out = _bench(hostile_env, "run", path, "--no-progress")
    assert out.returncode == 1, out.stderr
    assert "3 ok, 5 failed" in out.stderr, out.stderr
    rows = _assert_rows(tmp_path / "results", IN_PROCESS_FAILURES, ok=["magnitude", "random"])
    collapsed = rows["hostile_all_pruned"]
    assert collapsed.layer_collapse and "net.1.weight" in collapsed.collapsed_layers
    zeroed = rows["hostile_zeroes_layer"]  # its masks keep half of net.1; its weights keep none
    assert zeroed.status == "ok" and zeroed.layer_collapse and zeroed.collapsed_layers == '["net.1.weight"]'
    assert zeroed.achieved_sparsity > 0.5 + 0.1 and zeroed.params_nonzero < rows["magnitude"].params_nonzero


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--isolate"]])
def test_a_dying_worker_costs_only_its_own_run(tmp_path, hostile_env, mode):
    path = _suite(tmp_path, ["hostile_os_exit", "magnitude", "hostile_segfault", "random"])
    out = _bench(hostile_env, "run", path, "--no-progress", *mode)
    assert out.returncode == 1, out.stderr
    assert "2 ok, 2 failed" in out.stderr, out.stderr
    _assert_rows(tmp_path / "results", {"hostile_os_exit": "worker process died (exit code 7)",
                                        "hostile_segfault": "worker process died (killed by signal 11 (SIGSEGV))"},
                 ok=["magnitude", "random"])


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--isolate"]])
def test_a_run_that_cannot_travel_to_a_worker_is_a_failure_row_and_the_sweep_goes_on(tmp_path, hostile_env, mode):
    path = _suite(tmp_path, ["hostile_unpicklable_params", "magnitude", "hostile_params_only_here", "random"])
    out = _bench(hostile_env, "run", path, "--no-progress", *mode)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "2 ok, 2 failed" in out.stderr, out.stderr
    _assert_rows(tmp_path / "results", {"hostile_unpicklable_params": "cannot be sent to a worker process",
                                        "hostile_params_only_here": "could not unpickle this run"},
                 ok=["magnitude", "random"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_check_plugin_ends_what_the_pruner_started_and_leaves_no_temporary_files(tmp_path, hostile_env):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    pid_file = tmp_path / "pid"
    env = {**hostile_env, "TMPDIR": str(scratch), "HOSTILE_PID_FILE": str(pid_file)}
    t0 = time.monotonic()
    out = _bench(env, "check-plugin", "hostile_forks", "--timeout", "10", timeout=120)  # a pipe the fork holds
    assert time.monotonic() - t0 < 60, "bench waited for the pruner's process"
    assert out.returncode != 0 and "time limit of 10 s ran out" in out.stdout + out.stderr, out.stdout + out.stderr
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the pruner's process outlived bench check-plugin"
    assert list(scratch.iterdir()) == []  # the kit's folder and the pruner's temporary files are gone


@pytest.mark.parametrize("pruner,fragment", [
    ("hostile_sys_exit", "SystemExit"), ("hostile_keyboard_interrupt", "KeyboardInterrupt"),
    ("hostile_os_exit", "exit code 7"), ("hostile_segfault", "signal 11"), ("hostile_none", "NoneType"),
    ("hostile_changes_weights", "weights left alone"),
    ("hostile_all_pruned", "keeps some weights (not every layer collapsed)")])
def test_check_plugin_fails_loudly_for_each_hostile_pruner(hostile_env, pruner, fragment):
    out = _bench(hostile_env, "check-plugin", pruner)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "FAIL" in out.stdout and fragment in out.stdout, out.stdout
    assert "Traceback" not in out.stderr, out.stderr


def test_a_timeout_delivered_while_recording_a_failure_is_a_failure_row(tmp_path, hostile_env):
    # the pruner's exception takes 15 s to format; the 3 s timeout fires while the harness records it
    path = _suite(tmp_path, ["hostile_slow_failure"], seeds="[0, 1]", extra="timeout_min: 0.05")
    out = _bench(hostile_env, "run", path, "--no-progress")
    assert out.returncode == 1 and "0 ok, 2 failed" in out.stderr, out.stderr
    df = load_results(tmp_path / "results", ["hostile"])
    assert len(df) == 2 and (df.status == "failed").all()
    assert df.error.str.contains("timed out after 0.05 min").all(), list(df.error)


def _children(pid):
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_their_parent(tmp_path, hostile_env):
    path = _suite(tmp_path, ["hostile_sleeps"], seeds="[0, 1]")
    parent = subprocess.Popen([BENCH, "run", str(path), "--no-progress", "--workers", "2"], env=hostile_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until both workers are pruning (their run folders exist)
            workers = [p for p in _children(parent.pid)
                       if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
            if len(workers) >= 2 and len(list((tmp_path / "results" / "hostile" / "work").glob("*/lock"))) >= 2:
                break
            time.sleep(0.5)
        assert len(workers) >= 2, "the workers did not start"
        time.sleep(2)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.5)
        assert not any(_alive(p) for p in workers), "workers outlived their parent"
    finally:
        for pid in workers + [parent.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder, leave):
    """Fill ``folder``'s file system until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    (folder / "ballast").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_stops_the_sweep_before_a_run_with_one_line(tmp_path, hostile_env, small_disk):
    path = _suite(tmp_path, ["magnitude", "random"], results=small_disk / "results")
    (small_disk / "results").mkdir()
    _fill(small_disk, 200 * 1024)
    out = _bench(hostile_env, "run", path, "--no-progress")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(small_disk / "results" / "hostile") in error[0] and "KiB free" in error[0], \
        out.stderr
    assert not list((small_disk / "results" / "hostile").glob("runs/*.parquet"))  # no run trained


@pytest.mark.parametrize("mode", [[], ["--isolate"]])
def test_no_space_left_while_writing_stops_the_sweep_with_one_line(tmp_path, hostile_env, small_disk, mode):
    path = _suite(tmp_path, ["magnitude", "hostile_fills_disk", "random"], results=small_disk / "results")
    out = _bench(hostile_env, "run", path, "--no-progress", *mode)  # one run at a time, in the suite's order
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(small_disk / "results" / "hostile") in error[0] and "free" in error[0], \
        out.stderr
    shards = list((small_disk / "results" / "hostile" / "runs").glob("*.parquet"))
    assert len(shards) == 1  # the run stored before the disk filled stays; the run after it never started
    df = load_results(small_disk / "results", ["hostile"])
    assert list(df.pruner) == ["magnitude"] and (df.status == "ok").all()
