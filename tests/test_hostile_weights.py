"""Hostile tests of a model entry's ``weights:`` (issue 26): what a careless user or a busy shared cluster does.

The tests under "bugs" each reproduced a finding of the hostile review of issue 26 (they were strict xfails until
the fix); the others pin behaviour that held. Everything is tiny: 8x8 images, an MLP, 0-1 epochs.
"""
from __future__ import annotations

import json
import os
import shutil
from functools import partial

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from bench_harness import hookimpl, masking
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract.plugins import Registry
from bench_harness.contract.pruner import Pruner, PruneResult, Regime
from bench_harness.contract.specs import DatasetSpec
from bench_harness.errors import SuiteError
from bench_harness.results.leaderboard import build_leaderboard
from bench_harness.results.store import load_results
from bench_harness.running.runner import execute_run


def _images(root, split, augment, download=False, classes=4, channels=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    n = 64 if split == "train" else 32
    labels = torch.arange(n) % classes
    prototypes = torch.randn(classes, channels, size, size, generator=torch.Generator().manual_seed(seed))
    out = TensorDataset(prototypes[labels] + 0.5 * torch.randn(n, channels, size, size, generator=g), labels)
    out.targets = labels
    return out


@hookimpl
def bench_register_datasets():
    return [
        DatasetSpec("hx_source", 4, 3, 8, partial(_images, seed=1), "source"),
        DatasetSpec("hx_target", 4, 3, 8, partial(_images, seed=2), "target"),
        DatasetSpec("hx_gray", 4, 1, 8, partial(_images, channels=1, seed=3), "grey, 1 channel"),
        DatasetSpec("hx_big", 4, 3, 16, partial(_images, size=16, seed=4), "16x16 images"),
        DatasetSpec("hx_six", 6, 3, 8, partial(_images, classes=6, seed=5), "six classes"),
    ]


class RngWitness(Pruner):
    """At-init magnitude that reports a draw from the global torch generator at prune time (as a pruner, a
    dropout layer or a torchvision augmentation after it would draw)."""

    name = "hx_rng"
    regime = Regime.AT_INIT

    def prune(self, model, sparsity, ctx):
        scores = {n: p.detach().abs() for n, p in ctx.prunable.items()}
        return PruneResult(masking.topk_masks(scores, 1.0 - sparsity), info={"draw": float(torch.rand(1))})


@hookimpl
def bench_register_pruners():
    return [RngWitness]


@pytest.fixture(scope="module")
def registry():
    import sys

    return Registry(extra_plugins=[("hostile", sys.modules[__name__])])


MLP = "name: mlp, params: {hidden: [16]}"


def _suite(text, base, registry, results=None):
    parsed = parse_suite(yaml.safe_load(text), str(base / "s.yaml"), base_dir=str(base))
    return validate_suite(parsed, registry).with_settings(results_root=str(results or base / "results"))


def _save_mlp(path, seed=0, classes=4):
    from bench_harness_plugins.providers.archs.small import MLP as Net

    torch.manual_seed(seed)
    torch.save(Net(classes, 3, 8, (16,)).state_dict(), path)


def _grid(models, pruners="[magnitude]", dataset="hx_target", extra=""):
    return (f"name: h\ngrid: {{models: [{models}], datasets: [{dataset}], sparsities: [0.5], pruners: {pruners}}}\n"
            f"recipe: {{epochs: 0, batch_size: 32}}\n{extra}")


# -- bugs ---------------------------------------------------------------------------------------------------------
def test_leaderboard_keeps_runs_of_different_weights_apart(tmp_path, registry):
    _save_mlp(tmp_path / "a.pt", seed=1)
    _save_mlp(tmp_path / "b.pt", seed=2)
    suite = _suite(_grid(f"{{{MLP}, weights: 'file:a.pt'}}, {{{MLP}, weights: 'file:b.pt'}}, {{{MLP}}}"),
                   tmp_path, registry)
    assert len({r.run_id for r in suite.runs}) == 3  # the ids do keep them apart
    for run in suite.runs:
        assert execute_run(run, registry)["status"] == "ok"
    board = build_leaderboard(load_results(tmp_path / "results", ["h"]), ["h"])
    # three experiments (two pretrained starts, one random init) must not become one row of "3 seeds"
    assert len(board) == 3, board[["model", "method", "seeds"]].to_string()


def test_one_file_spelled_differently_is_one_run_id(tmp_path, registry):
    _save_mlp(tmp_path / "w.pt")
    ids = []
    for spelling in ("file:w.pt", "w.pt", "file:./w.pt", f"file:{tmp_path}/w.pt"):
        suite = _suite(_grid(f"{{{MLP}, weights: '{spelling}'}}"), tmp_path, registry)
        ids.append(suite.runs[0].run_id)
    assert len(set(ids)) == 1, ids


def test_a_transfer_source_of_another_image_shape_is_refused_at_validation(tmp_path, registry):
    for source in ("hx_gray", "hx_big"):
        with pytest.raises(SuiteError, match=f"pretrain:{source} has"):
            _suite(_grid(f"{{{MLP}, weights: 'pretrain:{source}'}}", extra="pretrain: {epochs: 1}"), tmp_path,
                   registry)


def test_a_transfer_source_whose_shape_only_the_run_knows_fails_before_pretraining(tmp_path, registry):
    """A target data set with parameters has its shape decided when the run reads it: the run fails before it
    pretrains anything (no artifact), with both shapes named."""
    data = "{name: synthetic, params: {num_classes: 4, image_size: 16, train_size: 64, test_size: 32}}"
    suite = _suite(_grid(f"{{{MLP}, weights: 'pretrain:hx_source'}}", pruners="[dense, magnitude]", dataset=data,
                         extra="pretrain: {epochs: 1, batch_size: 32}"), tmp_path, registry)
    rows = [execute_run(r, registry) for r in suite.runs]
    assert all(r["status"] == "failed" and "3x8x8" in r["error"] and "3x16x16" in r["error"] for r in rows)
    assert not list((tmp_path / "results" / "artifacts").glob("pretrained/*/artifact.pt"))


def test_a_scoring_dataset_of_another_shape_is_refused_at_validation(tmp_path, registry):
    with pytest.raises(SuiteError, match="scoring"):
        _suite(_grid(MLP.join("{}"), extra="scoring: {dataset: hx_big}"), tmp_path, registry)


def test_an_infinite_backbone_lr_scale_is_refused(tmp_path, registry):
    with pytest.raises(SuiteError, match="backbone_lr_scale"):
        _suite(_grid(MLP.join("{}"), extra="").replace("batch_size: 32}", "batch_size: 32, "
                                                         "backbone_lr_scale: .inf}"), tmp_path, registry)


def test_a_file_rewritten_in_place_with_its_mtime_restored_gets_new_ids(tmp_path, registry):
    path = tmp_path / "w.pt"
    _save_mlp(path, seed=0)
    before = _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}"), tmp_path, registry).runs[0].run_id
    st = os.stat(path)
    (tmp_path / "other").mkdir()
    _save_mlp(tmp_path / "other" / "w.pt", seed=9)  # same name: torch.save's archive prefix, same size
    data = (tmp_path / "other" / "w.pt").read_bytes()
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    after = _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}"), tmp_path, registry).runs[0].run_id
    assert before != after


