"""Layer allocation (bench_harness.contract.allocation): hand-computed cases, and the densities of the official
code (RigL's and JaxPruner's ``get_sparsities_erdos_renyi``) stored as fixtures by
scripts/allocation_official_fixtures.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench_harness.contract.allocation import ALLOCATIONS, layer_counts, layer_densities

FIXTURES = Path(__file__).parent / "fixtures" / "allocation"

# a 2-layer MLP, PyTorch layout (out, in): fc1 8 -> 4 (32 weights), fc2 4 -> 2 (8 weights); N = 40
MLP = {"fc1": (4, 8), "fc2": (2, 4)}


def test_er_of_a_two_layer_mlp_by_hand():
    # density 0.5: zeros floor(0.5*32) = 16, floor(0.5*8) = 4, so 20 kept; r = (n_in + n_out)/(n_in n_out):
    # r1 = 12/32 = 0.375, r2 = 6/8 = 0.75; eps = 20 / (0.375*32 + 0.75*8) = 20/18
    d = layer_densities(MLP, 0.5, "er")
    assert d["fc1"] == pytest.approx(0.375 * 20 / 18, abs=1e-15)
    assert d["fc2"] == pytest.approx(0.75 * 20 / 18, abs=1e-15)
    assert d["fc1"] * 32 + d["fc2"] * 8 == pytest.approx(20)
    # ideal 13.33 and 6.67 kept: floors 13 + 6 = 19, the missing one goes to the larger remainder (fc2)
    assert layer_counts(MLP, 0.5, "er") == {"fc1": 13, "fc2": 7}
    # for linear layers ERK and ER coincide (sum(shape)/prod(shape) = (n_in + n_out)/(n_in n_out))
    assert layer_densities(MLP, 0.5, "erk") == pytest.approx(d)


def test_er_saturates_a_layer_and_solves_again():
    # density 0.8: zeros floor(6.4) = 6 and floor(1.6) = 1; eps = 33/18, eps*r2 = 1.375 > 1: fc2 dense;
    # again: rhs = 26 - 1 = 25 over divisor 0.375*32 = 12: d1 = 0.375 * 25/12 = 0.78125
    d = layer_densities(MLP, 0.8, "er")
    assert d == pytest.approx({"fc1": 0.78125, "fc2": 1.0}, abs=1e-15)
    assert d["fc2"] == 1.0
    # the reference's floor credits 33 kept weights; the counts hit round(0.8*40) = 32, fc2 stays dense
    assert layer_counts(MLP, 0.8, "er") == {"fc1": 24, "fc2": 8}


def test_erk_counts_the_kernel_and_er_does_not():
    shapes = {"conv": (4, 2, 3, 3), "fc": (10, 36)}  # 72 and 360 weights
    # ERK: r = (4+2+3+3)/72 = 1/6 and 46/360; ER: r = (2+4)/8 = 0.75 and 46/360
    for allocation, r_conv in (("erk", 12 / 72), ("er", 6 / 8)):
        d = layer_densities(shapes, 0.25, allocation)
        rhs = (72 - math.floor(0.75 * 72)) + (360 - math.floor(0.75 * 360))
        eps = rhs / (r_conv * 72 + 46 / 360 * 360)
        assert d == pytest.approx({"conv": eps * r_conv, "fc": eps * 46 / 360}, abs=1e-15)


def test_erk_power_scale_softens_the_ratio():
    shapes = {"a": (4, 8), "b": (64, 64)}
    rhs = (32 - math.floor(0.9 * 32)) + (4096 - math.floor(0.9 * 4096))
    r = {"a": (12 / 32) ** 0.5, "b": (128 / 4096) ** 0.5}
    eps = rhs / (r["a"] * 32 + r["b"] * 4096)
    assert layer_densities(shapes, 0.1, "erk", erk_power_scale=0.5) == pytest.approx(
        {n: eps * r[n] for n in shapes}, abs=1e-15)
    # power 0: every ratio 1, uniform up to the floor
    assert layer_densities(shapes, 0.1, "erk", erk_power_scale=0.0) == pytest.approx({"a": 0.1, "b": 0.1}, abs=1e-3)


def test_uniform_and_uniform_dense_first_hit_the_total():
    shapes = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "fc": (10, 400)}  # 150, 2400, 4000; N = 6550
    assert layer_densities(shapes, 0.1, "uniform") == {n: 0.1 for n in shapes}
    d = layer_densities(shapes, 0.1, "uniform_dense_first")
    share = (655 - 150) / (6550 - 150)
    assert d == pytest.approx({"conv1": 1.0, "conv2": share, "fc": share}, abs=1e-15)
    assert layer_counts(shapes, 0.1, "uniform_dense_first") == {"conv1": 150, "conv2": 189, "fc": 316}
    # dense= works with every allocation; uniform with the first layer in dense is uniform_dense_first
    assert layer_densities(shapes, 0.1, "uniform", dense={"conv1"}) == d
    # RigL's uniform with custom_sparsity_map={conv1: 0} leaves the others at d: the same masks as asking for
    # the total it reaches
    rigl_total = (150 + 0.1 * 6400) / 6550
    assert layer_densities(shapes, rigl_total, "uniform_dense_first")["fc"] == pytest.approx(0.1)


def test_dense_layers_are_paid_for_by_the_others_in_erk():
    shapes = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "fc": (10, 400)}
    d = layer_densities(shapes, 0.7, "erk", dense=["fc"])
    assert d["fc"] == 1.0
    # zeros floor(0.3 N_l): 45, 720, 1200; rhs = (150-45) + (2400-720) - 1200 = 585 over r_l N_l = 12 + 27:
    # eps = 15, conv1 would get 15 * 12/150 = 1.2: dense too; again rhs = 1680 - 1200 - 45 = 435 for conv2
    assert d["conv1"] == 1.0
    assert d["conv2"] == pytest.approx(435 / 2400, abs=1e-15)
    kept = sum(d[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.7 * 6550)
    assert sum(layer_counts(shapes, 0.7, "erk", dense=["fc"]).values()) == round(0.7 * 6550)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("density", [1e-4, 0.003, 0.02, 0.1, 0.37, 0.9, 1.0])
def test_counts_hit_the_target_and_never_empty_a_layer(allocation, density):
    shapes = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "conv3": (64, 32, 3, 3), "fc": (10, 64)}
    n = {k: math.prod(s) for k, s in shapes.items()}
    if allocation == "uniform_dense_first" and density * sum(n.values()) <= n["conv1"]:
        with pytest.raises(ValueError, match="cannot be reached"):
            layer_counts(shapes, density, allocation)
        return
    counts = layer_counts(shapes, density, allocation)
    dens = layer_densities(shapes, density, allocation)
    assert list(counts) == list(shapes)
    assert all(1 <= counts[k] <= n[k] for k in shapes)
    target = round(density * sum(n.values()))
    if target >= len(shapes) + (n["conv1"] if allocation == "uniform_dense_first" else 0):
        assert sum(counts.values()) == target
        # within a weight of the density, plus the reference's floor slack (under a weight per layer) that the
        # non-saturated layers give back
        slack = 1.0 if allocation.startswith("uniform") else 1.0 + len(shapes)
        assert all(abs(counts[k] - dens[k] * n[k]) <= slack or dens[k] * n[k] < 1 for k in shapes)
        assert all(counts[k] == n[k] for k in shapes if dens[k] == 1.0)
    else:  # extreme sparsity: one weight per layer, the total above the target
        assert all(counts[k] == 1 for k in shapes if dens[k] < 1)


def test_extreme_sparsity_keeps_one_weight_per_layer():
    shapes = {"a": (100, 100), "b": (100, 100), "c": (10, 10)}  # N = 20100, K = round(1e-4 * N) = 2
    assert layer_counts(shapes, 1e-4, "uniform") == {"a": 1, "b": 1, "c": 1}


def test_density_one_is_dense_everywhere():
    for allocation in ALLOCATIONS:
        assert layer_densities(MLP, 1.0, allocation) == {"fc1": 1.0, "fc2": 1.0}
        assert layer_counts(MLP, 1.0, allocation) == {"fc1": 32, "fc2": 8}


@pytest.mark.parametrize("kwargs, message", [
    ({"allocation": "erdos_renyi"}, "uniform, uniform_dense_first, erk, er"),
    ({"density": 0.0}, r"\(0, 1\]"),
    ({"density": 1.5}, r"\(0, 1\]"),
    ({"density": -0.1}, r"\(0, 1\]"),
    ({"dense": ["fc1", "fc2"]}, "cannot be reached"),
    ({"dense": ["fc1"]}, "cannot be reached"),  # fc1 alone holds 32 of 40 weights > 0.5
    ({"dense": ["fc3"]}, "not among the layers"),
    ({"erk_power_scale": 0.5, "allocation": "er"}, "applies to allocation 'erk' only"),
])
def test_clear_errors(kwargs, message):
    args = {"shapes": MLP, "density": 0.5, "allocation": "erk", **kwargs}
    for fn in (layer_densities, layer_counts):
        with pytest.raises(ValueError, match=message):
            fn(args["shapes"], args["density"], args["allocation"], dense=args.get("dense", ()),
               erk_power_scale=args.get("erk_power_scale", 1.0))


def test_uniform_dense_first_unreachable_when_the_first_layer_is_most_of_the_net():
    with pytest.raises(ValueError, match=r"\['fc1'\].*at least"):
        layer_densities(MLP, 0.5, "uniform_dense_first")


def test_er_needs_two_dimensional_weights():
    with pytest.raises(ValueError, match="fewer than 2"):
        layer_densities({"w": (10, 10), "b": (10,)}, 0.5, "er")


# -- the official code's densities ------------------------------------------------------------------------------
def _official_cases() -> list[dict]:
    return json.loads((FIXTURES / "erdos_renyi.json").read_text())["cases"]


def _fixture_cases():
    return [pytest.param(case, id=case["id"]) for case in _official_cases()]


@pytest.mark.parametrize("case", _fixture_cases())
def test_matches_the_official_erdos_renyi(case):
    shapes = {name: tuple(shape) for name, shape in case["shapes"]}
    got = layer_densities(shapes, 1.0 - case["sparsity"], case["allocation"],
                          erk_power_scale=case.get("erk_power_scale", 1.0))
    expected = {name: 1.0 - s for name, s in case["sparsities"].items()}
    assert list(got) == [name for name, _ in case["shapes"]]
    # float64 on both sides; 1 - (1 - s) may move s by an ulp, nothing more
    assert got == pytest.approx(expected, abs=1e-12)
    assert {n for n, d in got.items() if d == 1.0} == {n for n, s in case["sparsities"].items() if s == 0.0}


def test_the_fixture_has_saturating_cases():
    cases = _official_cases()
    assert {c["model"] for c in cases} >= {"lenet5", "resnet20", "vgg11", "saturating"}
    assert any(any(s == 0.0 for s in c["sparsities"].values()) for c in cases)
    assert {c["allocation"] for c in cases} == {"erk", "er"}


# -- the allocation option of the score pruners ------------------------------------------------------------------
def _convnet():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _shapes(model):
    from bench_harness.contract import masking

    return {n: tuple(p.shape) for n, p in masking.prunable_parameters(model).items()}


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("tie_rule", ["reference", "exact"])
def test_magnitude_with_an_allocation_keeps_the_largest_per_layer(allocation, tie_rule):
    import torch

    import bench_harness

    model = _convnet()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    counts = layer_counts(_shapes(model), 0.1, allocation)
    masks = bench_harness.prune(model, "magnitude", 0.9, allocation=allocation, tie_rule=tie_rule)
    for n, m in masks.items():
        assert int(m.sum()) == counts[n]
        kept, pruned = weights[n].abs()[m], weights[n].abs()[~m]
        assert pruned.numel() == 0 or float(kept.min()) >= float(pruned.max())
        assert torch.equal(dict(model.named_parameters())[n].detach() != 0, m)  # applied
    assert sum(counts.values()) == round(0.1 * sum(math.prod(s) for s in _shapes(model).values()))


def test_random_with_erk_is_seeded_and_keeps_the_erk_counts():
    import bench_harness

    counts = layer_counts(_shapes(_convnet()), 0.05, "erk")
    a = bench_harness.prune(_convnet(), "random", 0.95, allocation="erk", seed=3)
    b = bench_harness.prune(_convnet(), "random", 0.95, allocation="erk", seed=3)
    c = bench_harness.prune(_convnet(), "random", 0.95, allocation="erk", seed=4)
    assert {n: int(m.sum()) for n, m in a.items()} == counts
    assert all((a[n] == b[n]).all() for n in a) and any((a[n] != c[n]).any() for n in a)
    # ERK: r = 17/216 for the first conv, 320/16384 for the wide linear layer: about 4 times the density
    assert counts["0.weight"] / 216 > 3.5 * counts["5.weight"] / 16384


def test_an_allocation_over_rounds_ends_at_its_counts_and_never_revives():
    import bench_harness

    model = _convnet()
    masks = bench_harness.prune(model, "magnitude", 0.98, allocation="erk", rounds=4, tie_rule="exact")
    assert {n: int(m.sum()) for n, m in masks.items()} == layer_counts(_shapes(_convnet()), 0.02, "erk")


def test_count_masks_reference_rule_with_ties_by_hand():
    import torch

    from bench_harness.contract.score_pruner import count_masks

    s = {"w": torch.tensor([1.0, 2.0, 2.0, 2.0, 5.0])}
    # keep 3 -> prune k = 2: the 2nd smallest is 2.0, every score <= 2.0 is pruned (4 of 5) unless final,
    # where the last tied entries come back until exactly 2 are pruned
    assert count_masks(s, {"w": 3}, "reference", final=False)["w"].tolist() == [False, False, False, False, True]
    assert count_masks(s, {"w": 3}, "reference", final=True)["w"].tolist() == [False, False, True, True, True]
    # exact: ties kept in index order
    assert count_masks(s, {"w": 3}, "exact")["w"].tolist() == [False, True, True, False, True]
    assert count_masks(s, {"w": 5}, "reference")["w"].all()
    assert count_masks({"w": torch.tensor([float("nan"), 1.0])}, {"w": 1}, "exact")["w"].tolist() == [False, True]


def test_the_default_is_todays_behaviour_and_keeps_run_ids():
    from bench_harness.contract.plugins import get_registry
    from bench_harness.identity import non_default_fields

    for name in ("random", "magnitude", "snip", "synflow"):
        cls = get_registry().get("pruner", name)
        params = cls.make_params({})
        assert params.allocation is None and params.erk_power_scale == 1.0
        assert "allocation" not in non_default_fields(params) and "erk_power_scale" not in non_default_fields(params)
    params = get_registry().get("pruner", "random").make_params({"allocation": "erk"})
    assert non_default_fields(params) == {"allocation": "erk"}


@pytest.mark.parametrize("values, message", [
    ({"allocation": "erk", "scope": "layerwise"}, "drop scope"),
    ({"erk_power_scale": 0.5}, "add allocation: erk"),
    ({"allocation": "uniform", "erk_power_scale": 0.5}, "applies to allocation 'erk' only"),
    ({"allocation": "ERK"}, "erk"),
])
def test_contradictory_allocation_settings_name_the_fix(values, message):
    from bench_harness.contract.plugins import get_registry

    with pytest.raises(ValueError, match=message):
        get_registry().get("pruner", "magnitude").make_params(values)


def test_the_allocation_is_in_the_params_schema():
    from bench_harness.contract.plugins import get_registry
    from bench_harness.contract.pruner import params_json_schema

    schema = params_json_schema(get_registry().get("pruner", "random").Params)
    text = json.dumps(schema)
    assert "allocation" in schema["properties"] and all(a in text for a in ALLOCATIONS)


def test_check_numerics_compares_at_the_allocation_counts():
    import warnings

    import bench_harness

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # magnitude is exact in float32: no DegenerateScoresWarning
        masks = bench_harness.prune(_convnet(), "magnitude", 0.9, allocation="er", check_numerics=True)
    assert {n: int(m.sum()) for n, m in masks.items()} == layer_counts(_shapes(_convnet()), 0.1, "er")


def test_numpy_numbers_are_densities_too():
    import numpy as np

    assert layer_counts(MLP, np.float32(0.5), "er") == layer_counts(MLP, 0.5, "er")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer_densities(MLP, "0.5", "er")
