"""Faults and bad input, injected for real: a read-only results folder, a truncated shard, two runners at once, a
hanging pruner, tied weights, attention projections, shard permissions, CLI errors."""
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import bench_harness
from bench_harness import hookimpl
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruner import Pruner
from bench_harness.results.shard_index import CorruptShardWarning
from bench_harness.results.store import load_results, write_shard
from bench_harness.running.runner import execute_run
from tests.conftest import bench

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


def _suite_file(tmp_path, name="rel", pruners="[magnitude, random]", sparsities="[0.5, 0.8]", epochs=1, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
grid: {{models: [mlp], datasets: [{DATA}], sparsities: {sparsities}, seeds: [0, 1], pruners: {pruners}}}
recipe: {{epochs: {epochs}, batch_size: 32}}
results_root: {tmp_path / 'results'}
{extra}
""")
    return path


def _as_nobody():
    """A command prefix that drops root (root ignores file permissions); empty when not root."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the test")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _bench_as(prefix, *args, cwd):
    exe = os.path.join(os.path.dirname(sys.executable), "bench")
    return subprocess.run([*prefix, exe, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "HOME": str(cwd)})


@pytest.fixture
def open_tmp():
    """A temporary folder another user can traverse (pytest's tmp_path lives under a 0700 folder)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="bench-readonly-"))
    os.chmod(folder, 0o755)
    yield folder
    for sub, _, _ in os.walk(folder):
        os.chmod(sub, 0o755)
    shutil.rmtree(folder, ignore_errors=True)


def test_read_only_results_folder(open_tmp):
    tmp_path = open_tmp
    path = _suite_file(tmp_path, sparsities="[0.5]", pruners="[magnitude]")
    bench("run", path, "--no-progress")
    os.chmod(tmp_path, 0o755)
    for folder, _, files in os.walk(tmp_path):
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    prefix = _as_nobody()
    if not prefix:
        for folder, _, _ in os.walk(tmp_path / "results"):
            os.chmod(folder, 0o555)
    try:
        more = _suite_file(tmp_path, name="rel", sparsities="[0.5, 0.9]", pruners="[magnitude]")
        out = _bench_as(prefix, "run", more, "--no-progress", cwd=tmp_path)
        assert out.returncode == 2 and "results cannot be written to" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        for command in (["results", more], ["leaderboard", more], ["verify", more]):
            out = _bench_as(prefix, *command, cwd=tmp_path)
            assert "Traceback" not in out.stderr, (command, out.stderr)
            assert out.returncode == 0, (command, out.stderr)
    finally:
        for folder, _, _ in os.walk(tmp_path / "results"):
            os.chmod(folder, 0o755)


def test_a_truncated_shard_is_reported_counted_missing_and_redone(tmp_path):
    path = _suite_file(tmp_path, sparsities="[0.5]", pruners="[magnitude]")
    bench("run", path, "--no-progress")
    shards = sorted((tmp_path / "results" / "rel" / "runs").glob("*.parquet"))
    assert len(shards) == 2
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated
    with pytest.warns(CorruptShardWarning, match=shards[0].name):
        df = load_results(tmp_path / "results", ["rel"])
    assert len(df) == 1
    out = bench("verify", path, check=False)
    assert out.returncode == 1 and shards[0].name in out.stdout and "1 damaged" in out.stdout
    assert "1 to run" in bench("run", path, "--dry-run").stdout
    bench("run", path, "--no-progress")
    assert bench("verify", path).returncode == 0
    assert len(load_results(tmp_path / "results", ["rel"])) == 2


def test_two_runners_share_the_work(tmp_path):
    path = _suite_file(tmp_path, pruners="[magnitude, random, snip]", epochs=2)
    exe = os.path.join(os.path.dirname(sys.executable), "bench")
    procs = [subprocess.Popen([exe, "run", str(path), "--no-progress"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ok = [int(err.split("finished in")[1].split(" ok,")[0].split(":")[1]) for _, err in outs]
    assert sum(ok) == 12, outs  # every run executed exactly once across the two runners
    df = load_results(tmp_path / "results", ["rel"])
    assert len(df) == 12 and (df.status == "ok").all()


class _Hang(Pruner):
    name = "hangs"

    def prune(self, model, sparsity, ctx):
        while True:
            time.sleep(0.05)


class _HangPlugin:
    @hookimpl
    def bench_register_pruners(self):
        return [_Hang]


def test_a_hanging_pruner_times_out_as_a_failure_row(tmp_path):
    registry = Registry(extra_plugins=[("hang", _HangPlugin())])
    suite = parse_suite(__import__("yaml").safe_load(f"""
