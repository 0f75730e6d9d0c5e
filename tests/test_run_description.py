"""The run description: built once by validation, frozen, the suite's settings held once, the validated pruner
parameters carried, a read-only view for plugins; the suite file's keys declared once."""
import dataclasses
import json
import pickle
import sys
from dataclasses import dataclass

import pytest
import yaml

from bench_harness import RunInfo, hookimpl, masking
from bench_harness.api import make_recipe
from bench_harness.config.schema import suite_json_schema
from bench_harness.config.suite import Component, PrunableSet, Recipe, RunSpec, Scoring, parse_suite, validate_suite
from bench_harness.contract.plugins import Registry
from bench_harness.contract.pruner import Pruner, Stage, param
from bench_harness.errors import SuiteError
from bench_harness.running.plan import STAGE, artifact_plan, missing
from bench_harness.running.runner import execute_run, produce_stages

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}"
SPY_SUITE = f"""
name: spy
grid:
  models: [mlp]
  datasets: [{DATA}]
  sparsities: [0.3, 0.6]
  seeds: [0, 1]
  pruners: [{{name: spy, params: {{keep_bias: 1}}}}, {{name: spy, params: {{keep_bias: 2}}}}, dense]
recipe: {{epochs: 0, batch_size: 32}}
"""


@dataclass
class SpyParams:  # module level: runs carrying it pickle
    keep_bias: int = param(0, "a parameter that changes nothing but the run id")


def _produce_stage(ctx):
    return {"model": ctx.run.model.name}


class Spy(Pruner):
    """Counts how often its parameters are validated and records what each prune receives."""

    name = "spy"
    Params = SpyParams
    validated: list = []
    pruned: list = []
    stage_runs: list = []

    @classmethod
    def make_params(cls, values):
        cls.validated.append(dict(values or {}))
        return super().make_params(values)

    @classmethod
    def stages(cls, params, run):
        cls.stage_runs.append((params, run))
        return [Stage("spy-stage", {"model": run.model.name, "keep_bias": params.keep_bias}, _produce_stage)]

    def prune(self, model, sparsity, ctx):
        Spy.pruned.append((self.params, ctx.run))
        ctx.stage(self.stages(self.params, ctx.run)[0])
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


@hookimpl
def bench_register_pruners():
    return [Spy]


@pytest.fixture
def registry():
    Spy.validated.clear(), Spy.pruned.clear(), Spy.stage_runs.clear()
    return Registry(extra_plugins=[("spy", sys.modules[__name__])])


def _suite(registry, text=SPY_SUITE, root=None):
    suite = validate_suite(parse_suite(yaml.safe_load(text), "spy.yaml"), registry)
    return suite.with_settings(results_root=str(root)) if root else suite


