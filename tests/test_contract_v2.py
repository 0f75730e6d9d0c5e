"""Pruner contract v2: the training service, training plans (rewinding), pretrained weights per pruner,
per-pruner scoring, sparsity kinds, stage artifacts, the extended Python API, run ids with versions."""
import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

import bench_harness
from bench_harness.api import make_recipe
from bench_harness.conformance import check_pruner
from bench_harness.contract import masking
from bench_harness.contract.artifacts import ArtifactError, ArtifactStore, file_lock
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruner import PruneResult, Regime, training_plan
from bench_harness.contract.pruning import call_pruner, make_context
from bench_harness.errors import RunFailure, SuiteError
from bench_harness.results.leaderboard import build_leaderboard
from bench_harness.running.runner import execute_run
from bench_harness.running.trainer import Trainer
from bench_harness.running.weights import WeightsNotFound, load_pretrained
from tests import contract_plugins
from tests.conftest import suite_from_text
from tests.tiny import batches as _batches
from tests.tiny import mlp as _mlp

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


@pytest.fixture(scope="module")
def registry():
    return Registry(extra_plugins=[("contract", contract_plugins)])


def _suite(text, root, registry):
    return suite_from_text(text, root, registry, "contract.yaml")


# -- the training service -----------------------------------------------------------------------------------

