import pytest
import torch
from torch import nn

import bench_harness
from bench_harness.conformance import check_pruner
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import make_context

BUILTIN = ["dense", "random", "magnitude"]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_pruners_pass_the_conformance_kit(name):
    checks = check_pruner(get_registry().get("pruner", name))
    failed = [c for c in checks if not c.passed]
    assert not failed, failed


def test_conformance_kit_catches_a_bad_pruner():
    from bench_harness.contract.pruner import Pruner

    class Sloppy(Pruner):
        name = "sloppy"

        def prune(self, model, sparsity, ctx):
            with torch.no_grad():
                for p in ctx.prunable.values():
                    p.mul_(2)  # touches weights without declaring it
            masks = {n: (torch.rand(p.shape) > sparsity) for n, p in ctx.prunable.items()}  # unseeded
            masks.pop(next(iter(masks)))
            return masks

    failed = {c.name for c in check_pruner(Sloppy) if not c.passed}
    assert {"masks cover exactly the prunable parameters", "weights left alone",
            "deterministic under a fixed seed"} <= failed


def _two_layer():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -3.0], [0.1, 2.0]]))
        model[1].weight.copy_(torch.tensor([[-1.0, 0.2]]))
    return model


def test_magnitude_global_mask_by_hand():
    # |w| = 0.5, 3.0, 0.1, 2.0 | 1.0, 0.2 ; keep 3 of 6 -> 3.0, 2.0, 1.0
    masks = bench_harness.prune(_two_layer(), "magnitude", 0.5)
    assert masks["0.weight"].tolist() == [[False, True], [False, True]]
    assert masks["1.weight"].tolist() == [[True, False]]


def test_magnitude_layerwise_mask_by_hand():
    # layer 0 keeps 2 of 4 (3.0, 2.0); layer 1 keeps 1 of 2 (1.0)
    masks = bench_harness.prune(_two_layer(), "magnitude", 0.5, scope="layerwise")
    assert masks["0.weight"].tolist() == [[False, True], [False, True]]
    assert masks["1.weight"].tolist() == [[True, False]]
    masks = bench_harness.prune(_two_layer(), "magnitude", 0.25, scope="layerwise")
    assert masks["0.weight"].tolist() == [[True, True], [False, True]]


def test_iterative_magnitude_reaches_the_target_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    masks = bench_harness.prune(model, "magnitude", 0.9, rounds=10)
    kept = sum(int(m.sum()) for m in masks.values())
    total = 20 * 30 + 30 * 10
    assert kept == total - int((1.0 - (1.0 - 0.9)) * total)  # reference rule: int((1 - d) N) pruned


def test_prune_api_applies_masks_and_validates():
    model = _two_layer()
    masks = bench_harness.prune(model, "random", 0.5, seed=3)
    assert all(m.dtype == torch.bool for m in masks.values())
    assert torch.all(model[0].weight[~masks["0.weight"]] == 0)
    again = bench_harness.prune(_two_layer(), "random", 0.5, seed=3)
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    with pytest.raises(ValueError, match="no parameter 'scop'"):
        bench_harness.prune(_two_layer(), "magnitude", 0.5, scop="layerwise")
    with pytest.raises(ValueError, match="sparsity must lie in"):
        bench_harness.prune(_two_layer(), "magnitude", 1.5)


def test_dense_keeps_everything():
    masks = bench_harness.prune(_two_layer(), "dense", 0.9)
    assert all(bool(m.all()) for m in masks.values())


def test_random_scores_come_from_the_seeded_generator():
    model = _two_layer()
    ctx = make_context(model, seed=7)
    scores = get_registry().get("pruner", "random")().score(model, ctx)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(scores["0.weight"], torch.randn((2, 2), generator=g))


def test_the_float64_check_of_a_sampling_pruner_draws_the_same_numbers():
    """check_numerics scores again in float64 from the generator as it was before the round's draws: random scores
    are then the same draws, the kept sets agree and nothing is flagged (copying the generator after the draws
    compared other samples and always warned)."""
    import warnings as _warnings

    from bench_harness.contract.numerics import DegenerateScoresWarning

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", DegenerateScoresWarning)
        checked = bench_harness.prune(model, "random", 0.9, check_numerics=True, seed=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    plain = bench_harness.prune(model, "random", 0.9, seed=3)
    assert all(torch.equal(checked[n], plain[n]) for n in plain)  # the check changes no draw of the pruner


def test_the_api_refuses_masks_that_remove_every_weight():
    """A run fails when every prunable weight is removed (layer collapse); the Python API says so too instead of
    returning masks of a network that computes a constant. LAMP keeps round(0.001 * 197) = 0 weights here."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 17), nn.ReLU(), nn.Linear(17, 1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Exception, match="removed every prunable weight"):
        bench_harness.prune(model, "lamp", 0.999)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
