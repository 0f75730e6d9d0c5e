"""Hostile tests of the during-training regime: forged or damaged checkpoints of a during-training run, mask
updaters that misbehave, and kills at every epoch. A bad checkpoint is discarded (CheckpointDiscarded, in the row's
warnings) and its training redone: the row equals an undisturbed run's. A bad updater gives a failure row that
names it and the fix, and the sweep goes on.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml

from bench_harness import MaskUpdater, hookimpl, masking
from bench_harness.api import make_recipe
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract.plugins import Registry
from bench_harness.contract.pruner import Pruner, PruneResult, Regime
from bench_harness.errors import RunFailure
from bench_harness.running import checkpoint
from bench_harness.running.mask_updates import MaskSchedule
from bench_harness.running.runner import execute_run
from bench_harness.running.trainer import Trainer
from tests import contract_plugins
from tests.conftest import suite_from_text
from tests.test_during_training import DATA, _batches, _initial, _mlp

COMPARED = ("status", "top1", "top5", "loss", "achieved_sparsity", "layer_density", "pruner_info", "epochs_trained")


# -- misbehaving updaters, as a plugin would ship them ---------------------------------------------------------------

class _Every2(MaskUpdater):
    """Keeps the masks, every second step; the misbehaviours below override one method each."""

    def is_update_step(self, step, total_steps, steps_per_epoch):
        return step % 2 == 0

    def update(self, u):
        return {n: m.clone() for n, m in u.masks.items()}


def _nan_weights(self, u):
    with torch.no_grad():
        for n, p in u.prunable.items():
            p[~u.masks[n]] = float("nan")  # only pruned entries: the mask multiplies NaN by 0 = NaN
    return None


def _raises(self, *args):
    raise ZeroDivisionError("plugin bug")


MISBEHAVIOURS = {
    # name: (method overrides, what the failure row's error must say)
    "meta_masks": ({"update": lambda self, u: {n: m.to("meta") for n, m in u.masks.items()}},
                   "returned invalid masks at step 2.*meta device"),
    "uint8_masks": ({"update": lambda self, u: {n: m.to(torch.uint8) for n, m in u.masks.items()}},
                    "returned invalid masks at step 2.*uint8"),
    "list_masks": ({"update": lambda self, u: list(u.masks.values())}, "returned invalid masks.*got list"),
    "extra_names": ({"update": lambda self, u: {**u.masks, "ghost": torch.ones(1, dtype=torch.bool)}},
                    r"unknown \['ghost'\]"),
    "all_pruned": ({"update": lambda self, u: {n: torch.zeros_like(m) for n, m in u.masks.items()}},
                   "pruned every prunable weight at step 2"),
    "nan_weights": ({"update": _nan_weights}, r"left non-finite weights \(NaN or inf\).*at step 2"),
    "update_raises": ({"update": _raises}, r"update\(\) raised ZeroDivisionError: plugin bug"),
    "is_update_step_raises": ({"is_update_step": _raises}, r"is_update_step\(\) raised ZeroDivisionError"),
    "is_update_step_tensor": ({"is_update_step": lambda self, *a: torch.tensor([True, False])},
                              "is_update_step returned Tensor at step 1: it must return a bool"),
    "state_lambda": ({"state_dict": lambda self: {"f": lambda: 1}},
                     r"state_dict\(\) cannot be checkpointed.*function"),
    "state_numpy": ({"state_dict": lambda self: {"a": np.zeros(3)}},
                    r"state_dict\(\) cannot be checkpointed.*numpy.ndarray.*torch.as_tensor"),
    "state_list": ({"state_dict": lambda self: [1, 2]}, r"state_dict\(\) returned list: it must return a dict"),
    "info_lambda": ({"info": lambda self: {"f": lambda: 1}}, r"info\(\) is not JSON.*function"),
    "info_list": ({"info": lambda self: [1, 2]}, r"info\(\) is not JSON.*list, not a dict"),
    "info_raises": ({"info": _raises}, r"info\(\) raised ZeroDivisionError"),
}


def _updater_class(mode):
    methods, _ = MISBEHAVIOURS[mode]
    return type(f"Updater_{mode}", (_Every2,), dict(methods))


def _pruner_class(mode):
    updater_cls = _updater_class(mode)

    def prune(self, model, sparsity, ctx):
        scores = {n: torch.rand(p.shape, generator=ctx.generator) for n, p in ctx.prunable.items()}
        return PruneResult(masking.topk_masks(scores, 1.0 - sparsity, "layerwise", "exact"), updater=updater_cls())

    return type(f"Pruner_{mode}", (Pruner,), {"name": f"bad_{mode}", "regime": Regime.DURING_TRAINING,
                                              "prune": prune})


class RollbackUpdater(contract_plugins.SwapUpdater):
    """Its load_state_dict takes one field, then fails on a missing one: the core must give it its own state back."""

    def state_dict(self):
        return {"updates": self.updates, "check": 1}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        assert state["check"] == 1


class RollbackPruner(contract_plugins.SwapDuringTraining):
    name = "rollback_during_training"

    def prune(self, model, sparsity, ctx):
        result = super().prune(model, sparsity, ctx)
        result.updater = RollbackUpdater(self.params.every, self.params.swap)
        return result


PRUNERS = [_pruner_class(mode) for mode in MISBEHAVIOURS] + [RollbackPruner]


@hookimpl
def bench_register_pruners():
    return PRUNERS


@pytest.fixture(scope="module")
def registry():
    return Registry(extra_plugins=[("contract", contract_plugins), ("hostile", sys.modules[__name__])])


def _suite(tmp_path, registry, pruners, epochs=2, name="hostile"):
    text = f"""
