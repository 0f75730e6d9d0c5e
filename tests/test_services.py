"""The contract's services (``ctx.services``) build what a run builds and run other pruners as the core does; the
flags a pruner no longer declares twice are derived from its regime; the granularity is the run's."""
import copy
import types

import pytest
import torch
from torch import nn

from bench_harness import Granularity, Pruner, PruneResult, Regime, hookimpl, masking
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruning import call_pruner, make_context
from bench_harness.errors import InvalidMaskError
from bench_harness.running.runner import RunData, _data_and_model, execute_run
from tests.conftest import runs_of

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 96, test_size: 32}}"
SUITE = f"""
name: services
grid: {{models: [{{name: mlp, params: {{hidden: [16]}}}}], datasets: [{DATA}], sparsities: [0.5], seeds: [3],
        pruners: [magnitude]}}
recipe: {{epochs: 1, batch_size: 32, train_subset: 80}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runs_of(SUITE, tmp_path_factory.mktemp("services"))[0]


def _services_of(run):
    """The services a suite run's pruner receives (as the runner wires them)."""
    from bench_harness.contract.services import Services

    return Services(call_pruner, get_registry(), data_root=run.data_root, download=run.download)


def test_build_model_initialises_as_the_run_does_and_leaves_the_random_state_alone(run):
    _, _, model, _ = _data_and_model(run, get_registry(), torch.device("cpu"))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    twin = _services_of(run).build_model(run.model.name, run.model.params, dataset=run.dataset.name,
                                         dataset_params=run.dataset.params, seed=run.seed)
    assert torch.equal(torch.random.get_rng_state(), before)
    state, twin_state = model.state_dict(), twin.state_dict()
    assert list(state) == list(twin_state)
    assert all(torch.equal(state[k], twin_state[k]) for k in state)


def test_train_loader_yields_the_runs_training_batches(run):
    spec = _services_of(run).dataset_spec(run.dataset.name, run.dataset.params)
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (4, 3, 8)
    ours = RunData(run, spec, torch.device("cpu")).train
    theirs = _services_of(run).train_loader(run.dataset.name, run.dataset.params, seed=run.seed,
                                            batch_size=run.recipe.batch_size, augment=run.recipe.augment,
                                            train_subset=run.recipe.train_subset)
    assert len(theirs.dataset) == len(ours.dataset) == 80 and theirs.drop_last and ours.drop_last
    batches = []
    for loader in (ours, theirs):
        torch.manual_seed(0)  # augmentation (if any) draws from the global generator
        batches.append([(x.clone(), y.clone()) for x, y in loader])
    assert len(batches[0]) == len(batches[1]) == 2
    for (x, y), (x2, y2) in zip(*batches):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 4))


def _data():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]


@pytest.mark.parametrize("name,params", [("random", {}), ("snip", {"rounds": 2}),
                                         ("magnitude", {"scope": "layerwise"})])
def test_run_pruner_gives_the_masks_of_a_direct_call(name, params):
    data = _data()
    cls = get_registry().get("pruner", name)
    direct_model = _net()
    direct = call_pruner(cls, cls.make_params(params), direct_model, 0.7,
                         make_context(direct_model, seed=4, batches=lambda: iter(data)))
    caller = _net()  # the calling pruner's own model; the other pruner prunes a copy, with the caller's data
    ctx = make_context(caller, seed=4, batches=lambda: iter(data))
    result = ctx.services.run_pruner(name, copy.deepcopy(caller), 0.7, ctx, params)
    assert isinstance(result, PruneResult) and set(result.masks) == set(direct.masks)
    assert all(torch.equal(result.masks[n], direct.masks[n]) for n in direct.masks)
    assert result.achieved_sparsity == pytest.approx(direct.achieved_sparsity)


def test_run_pruner_validates_parameters_and_output():
    model = _net()
    ctx = make_context(model)
    with pytest.raises(ValueError, match="has no parameter 'scop'.*scope"):
        ctx.services.run_pruner("magnitude", copy.deepcopy(model), 0.5, ctx, {"scop": "global"})
    with pytest.raises(ValueError, match="sparsity must lie in"):
        ctx.services.run_pruner("magnitude", copy.deepcopy(model), 1.0, ctx)
    with pytest.raises(TypeError, match="params must be a mapping.*got list"):  # not dict()'s own riddle
        ctx.services.run_pruner("magnitude", copy.deepcopy(model), 0.5, ctx, [("scope", "global")])