def _lrs_of_fit(recipe, start_epoch, epochs):
    """The lr of every step of a fit, read from the optimizer after each step."""
    model = _mlp()
    seen = []
    trainer = Trainer(_batches(2), make_recipe(recipe), torch.device("cpu"))
    opt_holder = {}
    original = torch.optim.SGD.step

    def spy(self, *a, **k):
        opt_holder["opt"] = self
        seen.append(round(self.param_groups[0]["lr"], 10))
        return original(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        trainer.fit(model, epochs=epochs, start_epoch=start_epoch)
    finally:
        torch.optim.SGD.step = original
    return seen


def test_fit_resumes_the_lr_schedule_at_the_start_epoch():
    recipe = {"epochs": 4, "lr": 0.1, "schedule": "step", "milestones": [2, 3], "gamma": 0.1}
    # 2 steps per epoch; epochs 0-1 at 0.1, epoch 2 at 0.01, epoch 3 at 0.001 (hand-computed)
    assert _lrs_of_fit(recipe, 0, 4) == [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert _lrs_of_fit(recipe, 2, 4) == [0.01, 0.01, 0.001, 0.001]


def test_fit_parameter_groups_loss_override_and_after_step():
    model = _mlp()
    extra = torch.zeros(3, requires_grad=True)
    calls = []
    trainer = Trainer(_batches(2), make_recipe({"epochs": 1, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0,
                                                "schedule": "constant"}), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    # only `extra` is optimized (lr 0.5 as its group's base lr); the loss pulls it towards 1
    result = trainer.fit(model, params=[{"params": [extra], "lr": 0.5}],
                         loss=lambda m, x, y: ((extra - 1.0) ** 2).sum(), after_step=calls.append)
    assert calls == [1, 2] and result.steps == 2 and len(result.losses) == 1
    # two steps of gradient descent on (e - 1)^2 with lr 0.5: e = 0 -> 1 -> 1
    assert torch.allclose(extra.detach(), torch.ones(3))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_fails_clearly_on_a_non_finite_loss():
    trainer = Trainer(_batches(1), make_recipe({"epochs": 1}), torch.device("cpu"))
    with pytest.raises(RunFailure, match="non-finite training loss"):
        trainer.fit(_mlp(), loss=lambda m, x, y: m(x).sum() * float("nan"))


class _Stop(Exception):
    pass


def _two_fits(checkpoints, stop_at=None):
    """A pruner-like computation: two fits with a mask in between."""
    model = _mlp()
    count = {"n": 0}

    def on_epoch(phase, epoch, total, loss):
        count["n"] += 1
        if count["n"] == stop_at:
            raise _Stop()

    trainer = Trainer(_batches(3), make_recipe({"epochs": 3, "lr": 0.05, "batch_size": 16}), torch.device("cpu"),
                      checkpoint_dir=checkpoints, on_epoch=on_epoch)
    trainer.fit(model)
    masks = masking.topk_masks({n: p.detach().abs() for n, p in masking.prunable_parameters(model).items()}, 0.3)
    second = trainer.fit(model, masks=masks)
    return model, trainer, second


def test_interrupted_fits_resume_to_the_same_state(tmp_path):
    plain, _, _ = _two_fits(None)
    with pytest.raises(_Stop):
        _two_fits(tmp_path, stop_at=5)  # in the second fit, after its 2nd epoch
    resumed, trainer, second = _two_fits(tmp_path)
    assert trainer.history[0].restored and second.resumed_from_epoch == 2
    for a, b in zip(plain.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_a_changed_starting_point_is_not_restored(tmp_path):
    _two_fits(tmp_path)
    model = _mlp(seed=1)  # another model: the fingerprint differs, the stored fit is not reused
    trainer = Trainer(_batches(3), make_recipe({"epochs": 3, "lr": 0.05}), torch.device("cpu"),
                      checkpoint_dir=tmp_path)
    assert not trainer.fit(model).restored


# -- training plan and IMP rewinding --------------------------------------------------------------------------

def test_training_plan_defaults_by_regime():
    masks = {}
    assert training_plan(PruneResult(masks), Regime.AT_INIT, 10) == (10, 0)
    assert training_plan(PruneResult(masks), Regime.POST_TRAINING, 10) == (0, 0)
    assert training_plan(PruneResult(masks, train_epochs=3), Regime.POST_TRAINING, 10) == (3, 0)
    assert training_plan(PruneResult(masks, train_epochs=5), Regime.MASK_LEARNING, 10) == (0, 0)  # frozen weights
    assert training_plan(PruneResult(masks, train_from_epoch=2), Regime.ITERATIVE, 10) == (10, 2)
    with pytest.raises(ValueError):
        training_plan(PruneResult(masks, train_from_epoch=12), Regime.ITERATIVE, 10)


def test_imp_rewinding_resumes_the_schedule_at_the_rewind_epoch():
    recipe = make_recipe({"epochs": 3, "lr": 0.1, "schedule": "step", "milestones": [2], "gamma": 0.1,
                          "batch_size": 16})
    model = _mlp()
    trainer = Trainer(_batches(2), recipe, torch.device("cpu"))
    ctx = make_context(model, batches=lambda: iter(_batches(1)), trainer=trainer)
    imp = get_registry().get("pruner", "imp")
    result = call_pruner(imp, imp.make_params({"rewind_epoch": 1}), model, 0.36, ctx)
    fits = trainer.history
    assert [(f.start_epoch, f.epochs) for f in fits] == [(0, 1), (1, 3), (1, 3)]  # rewind point, 2 levels
    assert result.info["level_densities"] == pytest.approx([0.8, 0.64])
    # the ticket trains epochs [1, 3): lr 0.1 in epoch 1, 0.01 in epoch 2 -- not 0.1, 0.1, 0.01 from epoch 0
    assert training_plan(result, imp.regime, recipe.epochs) == (3, 1)
    assert _lrs_of_fit({"epochs": 3, "lr": 0.1, "schedule": "step", "milestones": [2], "gamma": 0.1}, 1, 3) == \
        [0.1, 0.1, 0.01, 0.01]


def test_imp_run_trains_the_ticket_from_the_rewind_epoch(tmp_path, registry):
    suite = _suite(f"""
name: imp_rewind
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [{{name: imp, params: {{rewind_epoch: 1}}}}]}}
recipe: {{epochs: 3, batch_size: 32, lr: 0.05}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["train_from_epoch"] == 1 and row["epochs_trained"] == 2


# -- pretrained weights per pruner ------------------------------------------------------------------------------

def test_pretraining_applies_only_to_pruners_that_need_it(tmp_path, registry):
    suite = _suite(f"""
name: per_pruner
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [magnitude, pt_magnitude]}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.05}}
pretrain: {{epochs: 2, batch_size: 32, lr: 0.05}}
""", tmp_path, registry)
    at_init, post = suite.runs
    assert "pretrain" not in at_init.identity() and "pretrain" in post.identity()
    row_init = execute_run(at_init, registry)
    row_post = execute_run(post, registry)
    assert row_init["status"] == row_post["status"] == "ok", (row_init.get("error"), row_post.get("error"))
    assert row_init.get("pretrained_source") is None and row_init.get("top1_pretrained") is None
    assert row_init["epochs_trained"] == 1
    assert row_post["pretrained_source"] == "pretrain" and len(row_post["pretrained_sha256"]) == 64
    assert row_post["epochs_trained"] == 0  # post-training: no fine-tuning unless the pruner asks for it
    assert row_post["top1_before_training"] == row_post["top1"]
    assert json.loads(row_post["artifacts"])["pretrained"]["produced"] is True
    # a second run of the same model/data/seed reuses the stored pretraining: the same weights, the same digest
    # (of the state dict's tensors, not of the artifact file)
    again = execute_run(post, registry)
    assert json.loads(again["artifacts"])["pretrained"]["produced"] is False
    assert again["pretrained_sha256"] == row_post["pretrained_sha256"]


def test_weights_from_a_file_are_loaded_and_hashed(tmp_path, registry):
    from bench_harness.contract.artifacts import file_sha256
    from bench_harness_plugins.providers.archs.small import MLP

    model = MLP(4, 3, 8, (300, 100))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    path = tmp_path / "mlp.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    suite = _suite(f"""
name: from_file
grid: {{models: [{{name: mlp, weights: "file:{path}"}}], datasets: [{DATA}], sparsities: [0.5],
       pruners: [pt_magnitude]}}
recipe: {{epochs: 1, batch_size: 32}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["pretrained_source"] == f"file:{path}" and row["pretrained_sha256"] == file_sha256(path)
    prunable = sum(p.numel() for p in masking.prunable_parameters(model).values())
    assert json.loads(row["pruner_info"])["weight_abs_sum"] == pytest.approx(0.01 * prunable)


def test_a_post_training_pruner_without_weights_is_refused_at_validation(tmp_path, registry):
    with pytest.raises(SuiteError, match="names no weights"):
        _suite(f"""
name: no_weights
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [pt_magnitude]}}
""", tmp_path, registry)


def test_missing_torchvision_and_timm_weights_name_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    model = nn.Linear(2, 2)
    with pytest.raises(WeightsNotFound, match=str(tmp_path / "torch")):
        load_pretrained(model, "torchvision:resnet18", "torchvision:IMAGENET1K_V1")
    with pytest.raises(WeightsNotFound, match="resnet18.a1_in1k"):
        load_pretrained(model, "timm:resnet18.a1_in1k", "timm")


def test_timm_pretrained_tags_are_model_names():
    spec = get_registry().get("model", "timm")
    from bench_harness.contract.models import build_model

    model = build_model(spec, "timm:resnet18.a1_in1k", 10, 3, 32)
    assert model.fc.out_features == 10


def test_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    url = torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"].url
    place = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(url)
    place.parent.mkdir(parents=True)
    torch.save(source.state_dict(), place)
    target = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    loaded = load_pretrained(target, "torchvision:resnet18", "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert loaded.reinitialised == ["fc.weight", "fc.bias"]  # 1000-class head left at its initialization
    assert torch.equal(target.conv1.weight, source.conv1.weight)


# -- per-pruner scoring, prunable selection, versions ------------------------------------------------------------

def test_a_pruner_entry_overrides_the_scoring_section(tmp_path, registry):
    suite = _suite(f"""
name: scoring
grid:
  models: [mlp]
  datasets: [{DATA}]
  sparsities: [0.5]
  pruners: [snip, {{name: snip, scoring: {{examples: 8, seed: 7}}}}]
scoring: {{batch_size: 4}}
""", tmp_path, registry)
    plain, custom = suite.runs
    assert plain.scoring.examples is None and plain.scoring.batch_size == 4
    assert custom.scoring.examples == 8 and custom.scoring.seed == 7 and custom.scoring.batch_size == 4
    assert plain.run_id != custom.run_id
    with pytest.raises(SuiteError, match="scoring"):
        _suite(f"""
name: bad
grid: {{models: [mlp], datasets: [{DATA}], pruners: [{{name: snip, scoring: {{exampels: 3}}}}]}}
""", tmp_path, registry)


def test_prunable_include_and_exclude_regexes(tmp_path, registry):
    suite = _suite(f"""
name: include
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [magnitude]}}
recipe: {{epochs: 0}}
prunable: {{include: "net\\\\..*", exclude: ".*\\\\.5\\\\.weight"}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert list(json.loads(row["layer_density"])) == ["net.1.weight", "net.3.weight"]


def test_the_run_id_carries_the_pruner_version(tmp_path, registry):
    suite = _suite(f"""
name: versions
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [magnitude, v2_magnitude]}}
""", tmp_path, registry)
    v1, v2 = suite.runs
    assert "pruner_version" not in v1.identity()  # version "1" leaves existing run ids unchanged
    assert v2.identity()["pruner_version"] == "2"
    assert replace(v2, pruner_version="3").run_id != v2.run_id


def test_tied_weights_get_one_mask():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    masks = bench_harness.prune(model, "magnitude", 0.5)
    assert list(masks) == ["0.weight"]


# -- sparsity kinds ---------------------------------------------------------------------------------------------

def test_learned_sparsity_is_accepted_and_binned(tmp_path, registry):
    suite = _suite(f"""
name: learned
grid:
  models: [mlp]
  datasets: [{DATA}]
  sparsities: [0.5]
  pruners: [magnitude, {{name: learned_threshold, params: {{threshold: 0.03}}}}]
recipe: {{epochs: 3, batch_size: 32, lr: 0.05}}
""", tmp_path, registry)
    rows = [execute_run(run, registry) for run in suite.runs]
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    learned = rows[1]
    assert learned["sparsity_kind"] == "learned" and learned["train_from_epoch"] == 2
    assert learned["epochs_trained"] == 1
    assert learned["sparsity_bin"] == masking.sparsity_bin(0.5, learned["achieved_sparsity"], "learned")
    import pandas as pd

    board = build_leaderboard(pd.DataFrame(rows), ["learned"])
    cell = board.set_index("method").sparsity_bin
    assert cell["learned_threshold(threshold=0.03)"] == pytest.approx(learned["sparsity_bin"])
    assert not board.set_index("method").flag_off_target["learned_threshold(threshold=0.03)"]


def test_sparsity_bins_by_hand():
    assert masking.sparsity_bin(0.9, 0.5, "exact") == 0.9
    assert masking.sparsity_bin(0.9, 0.91, "learned") == 0.9  # density 0.09 within 1.25x of 0.1
    assert masking.sparsity_bin(0.9, 0.95, "learned") == pytest.approx(0.95)  # density 0.05: its own bin
    assert masking.sparsity_bin(0.9, 0.9567, "learned") == pytest.approx(1 - 0.043)


def test_a_pruner_writing_nan_fails_naming_the_layer(tmp_path, registry):
    suite = _suite(f"""
name: nan
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [writes_nan]}}
recipe: {{epochs: 1}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed"
    assert "writes_nan" in row["error"] and "net.5.weight" in row["error"] and "non-finite" in row["error"]


# -- mask learning --------------------------------------------------------------------------------------------

def test_score_training_leaves_the_weights_bit_identical(tmp_path, registry):
    suite = _suite(f"""
name: popup
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [score_popup]}}
recipe: {{epochs: 2, batch_size: 32, lr: 0.1}}
""", tmp_path, registry)
    run = suite.runs[0]
    row = execute_run(run, registry)
    assert row["status"] == "ok", row.get("error")
    assert row["epochs_trained"] == 0 and row["top1"] == row["top1_before_training"]
    assert row["regime"] == "mask_learning"


# -- stage artifacts --------------------------------------------------------------------------------------------

def test_artifact_store_produces_once_and_verifies(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def produce():
        calls.append(1)
        return {"w": torch.arange(4.0), "meta": {"n": 4}}

    first = store.get("teacher", {"a": 1}, produce)
    again = ArtifactStore(tmp_path).get("teacher", {"a": 1}, produce)
    assert calls == [1] and torch.equal(first["w"], again["w"]) and again["meta"] == {"n": 4}
    other = store.get("teacher", {"a": 2}, produce)
    assert calls == [1, 1] and torch.equal(other["w"], first["w"])
    folder = store.folder("teacher", {"a": 1})
    with open(folder / "artifact.pt", "r+b") as fh:  # damage it
        fh.seek(-3, 2)
        fh.write(b"xyz")
    from bench_harness.contract.artifacts import ArtifactWarning, list_artifacts

    state = {a["key"]: a["ok"] for a in list_artifacts(tmp_path)}
    assert state[folder.name] is False and sum(state.values()) == 1  # bench artifacts reports it
    with pytest.warns(ArtifactWarning, match="damaged"):
        rebuilt = ArtifactStore(tmp_path).get("teacher", {"a": 1}, produce)
    assert calls == [1, 1, 1] and torch.equal(rebuilt["w"], first["w"])
    assert all(a["ok"] for a in list_artifacts(tmp_path))
    with pytest.raises(ArtifactError, match="weights_only"):
        store.get("bad", {}, lambda: {"obj": object()})


def _hold_lock_and_die(path, ready):
    with file_lock(path):
        ready.set()
        time.sleep(60)


@pytest.mark.integration
def test_a_crashed_lock_holder_releases_the_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock_and_die, args=(tmp_path / "x.lock", ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    t0 = time.monotonic()
    with file_lock(tmp_path / "x.lock", timeout_s=10):
        pass
    assert time.monotonic() - t0 < 5


def _produce_in_process(root, out):
    store = ArtifactStore(root)

    def produce():
        time.sleep(1.0)
        with open(out, "a") as fh:
            fh.write("produced\n")
        return {"x": torch.ones(2)}

    store.get("shared", {"k": 1}, produce)


@pytest.mark.integration
def test_concurrent_processes_produce_an_artifact_once(tmp_path):
    ctx = mp.get_context("spawn")
    out = tmp_path / "log.txt"
    procs = [ctx.Process(target=_produce_in_process, args=(tmp_path / "store", out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert out.read_text().count("produced") == 1


def test_stage_artifacts_are_shared_across_runs_and_suites(tmp_path, registry):
    text = f"""
name: NAME
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5, 0.8], pruners: [teacher_scores]}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.05}}
"""
    first = _suite(text.replace("NAME", "stage_a"), tmp_path, registry)
    second = _suite(text.replace("NAME", "stage_b"), tmp_path, registry)
    rows = [execute_run(r, registry) for r in first.runs + second.runs]
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    records = [json.loads(r["artifacts"])["test-teacher"] for r in rows]
    assert [r["produced"] for r in records] == [True, False, False, False]
    assert len({r["sha256"] for r in records}) == 1
    from bench_harness import paths
    from bench_harness.running.plan import artifact_plan, missing

    plan = artifact_plan(first.runs[0], registry)
    assert [(a.kind, a.name, a.key) for a in plan] == [("stage", "test-teacher", records[0]["key"])]
    assert missing(plan) == []
    files = paths.run_artifacts_dir(tmp_path, "stage_a", first.runs[0].run_id)
    assert (files / "used-teacher.txt").read_text() == records[0]["key"]


# -- the Python API ---------------------------------------------------------------------------------------------

def test_prune_api_with_prunable_training_and_result():
    model = _mlp()
    result = bench_harness.prune(model, "imp", 0.5, data=_batches(1), prunable=r"1\.weight",
                                 train_data=_batches(2), recipe={"epochs": 1, "lr": 0.05}, return_result=True)
    assert isinstance(result, PruneResult) and list(result.masks) == ["1.weight"]
    assert result.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
    assert result.info["levels"] == 4
    masks = bench_harness.prune(_mlp(), "magnitude", 0.5, prunable=["3.weight", "3.bias"])
    assert list(masks) == ["3.weight", "3.bias"]
    with pytest.raises(ValueError, match="not parameters"):
        bench_harness.prune(_mlp(), "magnitude", 0.5, prunable=["fc.weight"])
    with pytest.raises(ValueError, match="training service"):
        bench_harness.prune(_mlp(), "imp", 0.5, data=_batches(1))
    with pytest.raises(ValueError, match="recipe.epoch: unknown setting. Did you mean 'epochs'"):
        bench_harness.prune(_mlp(), "imp", 0.5, data=_batches(1), train_data=_batches(1), recipe={"epoch": 1})


def test_prune_api_runs_a_stage_pruner_in_memory_and_on_disk(tmp_path):
    registry = Registry(extra_plugins=[("contract", contract_plugins)])
    cls = registry.get("pruner", "teacher_scores")
    kw = dict(data=_batches(1), train_data=_batches(2), recipe={"epochs": 1})
    in_memory = bench_harness.prune(_mlp(), cls, 0.5, **kw)
    on_disk = bench_harness.prune(_mlp(), cls, 0.5, artifacts=str(tmp_path), **kw)
    assert all(torch.equal(in_memory[n], on_disk[n]) for n in in_memory)
    assert list(tmp_path.glob("test-teacher/*/manifest.json"))


# -- the conformance kit on the new paths ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["imp", "learned_threshold", "teacher_scores", "score_popup", "pt_magnitude"])
def test_contract_v2_pruners_pass_the_conformance_kit(name, registry):
    cls = registry.get("pruner", name)
    checks = check_pruner(cls, sparsities=(0.5,), models=("mlp", "conv_bn") if name != "imp" else ("mlp",))
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
    names = {c.name for c in checks}
    if name in ("imp", "learned_threshold", "score_popup"):
        assert "resumes after an interruption with the same masks" in names
    if name == "teacher_scores":
        assert "stage artifacts produced once, then reused" in names
    if name == "learned_threshold":
        assert "learned sparsity in [0, 1)" in names


def test_the_conformance_kit_catches_a_pruner_that_does_not_resume(registry):
    from bench_harness.contract.pruner import Pruner

    class Forgetful(Pruner):
        name = "forgetful"
        requires = contract_plugins.Requirements(data=True)
        runs = [0]

        def prune(self, model, sparsity, ctx):
            Forgetful.runs[0] += 1
            ctx.trainer.fit(model, epochs=1)
            ctx.trainer.fit(model, epochs=1)
            # scores that depend on how often prune() was called in this process: not resumable
            scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(Forgetful.runs[0]))
                      for n, p in ctx.prunable.items()}
            return masking.topk_masks(scores, 1.0 - sparsity)

    failed = {c.name for c in check_pruner(Forgetful, sparsities=(0.5,), models=("mlp",)) if not c.passed}
    assert "resumes after an interruption with the same masks" in failed
    assert "deterministic under a fixed seed" in failed


# -- sparsity basis, storage bits, frozen weights in mask learning ------------------------------------------------

def test_sparsity_counted_over_all_parameters(tmp_path, registry):
    suite = _suite(f"""
name: basis
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [all_params_magnitude]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["achieved_sparsity_all"] == pytest.approx(0.5, abs=1e-3)
    assert row["achieved_sparsity"] > 0.5  # the biases are not pruned, so the prunable set gives more


def test_model_bits_default_format_and_a_pruners_own(tmp_path, registry):
    suite = _suite(f"""
name: bits
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [dense, magnitude, bits_of_its_own]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    dense, magnitude, own = (execute_run(r, registry) for r in suite.runs)
    assert dense["model_bits"] == 32 * dense["params_total"] and dense["compression_ratio"] == 1.0
    assert magnitude["model_bits"] == 32 * magnitude["params_nonzero"] + magnitude["params_prunable"]
    assert own["model_bits"] == own["params_prunable"] + 128
    assert own["compression_ratio"] == pytest.approx(32 * own["params_total"] / own["model_bits"])


def test_mask_learning_that_moves_the_weights_fails(tmp_path, registry):
    suite = _suite(f"""
name: sneaky
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [sneaky_mask_learning]}}
recipe: {{epochs: 1, batch_size: 64}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed" and "must leave frozen" in row["error"]


def test_bench_artifacts_lists_users_and_verifies_checksums(tmp_path, registry, monkeypatch, capsys):
    from bench_harness import cli
    from bench_harness.contract import plugins

    monkeypatch.setattr(plugins, "_REGISTRY", registry)
    suite_file = tmp_path / "stage_cli.yaml"
    suite_file.write_text(f"""
name: stage_cli
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5, 0.8], pruners: [teacher_scores, magnitude]}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.05}}
results_root: {tmp_path / "results"}
""")
    assert cli.main(["artifacts", str(suite_file)]) == 0
    assert "missing" in capsys.readouterr().out
    suite = _suite(suite_file.read_text(), tmp_path / "results", registry)
    for run in suite.runs:
        assert execute_run(run, registry)["status"] == "ok"
    assert cli.main(["artifacts", str(suite_file)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("test-teacher"))
    assert " ok " in line and " 2/2 " in line
    payload = next((tmp_path / "results" / "artifacts" / "test-teacher").glob("*/artifact.pt"))
    payload.write_bytes(payload.read_bytes()[:-10])  # truncated
    assert cli.main(["artifacts", str(suite_file)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