name: {name}
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.8], pruners: {pruners}}}
recipe: {{epochs: {epochs}, batch_size: 32, lr: 0.05}}
"""
    return suite_from_text(text, tmp_path, registry, f"{name}.yaml")


def _run(tmp_path, registry, pruner="swap_during_training", epochs=2):
    (run,) = _suite(tmp_path, registry, f"[{pruner}]", epochs).runs
    return run


def _warnings(row):
    return json.loads(row["warnings"]) if row["warnings"] else []


def _same_row(row, plain):
    for key in COMPARED:
        assert row[key] == plain[key], key


@pytest.fixture(scope="module")
def plain(registry, tmp_path_factory):
    """Undisturbed rows, by (pruner, epochs)."""
    root = tmp_path_factory.mktemp("plain")
    return {(p, e): execute_run(_run(root / f"{p}{e}", registry, p, e), registry)
            for p, e in [("swap_during_training", 2), ("swap_during_training", 3), ("rollback_during_training", 2)]}


def _killed_at(run, registry, epoch):
    """The run, checkpointed, killed at the end of training epoch ``epoch`` (a failed attempt: checkpoints stay)."""
    def kill(phase, e, total, loss):
        if phase == "train" and e == epoch:
            raise KeyboardInterrupt

    assert execute_run(run, registry, on_epoch=kill, resume=True)["status"] == "failed"
    path = checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id)
    assert path.exists()
    return path


# -- forged and damaged during-training checkpoints ------------------------------------------------------------------

def _set(*keys, value=None, drop=False, change=None):
    def forge(payload):
        target = payload
        for k in keys[:-1]:
            target = target[k]
        if drop:
            del target[keys[-1]]
        else:
            target[keys[-1]] = change(target[keys[-1]]) if change else value
    return forge


def _last_entry_densities_off(payload):
    log = payload["during"]["log"]
    log[-1] = {**log[-1], "density": 0.5}


FORGERIES = {
    "masks float": (_set("during", "masks", change=lambda m: {n: t.float() for n, t in m.items()}), "bool tensor"),
    "masks flattened": (_set("during", "masks", change=lambda m: {n: t.flatten() for n, t in m.items()}),
                        "do not fit the run"),
    "masks renamed": (_set("during", "masks", change=lambda m: {n + ".x": t for n, t in m.items()}), "names differ"),
    "masks missing": (_set("during", "masks", drop=True), "lacks"),
    "masks all pruned": (_set("during", "masks", change=lambda m: {n: torch.zeros_like(t) for n, t in m.items()}),
                         "keep no weight"),
    "generator garbage": (_set("during", "generator", value=torch.zeros(3, dtype=torch.uint8)), "generator state"),
    "generator a string": (_set("during", "generator", value="x"), "generator state"),
    "updater state a string": (_set("during", "updater", value="x"), "not a dict"),
    "updater state of wrong types": (_set("during", "updater", value={"updates": "many"}), "refused its state"),
    "updater state missing": (_set("during", "updater", drop=True), "lacks"),
    "log a dict": (_set("during", "log", value={"step": 2}), "not a list"),
    "log of ints": (_set("during", "log", value=[1, 2]), "entry"),
    "log of junk entries": (_set("during", "log", value=[{"step": "x"}]), "entry"),
    "log after the epoch": (_set("during", "log", change=lambda log: [{**e, "step": e["step"] + 100} for e in log]),
                            "malformed entry"),
    "log not describing the masks": (_last_entry_densities_off, "densities of its masks"),
    "log emptied, masks kept": (_set("during", "log", value=[]), "differ from the initial ones"),
    "during a list": (_set("during", value=[1]), "no mask-update state"),
    "model state flattened": (_set("model", change=lambda s: {k: v.flatten() for k, v in s.items()}), "model state"),
    "torch rng garbage": (_set("rng", "torch", value=torch.zeros(3, dtype=torch.uint8)), "RNG state"),
    "optimizer momentum of another shape": (
        _set("optimizer", "state", change=lambda st: {i: {k: v.flatten()[:3] if isinstance(v, torch.Tensor) else v
                                                          for k, v in s.items()} for i, s in st.items()}),
        "optimizer state"),
    "optimizer momentum changed": (
        _set("optimizer", "param_groups", change=lambda gs: [{**g, "momentum": 0.5} for g in gs]), "hyperparameters"),
    "epoch past the end": (_set("epoch", value=99), "epoch 99"),
    "epoch negative": (_set("epoch", value=-3), "epoch -3"),
    "done a string": (_set("done", value="yes"), "done flag"),
    "losses a string": (_set("losses", value="ab"), "losses"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_during_training_checkpoint_is_discarded_and_its_training_redone(tmp_path, registry, plain,
                                                                                  forgery):
    """A well-formed checkpoint (right checksum and owner, written with checkpoint.save) whose content is wrong:
    before, every one of these crashed the resumed run (KeyError, RuntimeError...) or resumed with wrong state
    (epoch 99: no training; done "yes": restored as finished; a junk log in the row); now each is discarded."""
    forge, why = FORGERIES[forgery]
    run = _run(tmp_path, registry)
    path = _killed_at(run, registry, 1)
    owner = checkpoint.run_owner(run.suite, run.run_id)
    payload = checkpoint.load(path, owner)
    forge(payload)
    checkpoint.save(path, payload, owner)

    row = execute_run(run, registry, resume=True)

    _same_row(row, plain["swap_during_training", 2])
    hits = [w for w in _warnings(row) if w.startswith("CheckpointDiscarded") and "train.pt" in w and why in w]
    assert hits, _warnings(row)


def test_an_updater_that_refuses_a_forged_state_gets_its_own_state_back(tmp_path, registry, plain):
    """Its load_state_dict took the forged 'updates' before failing: without the rollback the redone training
    would count from 99."""
    run = _run(tmp_path, registry, "rollback_during_training")
    path = _killed_at(run, registry, 1)
    owner = checkpoint.run_owner(run.suite, run.run_id)
    payload = checkpoint.load(path, owner)
    payload["during"]["updater"] = {"updates": 99}
    checkpoint.save(path, payload, owner)

    row = execute_run(run, registry, resume=True)

    _same_row(row, plain["rollback_during_training", 2])
    assert json.loads(row["pruner_info"])["updates"] == 4
    assert any("refused its state" in w for w in _warnings(row))


def test_a_checkpoint_that_fails_the_restore_changes_nothing_of_the_schedule():
    model = _mlp()
    schedule = MaskSchedule(RollbackUpdater(2, 1), _initial(model), torch.Generator().manual_seed(3))
    before = schedule.generator.get_state()
    good = MaskSchedule(RollbackUpdater(2, 1), _initial(model, seed=1)).state()
    for bad in ({**good, "updater": {"updates": 7}}, {**good, "log": "x"}, {**good, "generator": torch.zeros(2)}):
        assert schedule.restore(bad) is not None
        assert schedule.updater.updates == 0 and schedule.log == []
        assert torch.equal(schedule.generator.get_state(), before)
        assert all(torch.equal(schedule.masks[n], m) for n, m in _initial(model).items())


# -- killed at every epoch -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_a_run_killed_at_any_epoch_resumes_to_the_uninterrupted_row(tmp_path, registry, plain, epoch):
    """Killed after epoch 3 of 3 too: the checkpoint is complete but not marked done; the resumed attempt trains
    nothing more and the row is the same."""
    run = _run(tmp_path, registry, epochs=3)
    _killed_at(run, registry, epoch)
    row = execute_run(run, registry, resume=True)
    _same_row(row, plain["swap_during_training", 3])
    assert row["resumed_from_epoch"] == epoch
    assert not [w for w in _warnings(row) if "CheckpointDiscarded" in w]


def test_a_resumed_fit_reports_the_loss_of_every_epoch(tmp_path):
    """The epoch checkpoint was written before the epoch's loss was recorded: a fit resumed after epoch k lost the
    loss of epoch k (FitResult.losses one short; AutoSparse stores them in its row)."""
    def fit(checkpoints=None, kill_at=None):
        def on_epoch(phase, epoch, total, loss):
            if epoch == kill_at:
                raise KeyboardInterrupt

        model = _mlp()
        trainer = Trainer(_batches(4), make_recipe({"epochs": 3, "lr": 0.05, "batch_size": 16}), torch.device("cpu"),
                          checkpoint_dir=checkpoints, on_epoch=on_epoch)
        return trainer.fit(model, masks=_initial(model), updater=contract_plugins.SwapUpdater(3, 2),
                           updater_generator=torch.Generator().manual_seed(7))

    uninterrupted = fit()
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, kill_at=2)
    resumed = fit(tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert resumed.losses == uninterrupted.losses and len(resumed.losses) == 3
    assert resumed.mask_updates == uninterrupted.mask_updates


# -- misbehaving updaters --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("mode", list(MISBEHAVIOURS))
def test_a_misbehaving_updater_fails_its_run_naming_it(tmp_path, registry, mode, resume):
    """Before: a meta mask crashed with 'Cannot copy out of meta tensor'; all-pruned masks trained a dead network
    to the end; NaN weights were blamed on the learning rate; a raising method gave its bare exception; a
    state_dict of a lambda or an array passed locally and failed only on a checkpointed (cluster) run, and a list
    passed everywhere; info() of a list failed with 'cannot convert dictionary update sequence'; a lambda in
    info() was stored as its repr (a memory address)."""
    row = execute_run(_run(tmp_path, registry, f"bad_{mode}"), registry, resume=resume)
    assert row["status"] == "failed"
    assert f"Updater_{mode}" in row["error"], row["error"]
    assert __import__("re").search(MISBEHAVIOURS[mode][1], row["error"]), row["error"]


def test_a_sweep_goes_on_past_a_misbehaving_updater(tmp_path, registry, monkeypatch):
    from bench_harness.running.executor import run_local

    monkeypatch.setattr("bench_harness.running.runner.get_registry", lambda: registry)
    suite = _suite(tmp_path, registry, "[bad_update_raises, bad_state_numpy, swap_during_training]", name="sweep")
    report = run_local(suite, progress=False)
    assert len(report.ok) == 1 and len(report.failed) == 2
    assert all("Updater_" in error for _, error in report.failed)


def test_an_updater_cannot_change_the_masks_behind_the_runs_back():
    """It returns masks it keeps and edits them in place later: the run's masks are copies, so the edit is not
    enforced without a logged update."""
    class Keeps(_Every2):
        def update(self, u):
            if u.step == 2:
                self.kept = {n: m.clone() for n, m in u.masks.items()}
                return self.kept
            for m in self.kept.values():
                m.fill_(True)  # a silent change: no new masks returned
            return None

    model = _mlp()
    initial = _initial(model)
    trainer = Trainer(_batches(4), make_recipe({"epochs": 1, "batch_size": 16}), torch.device("cpu"))
    fit = trainer.fit(model, masks=initial, updater=Keeps())
    assert all(torch.equal(fit.masks[n], initial[n]) for n in initial)
    params = dict(model.named_parameters())
    assert all(bool((params[n].detach()[~m] == 0).all()) for n, m in initial.items())


def test_weights_made_non_finite_by_training_are_not_blamed_on_the_updater():
    """The NaN check of an update blames the updater only for weights that were finite before it (else the
    optimizer step made them so, and the training loss check reports it)."""
    def step_with(updater_cls, broken):
        model = _mlp()
        if broken:
            with torch.no_grad():
                model[1].weight[0, 0] = float("nan")
        masks = _initial(model)
        enforcer = masking.MaskEnforcer(model, masks)
        schedule = MaskSchedule(updater_cls(), masks)
        try:
            schedule.step(2, 8, 4, model, torch.optim.SGD(model.parameters(), lr=0.1), enforcer)
        finally:
            enforcer.remove()
        return schedule

    assert len(step_with(_Every2, broken=True).log) == 1
    nan_writer = type("NaNWriter", (_Every2,), {"update": _nan_weights})
    with pytest.raises(RunFailure, match="NaNWriter left non-finite weights"):
        step_with(nan_writer, broken=False)
    assert len(step_with(nan_writer, broken=True).log) == 1  # broken before it: not its fault


# -- the new pruners' parameters, refused by `bench validate` (from the registry cache) ------------------------------

BAD_PARAMS = [
    # before: each was accepted by validation and failed (or misbehaved) only in the run
    ("rigl", "{erk_power_scale: .nan}", "erk_power_scale"),
    ("rigl", "{erk_power_scale: 1.0e300}", "erk_power_scale"),  # a ZeroDivisionError in the allocation
    ("static_sparse", "{erk_power_scale: .inf}", "erk_power_scale"),
    ("gmp", "{allocation: erk, erk_power_scale: -1.0e9}", "erk_power_scale"),
    ("snip", "{allocation: erk, erk_power_scale: .nan}", "erk_power_scale"),
    ("lamp", "{allocation: erk, erk_power_scale: 1.0e300}", "erk_power_scale"),
    ("ntksap", "{rounds: 0}", "rounds"),
    ("ntksap", "{samples: 0}", "samples"),
    ("ntksap", "{epsilon: -1.0}", "epsilon"),
    ("ntksap", "{epsilon: .nan}", "epsilon"),
    ("ntksap", "{epsilon: .inf}", "epsilon"),
    ("ntksap", "{batch_size: -3}", "batch_size"),
    ("ntksap_data", "{batches: -1}", "batches"),
]


@pytest.mark.parametrize("pruner,params,key", BAD_PARAMS)
def test_bad_parameters_of_the_new_pruners_are_refused_at_validation(tmp_path, pruner, params, key):
    from bench_harness.contract.plugins import get_registry
    from bench_harness.errors import SuiteError

    text = f"""