name: hang
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [hangs]}}
timeout_min: 0.03
"""), "hang.yaml")
    run = validate_suite(suite, registry).with_settings(results_root=str(tmp_path)).runs[0]
    t0 = time.monotonic()
    row = execute_run(run, registry)
    assert row["status"] == "failed" and "timed out after 0.03 min" in row["error"]
    assert time.monotonic() - t0 < 30


def _tied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    model[3].weight = model[1].weight  # tied: one tensor, two modules
    return model


@pytest.mark.parametrize("name", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_tied_weights_with_every_score_pruner(name):
    model = _tied()
    x = torch.randn(16, 3, 2, 2)
    y = torch.randint(0, 4, (16,))
    masks = bench_harness.prune(model, name, 0.5, data=(x, y))
    assert "1.weight" in masks and "3.weight" not in masks  # the shared tensor has one mask, named once
    assert model[3].weight is model[1].weight


def test_tied_weights_with_imp():
    model = _tied()
    batches = [(torch.randn(16, 3, 2, 2), torch.randint(0, 4, (16,))) for _ in range(2)]
    masks = bench_harness.prune(model, "imp", 0.5, data=batches, train_data=batches, recipe={"epochs": 1})
    assert set(masks) == {"1.weight", "5.weight"}


def test_attention_projections_are_prunable():
    mha = nn.MultiheadAttention(8, 2)
    model = nn.ModuleDict({"attn": mha, "head": nn.Linear(8, 2)})
    names = list(bench_harness.contract.masking.prunable_parameters(model))
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]


def test_torchvision_vit_at_cifar_size_and_model_params_pass_through():
    from bench_harness.contract.models import build_model

    spec = get_registry().get("model", "torchvision")
    model = build_model(spec, "torchvision:vit_b_16", 10, 3, 32, {"image_size": 32, "dropout": 0.1})
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_data_free_pruners_take_an_input_shape():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = bench_harness.prune(model, "synflow", 0.5, input_shape=(3, 2, 2))
    assert sum(int(m.sum()) for m in masks.values()) == 28


def test_shards_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_shard({"run_id": "x", "status": "ok"}, tmp_path, "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_results_of_an_unknown_suite_and_filters(tmp_path):
    path = _suite_file(tmp_path, sparsities="[0.5]", pruners="[magnitude, random]")
    bench("run", path, "--no-progress")
    out = bench("results", "nosuch", "--results-root", tmp_path / "results", check=False)
    assert out.returncode == 2 and "suites with results under" in out.stderr and "rel" in out.stderr
    out = bench("results", path, "--where", "pruner=random")
    assert "random" in out.stdout and "magnitude" not in out.stdout
    assert "no run matches" in bench("results", path, "--failed").stdout
    out = bench("aggregate", "../x", "--results-root", tmp_path / "results", check=False)
    assert out.returncode == 2 and "neither a suite file nor a suite name" in out.stderr


def test_validate_reports_a_missing_pretrain(tmp_path, example_plugin_installed):
    path = _suite_file(tmp_path, pruners="[example_post_magnitude]")
    out = bench("validate", path, check=False)
    assert out.returncode == 2 and "names no weights" in out.stderr
