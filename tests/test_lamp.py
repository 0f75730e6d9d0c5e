"""LAMP (plugins/baselines/lamp.py): scores by hand (ties included), masks by hand, and the official code's scores
and masks (jaeho-lee/layer-adaptive-sparsity, stored by scripts/lamp_official_fixtures.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import bench_harness
from bench_harness.conformance import check_pruner
from bench_harness.contract.plugins import get_registry
from bench_harness_plugins.baselines.lamp import lamp_scores

FIXTURE = Path(__file__).parent / "fixtures" / "lamp" / "official.pt"


def test_scores_by_hand_with_ties():
    # w² = 9, 1, 4, 4, 0; ascending, stable: idx 4, 1, 2, 3, 0 with suffix sums 18, 18, 17, 13, 9.
    # The tied -2 and 2 score 4/17 and 4/13: the later one in index order comes later and scores higher.
    w = torch.tensor([3.0, 1.0, -2.0, 2.0, 0.0])
    expected = torch.tensor([1.0, 1 / 18, 4 / 17, 4 / 13, 0.0], dtype=torch.float64)
    assert torch.allclose(lamp_scores(w), expected, rtol=0, atol=1e-15)
    assert lamp_scores(w.view(5, 1)).shape == (5, 1)
    # two equal weights: 1/2 and 1
    assert lamp_scores(torch.tensor([1.0, 1.0])).tolist() == [0.5, 1.0]


def test_the_largest_weight_of_every_layer_scores_one_and_zeros_score_zero():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    s = lamp_scores(w)
    assert s.flatten()[w.abs().flatten().argmax()] == 1.0 and float(s.max()) == 1.0
    assert lamp_scores(torch.zeros(3, 3)).eq(0).all()  # 0/0 in the official code
    # within a layer LAMP ranks as |w| does
    order_w = torch.sort(w.abs().flatten(), stable=True).indices
    assert (torch.diff(s.flatten()[order_w]) >= 0).all()


def _two_layers():
    model = nn.Sequential(nn.Linear(5, 1, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 1.0, -2.0, 2.0, 0.0]]))
        model[1].weight.copy_(torch.tensor([[0.1, 0.2]]))
    return model


def test_global_threshold_by_hand():
    # scores: layer 0 [1, 1/18, 4/17, 4/13, 0], layer 1 [0.01/0.05 = 0.2, 1]; keep 3 of 7: 1, 1, 4/13.
    # Magnitude would keep 3, -2, 2 and empty layer 1; LAMP keeps its largest weight.
    masks = bench_harness.prune(_two_layers(), "lamp", 4 / 7)
    assert masks["0.weight"].tolist() == [[True, False, False, True, False]]
    assert masks["1.weight"].tolist() == [[False, True]]
    magnitude = bench_harness.prune(_two_layers(), "magnitude", 4 / 7, tie_rule="exact")
    assert not magnitude["1.weight"].any()


def test_lamp_runs_where_magnitude_does():
    lamp, magnitude = (get_registry().get("pruner", n) for n in ("lamp", "magnitude"))
    assert lamp.regime == magnitude.regime and lamp.requires == magnitude.requires
    assert lamp.Params().tie_rule == "exact"


def test_lamp_passes_the_conformance_kit():
    failed = [c for c in check_pruner(get_registry().get("pruner", "lamp")) if not c.passed]
    assert not failed, failed


# -- the official code --------------------------------------------------------------------------------------------
def _official():
    return torch.load(FIXTURE, weights_only=True)


def _network(weights):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, w in weights.items():
            params[n].copy_(w)
    return model


def _by_tie_group(w: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Scores with each group of equal w² sorted: the official code orders tied weights by an unstable sort (and
    its float32 w² ties a few more pairs than float64 does)."""
    sq = w.float().flatten() ** 2
    out = scores.double().flatten().clone()
    values, counts = torch.unique(sq, return_counts=True)
    for value in values[counts > 1]:
        where = (sq == value).nonzero().flatten()
        out[where] = torch.sort(out[where]).values
    return out


def test_scores_match_the_official_code():
    data = _official()
    ties = 0
    for n, w in data["weights"].items():
        ours = _by_tie_group(w, lamp_scores(w))
        ties += w.numel() - torch.unique(w.float() ** 2).numel()
        # float64 on both sides: the same numbers, up to the cancellation of the official total - running sum
        assert torch.allclose(ours, _by_tie_group(w, data["scores64"][n]), rtol=1e-9, atol=0), n
        # the official float32 run: rounding noise, up to 3.2e-4 relative on the 8192-weight layer (its largest
        # weight scores 1.00032 there, not 1: total - running sum cancels in float32)
        assert torch.allclose(ours, _by_tie_group(w, data["scores32"][n]), rtol=1e-3, atol=1e-9), n
    assert ties > 0  # the fixture's weights have tied magnitudes: the scores of a tied pair are the same two


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_masks_match_the_official_code(sparsity):
    data = _official()
    expected = data["masks"][str(sparsity)]
    masks = bench_harness.prune(_network(data["weights"]), "lamp", sparsity)
    assert list(masks) == list(expected)
    for n in masks:
        assert torch.equal(masks[n], expected[n]), (n, int(masks[n].sum()), int(expected[n].sum()))