name: v
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [{{name: {pruner}, params: {params}}}]}}
recipe: {{epochs: 1, batch_size: 32}}
pretrain: {{epochs: 1}}
"""
    with pytest.raises(SuiteError, match=f"{pruner}.*{key}"):
        validate_suite(parse_suite(yaml.safe_load(text), "v.yaml"), get_registry())


def test_the_allocation_refuses_a_power_that_under_or_overflows():
    from bench_harness.contract.allocation import layer_densities

    shapes = {"a": (10, 10), "b": (100, 100), "c": (1,)}
    with pytest.raises(ValueError, match=r"erk_power_scale must be a number in \[0, 10\]"):
        layer_densities(shapes, 0.5, "erk", erk_power_scale=1e300)  # was ZeroDivisionError: float division by zero
    with pytest.raises(ValueError, match=r"erk_power_scale must be a number in \[0, 10\]"):
        layer_densities(shapes, 0.5, "erk", erk_power_scale=-50.0)  # the largest layers densest: layers of no weight
    assert sum(layer_densities(shapes, 0.5, "erk", erk_power_scale=10.0).values()) > 0


# -- the results reader: planted files, `bench run`'s done set, `bench results` and `bench verify` agree -------------

def test_planted_result_files_are_damaged_for_every_reader_and_for_verify(tmp_path):
    """Before: `bench verify` (store.shard_health, read_part without the suite) counted as 'ok' a run file with a
    private column, one with a column of the wrong type, one holding another suite's row, and the runs of a part of
    another suite, all of which the readers leave out (and `bench run` runs again); a part row without a status
    was counted as 'None (compacted)'."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_harness import paths
    from bench_harness.results import dataset, store

    suite = "s"
    runs = paths.runs_dir(tmp_path, suite)

    def shard(run_id):
        return pq.read_table(store.write_shard({"run_id": run_id, "suite": suite, "status": "ok", "top1": 0.5},
                                               tmp_path, suite))

    def replaced(table, column, values):
        return table.set_column(table.column_names.index(column), column, values)

    for run_id in ("a", "b"):
        shard(run_id)
    pq.write_table(shard("c").append_column("_x", pa.array([1])), runs / "c.parquet")
    pq.write_table(replaced(shard("d"), "top1", pa.array(["abc"])), runs / "d.parquet")
    pq.write_table(replaced(shard("e"), "suite", pa.array(["other"])), runs / "e.parquet")  # same schema as a, b
    row = shard("k")
    os.remove(runs / "k.parquet")
    for run_id, table in [("n", replaced(row, "suite", pa.array(["other"]))),
                          ("r", replaced(row, "status", pa.array([None], pa.string())))]:
        name = dataset.new_part_name([n for n in os.listdir(runs) if dataset.is_part(n)])
        pq.write_table(replaced(table, "run_id", pa.array([run_id])), runs / name)

    with pytest.warns(Warning):
        done = store.finished_run_ids(tmp_path, suite)
        frame = store.load_results(tmp_path, [suite])
    assert done == set(frame[frame.status == "ok"].run_id) == {"a", "b"}
    report = store.verify_store(tmp_path, suite, list("abcdenr"))
    assert report.counts == {"ok": 2, "damaged": 3, "missing": 2}, report.counts
    problems = " ".join(p for _, p in report.damaged)
    for why in ("never writes (_x)", "wrong type", "suite 'other'", "without a status"):
        assert why in problems, problems
