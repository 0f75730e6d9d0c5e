"""A run interrupted mid-training and resumed from its checkpoint ends exactly as an uninterrupted run."""
import os
import signal

import pytest

from bench_harness.paths import shard_path
from bench_harness.results.store import read_shard
from bench_harness.running import checkpoint
from bench_harness.running.runner import execute_run
from tests.conftest import runs_of

SUITE = """
name: resume
grid:
  models: [conv2]
  datasets: [{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 256, test_size: 64}}]
  sparsities: [0.8]
  pruners: [magnitude]
recipe: {epochs: 5, batch_size: 32, lr: 0.05, augment: true}
"""


def _run(root):
    return runs_of(SUITE, root, "resume.yaml")[0]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    plain = execute_run(_run(tmp_path / "plain"))

    run = _run(tmp_path / "resumed")

    def interrupt(phase, epoch, total, loss):
        if epoch == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C (a KeyboardInterrupt without one is a failed run)

    with pytest.raises(KeyboardInterrupt):
        execute_run(run, on_epoch=interrupt, resume=True)
    ck = checkpoint.load(checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id),
                         checkpoint.run_owner(run.suite, run.run_id))
    assert ck is not None and ck["epoch"] == 3
    assert not shard_path(run.results_root, run.suite, run.run_id).exists()
    resumed = execute_run(run, resume=True)
    assert resumed["status"] == "ok" and resumed["resumed_from_epoch"] == 3
    for key in ("top1", "top5", "loss", "top1_before_training", "loss_before_training", "achieved_sparsity",
                "layer_density", "params_nonzero"):
        assert resumed[key] == plain[key], key
    assert read_shard(shard_path(run.results_root, run.suite, run.run_id))["top1"] == plain["top1"]
    assert not checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id).exists()
