"""End to end: the real `bench` CLI on real suites (synthetic and, where installed, Fashion-MNIST)."""
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench_harness.results.schema import SCHEMA
from bench_harness.results.store import load_results, read_shard
from tests.conftest import BENCH, bench


def _suite(tmp_path, name="e2e", pruners="[dense, random, magnitude]", sparsities="[0.5, 0.9]", extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
grid:
  models: [conv2]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}}}]
  sparsities: {sparsities}
  seeds: [0]
  pruners: {pruners}
recipe: {{epochs: 2, batch_size: 32, lr: 0.05}}
results_root: {tmp_path / 'results'}
{extra}
""")
    return path


def test_run_writes_one_shard_per_run_and_reruns_skip(tmp_path):
    suite = _suite(tmp_path)
    out = bench("run", suite, "--no-progress")
    assert "5 ok, 0 failed" in out.stderr
    shards = sorted((tmp_path / "results" / "e2e" / "runs").glob("*.parquet"))
    assert len(shards) == 5
    row = read_shard(shards[0])
    assert set(SCHEMA.names) <= set(row)
    df = load_results(tmp_path / "results", ["e2e"])
    assert (df.status == "ok").all()
    assert df.loc[df.pruner == "dense", "achieved_sparsity"].iloc[0] == 0.0
    mag = df[(df.pruner == "magnitude") & (df.target_sparsity == 0.9)].iloc[0]
    assert mag.achieved_sparsity == pytest.approx(0.9, abs=1e-3)
    assert mag.flops_effective < mag.flops_dense
    assert mag.params_nonzero < mag.params_total
    assert 0.0 < mag.achieved_sparsity_all < mag.achieved_sparsity
    densities = json.loads(mag.layer_density)
    assert set(densities) == {"features.0.weight", "features.2.weight", "classifier.0.weight",
                              "classifier.2.weight", "classifier.4.weight"}
    assert mag.torch_version and mag.host and mag.started_at <= mag.finished_at
    assert 0 <= mag.top1 <= 1 and mag.top5 >= mag.top1 and mag.epochs_trained == 2
    # Table printed at the end
    assert "magnitude" in out.stdout and "top1" in out.stdout
    # second run: everything skipped
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    again = bench("run", suite, "--no-progress")
    assert "0 ok, 0 failed, 5 skipped" in again.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    dry = bench("run", suite, "--dry-run").stdout
    assert "5 finished, 0 to run" in dry
    forced = bench("run", suite, "--force", "--no-progress")
    assert "5 ok" in forced.stderr
    assert "magnitude" in bench("results", suite).stdout


def test_same_seed_gives_identical_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        bench("run", _suite(d, pruners="[random]", sparsities="[0.8]"), "--no-progress")
    ra = load_results(a / "results", ["e2e"]).iloc[0]
    rb = load_results(b / "results", ["e2e"]).iloc[0]
    assert ra.run_id == rb.run_id
    assert (ra.top1, ra.loss, ra.layer_density) == (rb.top1, rb.loss, rb.layer_density)


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path, example_plugin_installed):
    suite = _suite(tmp_path, pruners="[always_fails, magnitude]", sparsities="[0.5]")
    proc = bench("run", suite, "--no-progress", check=False)
    assert proc.returncode == 1
    assert "1 ok, 1 failed" in proc.stderr
    df = load_results(tmp_path / "results", ["e2e"])
    failed = df[df.pruner == "always_fails"].iloc[0]
    assert failed.status == "failed" and "this pruner always fails" in failed.error
    assert "Traceback" in failed.traceback
    # a rerun retries the failed run only
    proc = bench("run", suite, "--no-progress", check=False)
    assert "0 ok, 1 failed, 1 skipped" in proc.stderr
    assert len(load_results(tmp_path / "results", ["e2e"])) == 2


def test_nan_loss_is_a_failure_row(tmp_path):
    suite = _suite(tmp_path, pruners="[magnitude]", sparsities="[0.5]").read_text().replace("lr: 0.05", "lr: 1.0e+30")
    path = tmp_path / "nan.yaml"
    path.write_text(suite)
    bench("run", path, "--no-progress", check=False)
    row = load_results(tmp_path / "results", ["e2e"]).iloc[0]
    assert row.status == "failed" and "non-finite training loss" in row.error


def test_ctrl_c_keeps_finished_runs_and_a_rerun_does_only_the_rest(tmp_path):
    suite = _suite(tmp_path, pruners="[random, magnitude]", sparsities="[0.1, 0.3, 0.5, 0.7, 0.8, 0.9]",
                   extra="").read_text().replace("epochs: 2", "epochs: 6")
    path = tmp_path / "long.yaml"
    path.write_text(suite)
    runs_dir = tmp_path / "results" / "e2e" / "runs"
    proc = subprocess.Popen([BENCH, "run", str(path), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(runs_dir.glob("*.parquet"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    finished = list(runs_dir.glob("*.parquet"))
    assert 2 <= len(finished) < 12
    assert not list(runs_dir.glob("*.tmp"))
    for shard in finished:
        assert read_shard(shard)["status"] == "ok"
    dry = bench("run", path, "--dry-run").stdout
    assert f"{len(finished)} finished, {12 - len(finished)} to run" in dry


def test_validate_and_errors_from_the_cli(tmp_path):
    suite = _suite(tmp_path)
    assert "is valid: 5 runs" in bench("validate", suite).stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite.read_text().replace("[dense, random, magnitude]", "[dense, snipp, magnitude]")
                   .replace("[conv2]", "[conv2]"))
    proc = bench("validate", bad, check=False)
    assert proc.returncode == 2 and "grid.pruners" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")
def test_real_data_fashion_mnist_end_to_end(tmp_path):
    path = tmp_path / "fmnist.yaml"
    path.write_text(f"""