def test_runs_are_frozen_and_complete_when_built(registry):
    suite = _suite(registry)
    assert len(suite.runs) == 2 * 2 * 2 + 2  # dense: one run per seed, its sparsity axis collapsed
    run = suite.runs[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.sparsity = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.results_root = "/elsewhere"  # a setting is the suite's, read through the run
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.runs = ()
    assert run.pruner_params == SpyParams(keep_bias=1) and run.pruner_version == "1" and not run.needs_pretrained
    assert run.identity()["pruner_params"] == {"keep_bias": 1}
    dense = [r for r in suite.runs if r.pruner.name == "dense"]
    assert [(r.sparsity, r.seed) for r in dense] == [(0.0, 0), (0.0, 1)]
    assert all(r.settings is suite.settings for r in suite.runs)  # held once, referenced by every run


def test_with_settings_returns_a_new_suite_and_leaves_the_old_one(registry, tmp_path):
    suite = _suite(registry)
    before = suite.settings
    moved = suite.with_settings(results_root=str(tmp_path), device="cpu", download=True)
    assert moved is not suite and suite.settings is before and suite.results_root != str(tmp_path)
    assert all(r.results_root == before.results_root and r.device == "auto" for r in suite.runs)
    assert moved.results_root == str(tmp_path) and moved.results_dir == tmp_path / "spy"
    assert all(r.settings is moved.settings and r.results_root == str(tmp_path) and r.download for r in moved.runs)
    assert [r.run_id for r in moved.runs] == [r.run_id for r in suite.runs]  # settings are not identity
    assert moved.settings.data_root == before.data_root and moved.settings.base_dir == before.base_dir
    with pytest.raises(TypeError, match="unknown run settings \\['result_root'\\]"):
        suite.with_settings(result_root=str(tmp_path))


def test_a_suite_run_validates_pruner_parameters_once_per_grid_entry(registry, tmp_path):
    suite = _suite(registry, root=tmp_path)
    assert Spy.validated == [{"keep_bias": 1}, {"keep_bias": 2}]
    spy_runs = [r for r in suite.runs if r.pruner.name == "spy"]
    for run in spy_runs:
        assert missing(artifact_plan(run, registry), STAGE)
    produce_stages(spy_runs[0], registry)
    rows = [execute_run(run, registry) for run in suite.runs]
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [r.get("error") for r in rows]
    assert not missing(artifact_plan(spy_runs[0], registry), STAGE)
    assert Spy.validated == [{"keep_bias": 1}, {"keep_bias": 2}]  # validation only: runs carry the result
    assert len(Spy.pruned) == len(spy_runs)
    for (params, info), run in zip(Spy.pruned, spy_runs):
        assert params == run.pruner_params and params is not run.pruner_params  # the pruner gets its own copy
        assert isinstance(info, RunInfo) and info.run_id == run.run_id
    assert all(isinstance(run, RunInfo) for _, run in Spy.stage_runs)
    assert {r["pruner_params"] for r in rows if r["pruner"] == "spy"} == {'{"keep_bias": 1}', '{"keep_bias": 2}'}


def test_plugins_see_a_read_only_copy_of_the_run(registry):
    run = _suite(registry).runs[0]
    info = run.info()
    assert (info.suite, info.model.name, info.dataset.name, info.seed, info.sparsity) == ("spy", "mlp", "synthetic",
                                                                                          0, 0.3)
    assert info.recipe is run.recipe and info.scoring is run.scoring and info.pretrain is None
    assert (info.data_root, info.download, info.ablation) == (run.data_root, False, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.seed = 3
    info.dataset.params["num_classes"] = 10  # a copy: the run and its id are untouched
    assert run.dataset.params["num_classes"] == 4 and run.run_id == run.info().run_id


def test_a_run_pickles_and_compares_equal(registry, tmp_path):
    for run in _suite(registry, root=tmp_path).runs:
        again = pickle.loads(pickle.dumps(run))
        assert again == run and again.run_id == run.run_id and again.identity() == run.identity()
        assert again.pruner_params == run.pruner_params and again.settings == run.settings
        assert hash(again) == hash(run)


def test_runs_built_by_hand_keep_their_ids():
    base = dict(suite="s", model=Component("resnet20"), dataset=Component("cifar10"),
                pruner=Component("magnitude", {"scope": "layerwise"}), sparsity=0.9, seed=0, recipe=Recipe(),
                scoring=Scoring(), prunable=PrunableSet())
    assert RunSpec(**base).run_id == RunSpec(**base, pruner_defaults={"scope": "layerwise"}).run_id == \
        "954c9c23a075ed8b"  # tests/test_identity.py
    with pytest.raises(ValueError, match="pruner_defaults"):
        RunSpec(**base, pruner_defaults={"scope": "global"})


def test_make_recipe_validates_as_a_suite_does():
    assert make_recipe({"epochs": 3, "milestones": [1, 2]}) == Recipe(epochs=3, milestones=(1, 2))
    for bad, problem in [({"epoch": 1}, "recipe.epoch: unknown setting. Did you mean 'epochs'"),
                         ({"optimizer": "sgdd"}, "recipe.optimizer: 'sgdd' is not allowed"),
                         ({"lr": -1}, "recipe.lr: Input should be greater than or equal to 0"),
                         ({"epochs": 1.5}, "recipe.epochs: Input should be a valid integer")]:
        with pytest.raises(ValueError) as api_error:
            make_recipe(bad)
        assert str(api_error.value).startswith(problem)
        with pytest.raises(SuiteError) as suite_error:
            parse_suite({"name": "s", "grid": {"models": ["mlp"], "datasets": ["synthetic"], "pruners": ["dense"]},
                         "recipe": bad}, "s.yaml")
        assert str(suite_error.value) == f"s.yaml: {api_error.value}"  # the same words as in a suite file
    with pytest.raises(ValueError, match="recipe: expected a mapping"):
        make_recipe([("epochs", 1)])


def test_the_schema_has_the_suites_own_keys():
    from bench_harness.config.suite import GRID_KEYS, TOP_KEYS

    schema = suite_json_schema()
    assert list(schema["properties"]) == list(TOP_KEYS)
    assert list(schema["$defs"]["grid"]["properties"]) == list(GRID_KEYS)
    assert schema["properties"]["ablations"]["items"]["anyOf"][0]["enum"] == ["shuffle", "reinit", "invert"]



class NestedMutator(Pruner):
    """Changes what it is shown of the run: a nested parameter of the run's model."""

    name = "nested_mutator"

    def prune(self, model, sparsity, ctx):
        ctx.run.model.params["hidden"].append(7)
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


class _LifecycleMutator:
    @hookimpl
    def bench_register_pruners(self):
        return [NestedMutator]

    @hookimpl
    def bench_run_started(self, run):
        run.model.params["hidden"].append(9)
        run.dataset.params["train_size"] = 16

    @hookimpl
    def bench_run_finished(self, run, row):
        run.model.params["hidden"].append(11)
        row["status"] = "forged"


def test_neither_a_pruner_nor_a_lifecycle_hook_can_change_the_run_for_later_runs(tmp_path):
    """Runs of one process share their components: what plugin code is handed must be a copy, else the next
    run trains another model and data set than its id and row say."""
    registry = Registry(extra_plugins=[("mutator", _LifecycleMutator())])
    text = SPY_SUITE.replace("[mlp]", "[{name: mlp, params: {hidden: [16, 8]}}]").replace(
        "pruners: [{name: spy, params: {keep_bias: 1}}, {name: spy, params: {keep_bias: 2}}, dense]",
        "pruners: [nested_mutator]")
    suite = _suite(registry, text, root=tmp_path)
    ids = [r.run_id for r in suite.runs]
    rows = [execute_run(run, registry) for run in suite.runs]
    assert len(rows) == 4 and [r["status"] for r in rows] == ["ok"] * 4, [r.get("error") for r in rows]
    assert [r["run_id"] for r in rows] == ids
    assert {r["model_params"] for r in rows} == {'{"hidden": [16, 8]}'}
    assert {json.loads(r["config"])["dataset_params"]["train_size"] for r in rows} == {64}
    assert len({r["params_total"] for r in rows}) == 1  # every run built the model its id names
    for run in suite.runs:
        assert run.model.params == {"hidden": [16, 8]} and run.dataset.params["train_size"] == 64
