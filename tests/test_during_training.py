"""The during-training regime: masks that change while a run trains (the contract GMP, SET and RigL are built on).

The pruners are the test plugins of tests/contract_plugins.py: ``swap_during_training`` (a tiny RigL: drop by
magnitude, grow by dense gradient, random tie-breaking) and ``shrink_during_training`` (GMP-like: dense, then the
target at step 3).
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench_harness import masking
from bench_harness.api import make_recipe, prune
from bench_harness.conformance import check_pruner
from bench_harness.contract.plugins import Registry
from bench_harness.errors import RunFailure
from bench_harness.running.mask_updates import MaskSchedule, reset_optimizer_state
from bench_harness.running.runner import execute_run
from bench_harness.running.trainer import Trainer
from tests import contract_plugins
from tests.conftest import suite_from_text
from tests.tiny import batches as _batches
from tests.tiny import mlp as _mlp

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


@pytest.fixture(scope="module")
def registry():
    return Registry(extra_plugins=[("contract", contract_plugins)])


def _initial(model, sparsity=0.8, seed=0):
    prunable = masking.prunable_parameters(model)
    g = torch.Generator().manual_seed(seed)
    return masking.topk_masks({n: torch.rand(p.shape, generator=g) for n, p in prunable.items()}, 1 - sparsity,
                              "layerwise", "exact")


# -- the pieces, by hand ---------------------------------------------------------------------------------------------

def test_the_enforcer_captures_dense_gradients_and_takes_new_masks():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 3.0]]))
    enforcer = masking.MaskEnforcer(lin, {"weight": torch.tensor([[True, False]])})
    assert lin.weight.tolist() == [[2.0, 0.0]]
    enforcer.capture = True
    lin(torch.tensor([[5.0, 7.0]])).sum().backward()
    assert lin.weight.grad.tolist() == [[5.0, 0.0]]  # the pruned entry gets no gradient
    assert enforcer.take_grads()["weight"].tolist() == [[5.0, 7.0]]  # the dense gradient: d(w.x)/dw = x
    assert not enforcer.capture and enforcer.take_grads() == {}
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 3.0]]))
    enforcer.set_masks({"weight": torch.tensor([[False, True]])})
    assert lin.weight.tolist() == [[0.0, 3.0]]
    enforcer.remove()


def test_the_optimizer_state_of_flipped_entries_is_reset():
    w = nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert opt.state[w]["momentum_buffer"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    reset_optimizer_state(opt, w, torch.tensor([[True, False], [False, True]]))
    assert opt.state[w]["momentum_buffer"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    adam_w = nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([adam_w])
    adam_w.grad = torch.ones(3)
    adam.step()
    reset_optimizer_state(adam, adam_w, torch.tensor([False, True, False]))
    assert adam.state[adam_w]["exp_avg"][1] == 0 and adam.state[adam_w]["exp_avg_sq"][1] == 0
    assert adam.state[adam_w]["exp_avg"][0] != 0


def test_a_schedule_round_trips_through_its_checkpoint_state():
    model = _mlp()
    schedule = MaskSchedule(contract_plugins.SwapUpdater(2, 1), _initial(model), torch.Generator().manual_seed(3))
    schedule.updater.updates = 5
    state = schedule.state()
    other = MaskSchedule(contract_plugins.SwapUpdater(2, 1), masking.full_masks(masking.prunable_parameters(model)))
    other.restore(state)
    assert all(torch.equal(other.masks[n], schedule.masks[n]) for n in schedule.masks)
    assert other.updater.updates == 5 and torch.equal(other.generator.get_state(), schedule.generator.get_state())


# -- the training service ----------------------------------------------------------------------------------------

def _fit(checkpoints=None, stop_at_step=None, epochs=3):
    model = _mlp()
    masks = _initial(model)
    updater = contract_plugins.SwapUpdater(every=3, swap=2)

    def after_step(step):
        if step == stop_at_step:
            raise KeyboardInterrupt  # the job is killed here
    trainer = Trainer(_batches(4), make_recipe({"epochs": epochs, "lr": 0.05, "batch_size": 16, "momentum": 0.9}),
                      torch.device("cpu"), checkpoint_dir=checkpoints)
    fit = trainer.fit(model, masks=masks, updater=updater, updater_generator=torch.Generator().manual_seed(7),
                      after_step=after_step)
    return model, updater, fit


def test_masks_change_at_update_steps_and_stay_applied():
    model, updater, fit = _fit()
    steps = [e["step"] for e in fit.mask_updates]
    assert steps == [3, 6, 9, 12]  # 3 epochs x 4 steps, every 3rd
    # at every update the pruned weights were zero (enforced after each step) and the gradient was dense
    assert all(not s["pruned_nonzero"] and s["dense_grad"] for s in updater.seen)
    initial = _initial(_mlp())
    assert any(not torch.equal(fit.masks[n], initial[n]) for n in initial)
    total = sum(m.numel() for m in initial.values())
    for e in fit.mask_updates:  # 2 dropped + 2 grown per layer, unless a dropped entry regrew
        assert e["changed"] <= 4 * len(initial) / total + 1e-12 and e["changed"] > 0
        assert e["density"] == pytest.approx(sum(int(m.sum()) for m in initial.values()) / total)
        assert set(e["layer_density"]) == set(initial)
    params = dict(model.named_parameters())
    assert all(bool((params[n].detach()[~m] == 0).all()) for n, m in fit.masks.items())


def test_a_run_killed_between_updates_resumes_to_the_same_masks_and_weights(tmp_path):
    plain_model, _, plain = _fit()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, stop_at_step=7)  # epoch 2, after the update of step 6, before the one of step 9
    model, updater, fit = _fit(tmp_path)
    assert fit.resumed_from_epoch == 1
    assert [e["step"] for e in fit.mask_updates] == [3, 6, 9, 12]
    assert updater.updates == 4  # 1 restored from the checkpoint + 3 redone
    assert all(torch.equal(fit.masks[n], plain.masks[n]) for n in plain.masks)
    for a, b in zip(plain_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_an_updater_returning_bad_masks_fails_naming_it():
    class Broken(contract_plugins.SwapUpdater):
        def update(self, u):
            return {n: m.float() for n, m in u.masks.items()}

    model = _mlp()
    trainer = Trainer(_batches(2), make_recipe({"epochs": 1, "batch_size": 16}), torch.device("cpu"))
    with pytest.raises(RunFailure, match="Broken returned invalid masks at step 1.*bool"):
        trainer.fit(model, masks=_initial(model), updater=Broken(1, 1))


# -- runs, the API, the conformance kit --------------------------------------------------------------------------

def _suite(text, root, registry):
    return suite_from_text(text, root, registry, "during.yaml")


def _run(tmp_path, registry, pruner="swap_during_training", params="{}", sparsity=0.8):
    suite = _suite(f"""
