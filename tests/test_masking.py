import pytest
import torch
from torch import nn

from bench_harness.contract import masking


def test_global_topk_keeps_highest_scores_across_layers():
    scores = {"a": torch.tensor([[0.1, 0.9], [0.5, 0.3]]), "b": torch.tensor([0.8, 0.2, 0.7, 0.4])}
    # 8 scores, density 0.5 -> keep the 4 highest: 0.9, 0.8, 0.7, 0.5
    masks = masking.global_topk_masks(scores, 0.5)
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False, True, False]
    assert masks["a"].dtype == torch.bool


def test_layerwise_topk_keeps_the_same_density_per_layer():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.3]), "b": torch.tensor([8.0, 2.0, 7.0, 4.0])}
    masks = masking.layerwise_topk_masks(scores, 0.5)
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [True, False, True, False]


def test_tie_rule_keeps_earlier_entries_and_exact_count():
    scores = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([1.0, 0.0, 1.0])}
    masks = masking.global_topk_masks(scores, 0.5)  # keep round(3) = 3 of the four ones: the first three
    assert masks["a"].tolist() == [True, True, True]
    assert masks["b"].tolist() == [False, False, False]


def test_nan_scores_are_pruned_first():
    masks = masking.global_topk_masks({"a": torch.tensor([float("nan"), 0.0, -1.0])}, 2 / 3)
    assert masks["a"].tolist() == [False, True, True]


def test_exponential_schedule():
    sched = masking.exponential_schedule(0.01, 4)
    assert sched == pytest.approx([0.01 ** 0.25, 0.01 ** 0.5, 0.01 ** 0.75, 0.01])
    with pytest.raises(ValueError):
        masking.exponential_schedule(0.1, 0)


def test_restricted_scores_never_revive_pruned_weights():
    scores = {"a": torch.tensor([5.0, 1.0, 2.0, 3.0])}
    masks = {"a": torch.tensor([False, True, True, True])}
    new = masking.global_topk_masks(masking.restrict_scores(scores, masks), 0.5)
    assert new["a"].tolist() == [False, False, True, True]


def test_prunable_set_and_exclusions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert list(masking.prunable_parameters(model)) == ["0.weight", "3.weight", "4.weight"]
    assert list(masking.prunable_parameters(model, exclude_first=True)) == ["3.weight", "4.weight"]
    assert list(masking.prunable_parameters(model, exclude_last=True)) == ["0.weight", "3.weight"]
    assert list(masking.prunable_parameters(model, True, True)) == ["3.weight"]


def test_densities_and_collapse():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.zeros(4, dtype=torch.bool)}
    assert masking.layer_densities(masks) == {"a": 0.25, "b": 0.0}
    assert masking.global_density(masks) == 0.125
    assert masking.collapsed_layers(masks) == ["b"]


def test_validate_masks_names_every_problem():
    prunable = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    problems = masking.validate_masks({"a": torch.ones(2, 2), "c": torch.ones(3, dtype=torch.bool)}, prunable,
                                      0.5, 1e-3)
    text = " ".join(problems)
    assert "outside the prunable set" in text and "'c'" in text
    assert "no mask for prunable parameters" in text and "'b'" in text
    assert "dtype torch.float32" in text
    ok = {"a": torch.tensor([[True, False], [True, False]]), "b": torch.tensor([True, False, False])}
    assert masking.validate_masks(ok, prunable, 4 / 7 + 1e-9, 1e-3) == []
    off = masking.validate_masks(ok, prunable, 0.9, 1e-3)
    assert off and "target" in off[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_during_training(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = masking.global_topk_masks({n: p.abs() for n, p in masking.prunable_parameters(model).items()}, 0.3)
    enforcer = masking.MaskEnforcer(model, masks)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=1e-2))
    params = dict(model.named_parameters())
    for step in range(20):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for n, m in masks.items():
            assert torch.all(params[n].grad[~m] == 0)
        opt.step()
        enforcer.enforce()
        for n, m in masks.items():
            assert torch.all(params[n][~m] == 0), f"step {step}: pruned weights of {n} moved"
            assert torch.all(params[n][m] != 0)


def test_reference_rule_prunes_ties_and_uses_int_k():
    # k = int((1 - 0.5) * 6) = 3 pruned: threshold = 3rd smallest = 1.0; every score <= 1.0 is pruned (4 of them)
    scores = {"a": torch.tensor([1.0, 1.0, 3.0]), "b": torch.tensor([0.5, 1.0, 2.0])}
    masks = masking.reference_threshold_masks(scores, 0.5)
    assert masks["a"].tolist() == [False, False, True] and masks["b"].tolist() == [False, False, True]
    # k < 1: nothing pruned
    assert all(bool(m.all()) for m in masking.reference_threshold_masks(scores, 0.9).values())
    # layer-wise: each layer its own k
    local = masking.reference_threshold_masks({"a": torch.tensor([3.0, 1.0, 2.0, 0.0])}, 0.5, "layerwise")
    assert local["a"].tolist() == [True, False, True, False]
    # the same as top-k when no scores tie
    distinct = {"a": torch.tensor([0.3, 0.9, 0.1, 0.4]), "b": torch.tensor([0.7, 0.2, 0.5, 0.8])}
    ref = masking.reference_threshold_masks(distinct, 0.5)
    exact = masking.global_topk_masks(distinct, 0.5)
    assert all(torch.equal(ref[n], exact[n]) for n in distinct)


def test_reference_rule_honours_the_target_on_the_final_round():
    scores = {"a": torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 3.0])}
    # k = int(0.5 * 6) = 3: the plain reference rule prunes all four zeros (ties), overshooting
    assert int(masking.reference_threshold_masks(scores, 0.5)["a"].sum()) == 2
    honoured = masking.reference_threshold_masks(scores, 0.5, honour_target=True)["a"]
    assert honoured.tolist() == [False, False, False, True, True, True]