# -- flags derived from the regime, granularity per run -------------------------------------------------------------

def test_flags_follow_the_regime():
    registry = get_registry()
    assert registry.get("pruner", "dense").ignores_sparsity
    assert not registry.get("pruner", "magnitude").ignores_sparsity
    for name in ("mp", "mp_ls", "snows", "sparsegpt"):
        assert registry.get("pruner", name).requires.pretrained, name
    assert not registry.get("pruner", "snip").requires.pretrained

    class Reference(Pruner):
        regime = Regime.NONE
        ignores_sparsity = True  # the old, redundant declaration: accepted while it agrees

    assert Reference.ignores_sparsity
    with pytest.raises(TypeError,
                       match="ignores_sparsity = True contradicts regime 'at_init'.*remove ignores_sparsity"):
        class Confused(Pruner):
            ignores_sparsity = True


class _Learner(Pruner):
    name = "learner"
    regime = Regime.MASK_LEARNING

    def prune(self, model, sparsity, ctx):
        return PruneResult(masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1 - sparsity),
                           weights_frozen=getattr(self, "declared", None))


def test_weights_frozen_is_filled_from_the_regime_and_checked():
    model = _net()
    result = call_pruner(_Learner, _Learner.Params(), model, 0.5, make_context(model))
    assert result.weights_frozen is True
    at_init = get_registry().get("pruner", "magnitude")
    assert call_pruner(at_init, at_init.make_params({}), model, 0.5, make_context(model)).weights_frozen is False
    _Learner.declared = True  # an old plugin that still says so: accepted
    try:
        assert call_pruner(_Learner, _Learner.Params(), model, 0.5, make_context(model)).weights_frozen is True
        _Learner.declared = False  # contradicts MASK_LEARNING
        with pytest.raises(InvalidMaskError, match="weights_frozen=False contradicts regime 'mask_learning'"):
            call_pruner(_Learner, _Learner.Params(), model, 0.5, make_context(model))
    finally:
        del _Learner.declared


def test_granularity_follows_the_parameters():
    registry = get_registry()
    assert registry.get("pruner", "magnitude").granularity_of(None) == Granularity.UNSTRUCTURED
    for name in ("mp", "mp_ls", "snows", "sparsegpt"):
        cls = registry.get("pruner", name)
        assert cls.granularity_of(cls.make_params({})) == Granularity.UNSTRUCTURED
        assert cls.granularity_of(cls.make_params({"nm": "2:4"})) == Granularity.N_M


def test_a_runs_row_records_the_granularity(tmp_path):
    """A pruner whose parameter picks N:M masks: the row says n:m (schema version 3)."""
    from dataclasses import dataclass

    from bench_harness import param

    @dataclass
    class TwoFourParams:
        nm: bool = param(False, "2:4 masks along the input dimension")

    class TwoFour(Pruner):
        name = "two_four"
        Params = TwoFourParams

        @classmethod
        def granularity_of(cls, params):
            return Granularity.N_M if params.nm else Granularity.UNSTRUCTURED

        def prune(self, model, sparsity, ctx):
            scores = {n: p.detach().abs() for n, p in ctx.prunable.items()}
            return masking.topk_masks(scores, 1 - sparsity)

    module = types.ModuleType("two_four_plugin")
    module.bench_register_pruners = hookimpl(lambda: [TwoFour])
    registry = Registry(extra_plugins=[("two_four", module)])
    import yaml

    from bench_harness.config.suite import parse_suite, validate_suite

    parsed = parse_suite(yaml.safe_load(SUITE.replace("pruners: [magnitude]", "pruners: [two_four, {name: two_four, "
                                                      "params: {nm: true}}]")), "granularity.yaml")
    suite = validate_suite(parsed, registry).with_settings(results_root=str(tmp_path))
    rows = [execute_run(r, registry) for r in suite.runs]
    assert [row["status"] for row in rows] == ["ok", "ok"], [row.get("error") for row in rows]
    assert [row["granularity"] for row in rows] == ["unstructured", "n:m"]