name: during
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [{sparsity}], pruners: [{{name: {pruner}, params: {params}}}]}}
recipe: {{epochs: 2, batch_size: 32, lr: 0.05}}
""", tmp_path, registry)
    (run,) = suite.runs
    return run


def test_a_suite_run_logs_every_update_and_ends_on_target(tmp_path, registry):
    row = execute_run(_run(tmp_path, registry), registry)
    assert row["status"] == "ok", row.get("error")
    assert row["regime"] == "during_training"
    info = json.loads(row["pruner_info"])
    assert [e["step"] for e in info["mask_updates"]] == [2, 4, 6, 8]  # 128 examples / 32 = 4 steps x 2 epochs
    assert info["updates"] == 4
    assert row["achieved_sparsity"] == pytest.approx(0.8, abs=2e-3) and row["epochs_trained"] == 2


def test_a_gmp_like_run_starts_dense_and_must_end_on_target(tmp_path, registry):
    row = execute_run(_run(tmp_path, registry, "shrink_during_training"), registry)
    assert row["status"] == "ok", row.get("error")
    info = json.loads(row["pruner_info"])
    assert [e["step"] for e in info["mask_updates"]] == [3]
    assert info["mask_updates"][0]["density"] == pytest.approx(0.2, abs=1e-3)
    assert row["top1_before_training"] is not None and row["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    missed = execute_run(_run(tmp_path / "miss", registry, "shrink_during_training", "{miss: true}"), registry)
    assert missed["status"] == "failed"
    assert "ended training with invalid masks" in missed["error"] and "differs from the target" in missed["error"]


def test_a_preempted_suite_run_resumes_with_the_same_masks(tmp_path, registry):
    plain = execute_run(_run(tmp_path / "plain", registry), registry)
    run = _run(tmp_path / "killed", registry)
    calls = {"n": 0}

    def kill_in_epoch_two(phase, epoch, total, loss):
        calls["n"] += 1
        if phase == "train" and epoch == 1:
            raise KeyboardInterrupt  # not a Ctrl-C: recorded as a failed attempt

    first = execute_run(run, registry, on_epoch=kill_in_epoch_two, resume=True)
    assert first["status"] == "failed"
    again = execute_run(run, registry, resume=True)
    assert again["status"] == "ok", again.get("error")
    assert again["resumed_from_epoch"] == 1
    assert json.loads(again["pruner_info"])["mask_updates"] == json.loads(plain["pruner_info"])["mask_updates"]
    assert again["top1"] == plain["top1"] and again["layer_density"] == plain["layer_density"]


def test_during_training_runs_are_not_packed(tmp_path, registry):
    from bench_harness.running.runner import execute_packed

    suite = _suite(f"""