def test_global_rng_after_a_transfer_does_not_depend_on_the_artifact_cache(tmp_path, registry):
    # a source with other classes (a backbone built with another classifier: other draws), as in any transfer
    suite = _suite(_grid(f"{{{MLP}, weights: 'pretrain:hx_six'}}", pruners="[hx_rng]",
                         extra="pretrain: {epochs: 1, batch_size: 32}"), tmp_path, registry)
    run = suite.runs[0]
    produced = execute_run(run, registry)
    loaded = execute_run(run, registry)  # same run again: the artifact now exists
    assert produced["status"] == loaded["status"] == "ok"
    assert json.loads(produced["artifacts"])["pretrained"]["produced"] is True
    assert json.loads(produced["pruner_info"])["draw"] == json.loads(loaded["pruner_info"])["draw"]


def test_pretrained_sha256_of_identical_pretraining_is_identical(tmp_path, registry):
    text = _grid(f"{{{MLP}, weights: 'pretrain:hx_source'}}", extra="pretrain: {epochs: 1, batch_size: 32}")
    a = execute_run(_suite(text, tmp_path, registry, tmp_path / "r1").runs[0], registry)
    b = execute_run(_suite(text, tmp_path, registry, tmp_path / "r2").runs[0], registry)
    assert a["status"] == b["status"] == "ok"
    assert a["top1_pretrained"] == b["top1_pretrained"]
    assert a["pretrained_sha256"] == b["pretrained_sha256"]


def test_an_unreadable_weights_file_is_refused_at_validation(tmp_path, registry):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SuiteError, match="empty.pt"):
        _suite(_grid(f"{{{MLP}, weights: 'file:empty.pt'}}"), tmp_path, registry)