name: fmnist_small
grid:
  models: [lenet5]
  datasets: [fashion_mnist]
  sparsities: [0.95]
  pruners: [dense, magnitude, random]
recipe: {{epochs: 1, batch_size: 128, lr: 0.05, train_subset: 6000, test_subset: 2000}}
data_root: {tmp_path / 'data'}
results_root: {tmp_path / 'results'}
""")
    bench("run", path, "--no-progress")
    df = load_results(tmp_path / "results", ["fmnist_small"]).set_index("pruner")
    assert (df.status == "ok").all()
    assert df.loc["dense", "top1"] > 0.6  # a real model learns real data
    assert df.loc["dense", "top1"] > df.loc["random", "top1"]




def test_the_quickstart_ends_with_the_leaderboard_the_plot_and_the_next_commands(tmp_path):
    """Issue 29: the quickstart ended with Parquet shards and a table. Its ending (scripts/show_results.sh, which
    scripts/quickstart.sh runs after `bench run`) on a tiny suite: the leaderboard and the accuracy-vs-density
    plot are written, their paths and the next commands printed."""
    root = Path(__file__).resolve().parent.parent
    assert "scripts/show_results.sh suites/quickstart.yaml" in (root / "scripts" / "quickstart.sh").read_text()
    suite = _suite(tmp_path, name="tiny", pruners="[dense, random]", sparsities="[0.5]")
    bench("run", suite, "--no-progress")
    proc = subprocess.run([str(root / "scripts" / "show_results.sh"), str(suite)], cwd=tmp_path, text=True,
                          capture_output=True, env={**__import__("os").environ, "BENCH": BENCH}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    board = tmp_path / "results" / "tiny" / "leaderboard.md"
    plot = tmp_path / "results" / "tiny" / "plots" / "accuracy_vs_density_conv2_synthetic.png"
    assert board.is_file() and plot.is_file()
    assert "| model " in out and "random" in board.read_text()  # the table itself is printed
    assert "leaderboard: results/tiny/leaderboard.md" in out
    assert "plot:        results/tiny/plots/accuracy_vs_density_conv2_synthetic.png" in out
    for command in ("plot tiny --style paper", "publish tiny --out site", "check-plugin NAME"):
        assert f"{BENCH} {command}" in out, out