name: packed
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.8], pruners: [swap_during_training], seeds: [0, 1]}}
packing: 2
recipe: {{epochs: 1, batch_size: 32, lr: 0.05}}
""", tmp_path, registry)
    rows = execute_packed(list(suite.runs), registry)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r.get("packed_runs") in (None, 1) for r in rows)
    assert all(len(json.loads(r["pruner_info"])["mask_updates"]) == 2 for r in rows)


def test_the_api_trains_a_during_training_pruner_and_needs_training_data(registry, monkeypatch):
    monkeypatch.setattr("bench_harness.api.get_registry", lambda: registry)
    model = _mlp()
    with pytest.raises(ValueError, match="train_data=.*recipe="):
        prune(model, "swap_during_training", 0.8)
    result = prune(model, "swap_during_training", 0.8, train_data=_batches(4), recipe={"epochs": 1, "lr": 0.05},
                   return_result=True)
    assert [e["step"] for e in result.info["mask_updates"]] == [2, 4]
    assert result.achieved_sparsity == pytest.approx(0.8, abs=2e-3)
    params = dict(model.named_parameters())
    assert all(bool((params[n].detach()[~m] == 0).all()) for n, m in result.masks.items())


@pytest.mark.parametrize("name", ["swap_during_training", "shrink_during_training"])
def test_during_training_pruners_pass_the_conformance_kit(name, registry):
    checks = check_pruner(registry.get("pruner", name), sparsities=(0.5,), models=("mlp",))
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
    assert "resumes after an interruption with the same masks" in {c.name for c in checks}


def test_the_conformance_kit_catches_an_updater_that_does_not_resume(registry):
    class Forgets(contract_plugins.SwapUpdater):
        def state_dict(self):
            return {"updates": 0}

        def update(self, u):  # its choice depends on state it does not checkpoint
            self.updates += 1
            new = super().update(u)
            if self.updates % 3 == 0:
                return {n: m.flip(0) if m.dim() == 2 else m for n, m in new.items()}
            return new

    class Forgetful(contract_plugins.SwapDuringTraining):
        name = "forgetful_during_training"

        def prune(self, model, sparsity, ctx):
            result = super().prune(model, sparsity, ctx)
            result.updater = Forgets(1, 1)
            return result

    failed = {c.name for c in check_pruner(Forgetful, sparsities=(0.5,), models=("mlp",)) if not c.passed}
    assert "resumes after an interruption with the same masks" in failed


def test_an_updater_that_skips_the_step_replaces_the_optimizer_step_at_updates(monkeypatch):
    """skips_step (the RigL reference's cond(update, mask_update, apply_gradients)): at an update step the
    optimizer does not step; the update still sees that step's dense gradients."""
    class Skipping(contract_plugins.SwapUpdater):
        skips_step = True

    calls = []
    original = torch.optim.SGD.step

    def spy(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    model = _mlp()
    updater = Skipping(every=3, swap=2)
    trainer = Trainer(_batches(4), make_recipe({"epochs": 3, "lr": 0.05, "batch_size": 16}), torch.device("cpu"))
    fit = trainer.fit(model, masks=_initial(model), updater=updater)
    assert [e["step"] for e in fit.mask_updates] == [3, 6, 9, 12] and fit.steps == 12
    assert len(calls) == 8  # 12 steps, 4 of them mask updates instead
    assert all(s["dense_grad"] for s in updater.seen)