def test_a_planted_fifo_artifact_does_not_block_a_transfer(tmp_path, registry):
    import signal

    from bench_harness.contract.artifacts import ArtifactError, ArtifactStore
    from bench_harness.running.plan import PRETRAINED, pretrain_key

    suite = _suite(_grid(f"{{{MLP}, weights: 'pretrain:hx_source'}}", extra="pretrain: {epochs: 1, batch_size: 32}"),
                   tmp_path, registry)
    run = suite.runs[0]
    assert execute_run(run, registry)["status"] == "ok"
    store = ArtifactStore(tmp_path / "results" / "artifacts")
    payload = store.folder(PRETRAINED, pretrain_key(run)) / "artifact.pt"
    payload.unlink()
    os.mkfifo(payload)  # a hostile or broken neighbour on the shared results folder

    def expire(signum, frame):
        raise TimeoutError("blocked on the planted FIFO")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(15)
    try:
        try:
            store.get(PRETRAINED, pretrain_key(run), lambda: {})
        except ArtifactError:
            pass  # refusing it is fine; blocking is not
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_transfer_options_in_the_pretrain_recipe_are_refused(tmp_path, registry):
    with pytest.raises(SuiteError, match="freeze_backbone"):
        _suite(_grid(f"{{{MLP}, weights: 'pretrain:hx_source'}}",
                     extra="pretrain: {epochs: 1, batch_size: 32, freeze_backbone: true}"), tmp_path, registry)


def test_torchvision_default_is_pinned_to_the_weights_it_names(tmp_path, registry):
    import torchvision

    default = torchvision.models.ResNet50_Weights.DEFAULT.name
    ids = set()
    for spelling in ("torchvision:DEFAULT", "torchvision", f"torchvision:{default}",
                     f"torchvision:ResNet50_Weights.{default}"):
        suite = _suite(_grid(f"{{name: 'torchvision:resnet50', weights: '{spelling}'}}"), tmp_path, registry)
        ids.add(suite.runs[0].run_id)
    assert len(ids) == 1, ids


def test_a_timm_weights_argument_is_refused_or_used(tmp_path, registry):
    with pytest.raises(SuiteError, match="timm"):
        _suite(_grid("{name: 'timm:resnet18.a1_in1k', weights: 'timm:nonsense'}"), tmp_path, registry)


# -- what held ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_a_weights_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, registry, kind):
    path = tmp_path / "w.pt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.raises(SuiteError, match="not a regular file"):
        _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}"), tmp_path, registry)


def test_a_pickle_with_code_is_never_executed(tmp_path, registry):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Evil()}, tmp_path / "w.pt")
    suite = _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}"), tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed" and "weights_only=True" in row["error"]
    assert not marker.exists()


def test_a_file_swapped_after_validation_with_size_and_mtime_kept_fails_the_run(tmp_path, registry):
    """cp -p + touch -r between validation and the run: the run's load hashes the bytes it loads."""
    _save_mlp(tmp_path / "w.pt", seed=0)
    suite = _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}"), tmp_path, registry)
    st = os.stat(tmp_path / "w.pt")
    _save_mlp(tmp_path / "x.pt", seed=3)
    shutil.copyfile(tmp_path / "x.pt", tmp_path / "w.pt")
    os.utime(tmp_path / "w.pt", ns=(st.st_atime_ns, st.st_mtime_ns))
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed" and "changed since the suite was validated" in row["error"]


def test_a_weights_file_deleted_mid_suite_fails_its_runs_and_says_where(tmp_path, registry):
    _save_mlp(tmp_path / "w.pt")
    suite = _suite(_grid(f"{{{MLP}, weights: 'file:w.pt'}}", pruners="[dense, magnitude]"), tmp_path, registry)
    assert execute_run(suite.runs[0], registry)["status"] == "ok"
    (tmp_path / "w.pt").unlink()
    row = execute_run(suite.runs[1], registry)
    assert row["status"] == "failed" and "does not exist" in row["error"]


def test_same_name_entries_with_other_weights_or_heads_have_distinct_ids(tmp_path, registry):
    _save_mlp(tmp_path / "a.pt", seed=1)
    _save_mlp(tmp_path / "b.pt", seed=2)
    suite = _suite(_grid(f"{{{MLP}, weights: 'file:a.pt'}}, {{{MLP}, weights: 'file:a.pt', head: reinit}}, "
                         f"{{{MLP}, weights: 'file:b.pt'}}, {{{MLP}, weights: 'file:a.pt', head: auto}}"),
                   tmp_path, registry)
    ids = [r.run_id for r in suite.runs]
    assert len(ids) == 3 and len(set(ids)) == 3  # head: auto is the default: one run, not two
