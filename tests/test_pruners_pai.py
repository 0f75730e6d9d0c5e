"""SNIP, GraSP, SynFlow and IMP against their definitions on networks small enough to compute by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench_harness
from bench_harness.conformance import check_pruner
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import make_context
from bench_harness_plugins.baselines.pai import grasp_scores, snip_scores, synflow_scores
from bench_harness_plugins.imp.pruner import imp_levels

W1 = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
W2 = torch.tensor([[1.0, -0.5], [-2.0, 3.0]])
X = torch.tensor([[1.0, 2.0]])
Y = torch.tensor([0])


def two_layer():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[1].weight.copy_(W2)
    return model


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow", "imp"])
def test_passes_the_conformance_kit(name):
    failed = [c for c in check_pruner(get_registry().get("pruner", name)) if not c.passed]
    assert not failed, failed


def test_snip_score_by_hand():
    # z = W2 h, h = W1 x; dL/dz = softmax(z) - e_y; dL/dW2 = dz h^T; dL/dW1 = (W2^T dz) x^T
    h = W1 @ X[0]  # [-1.5, 2.5]
    z = W2 @ h  # [-2.75, 10.5]
    dz = torch.softmax(z, 0) - torch.tensor([1.0, 0.0])
    g2 = torch.outer(dz, h)
    g1 = torch.outer(W2.T @ dz, X[0])
    model = two_layer()
    scores = snip_scores(model, dict(model.named_parameters()), [(X, Y)])
    assert torch.allclose(scores["0.weight"], (g1 * W1).abs(), atol=1e-6)
    assert torch.allclose(scores["1.weight"], (g2 * W2).abs(), atol=1e-6)


def test_snip_sums_gradients_over_batches():
    model = two_layer()
    params = dict(model.named_parameters())
    x2, y2 = torch.tensor([[0.0, -1.0]]), torch.tensor([1])
    both = snip_scores(model, params, [(X, Y), (x2, y2)])
    g = [torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values())) for x, y in ((X, Y), (x2, y2))]
    expected = ((g[0][0] + g[1][0]) * W1).abs()
    assert torch.allclose(both["0.weight"], expected, atol=1e-6)


def test_grasp_score_is_hessian_gradient_product_times_weight():
    model = two_layer()
    T = 200.0
    theta = torch.cat([W1.flatten(), W2.flatten()])

    def loss(flat):
        w1, w2 = flat[:4].view(2, 2), flat[4:].view(2, 2)
        return F.cross_entropy((X @ w1.T @ w2.T) / T, Y)

    g = torch.autograd.functional.jacobian(loss, theta)
    H = torch.autograd.functional.hessian(loss, theta)
    expected = (H @ g) * theta
    scores = grasp_scores(model, dict(model.named_parameters()), [(X, Y)], T)
    assert torch.allclose(scores["0.weight"].flatten(), expected[:4], rtol=1e-4, atol=1e-12)
    assert torch.allclose(scores["1.weight"].flatten(), expected[4:], rtol=1e-4, atol=1e-12)


def test_grasp_keeps_the_lowest_of_minus_hg_theta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    params = {n: p for n, p in model.named_parameters()}
    s = grasp_scores(model, params, [(x, y)], 200.0)
    flat = torch.cat([(-v).flatten() for v in s.values()])  # the paper's score: -(Hg) * theta
    keep = int(round(0.5 * flat.numel()))
    expected_kept = set(torch.argsort(flat)[:keep].tolist())  # lowest kept
    masks = bench_harness.prune(model, "grasp", 0.5, data=(x, y))
    got = torch.cat([m.flatten() for m in masks.values()]).nonzero().flatten().tolist()
    assert set(got) == expected_kept


def test_synflow_score_by_hand():
    # R = 1^T |W2| |W1| 1 ; dR/dW1_ij = sum_k |W2_ki| ; dR/dW2_ki = sum_j |W1_ij|
    model = two_layer()
    scores = synflow_scores(model, dict(model.named_parameters()), (2,), torch.device("cpu"))
    col = W2.abs().sum(0)  # [3.0, 3.5]
    row = W1.abs().sum(1)  # [1.5, 2.25]
    assert torch.allclose(scores["0.weight"].float(), W1.abs() * col[:, None])
    assert torch.allclose(scores["1.weight"].float(), W2.abs() * row[None, :])
    # weights restored with their signs
    assert torch.equal(model[0].weight, W1) and torch.equal(model[1].weight, W2)


def test_synflow_makes_batchnorm_statistics_non_negative_in_eval_mode():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[1].running_mean.copy_(torch.tensor([-2.0, 0.5]))
        model[1].running_var.copy_(torch.tensor([4.0, 1.0]))
        model[1].weight.copy_(torch.tensor([-1.0, 2.0]))
        model[1].bias.copy_(torch.tensor([0.5, -0.5]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = synflow_scores(model, {"2.weight": model[2].weight}, (2,), torch.device("cpu"))
    # layer-2 inputs: BN_eval(|W1| 1) with |mean|, |gamma|, |beta|
    h = W1.abs().sum(1)
    eps = model[1].eps
    bn = (h - torch.tensor([2.0, 0.5])) / torch.sqrt(torch.tensor([4.0, 1.0]) + eps) * torch.tensor([1.0, 2.0]) \
        + torch.tensor([0.5, 0.5])
    assert torch.allclose(scores["2.weight"].float(), (bn * 1.0).abs()[None, :], atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_synflow_iterative_reaches_the_target_and_default_is_100_rounds():
    cls = get_registry().get("pruner", "synflow")
    assert cls.Params().rounds == 100
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    masks = bench_harness.prune(model, "synflow", 0.9, data=torch.randn(4, 10), rounds=20)
    assert sum(int(m.sum()) for m in masks.values()) == 300 - int((1.0 - (1.0 - 0.9)) * 300)


def test_imp_levels_follow_the_target():
    assert imp_levels(0.8, 0.2) == pytest.approx([0.8])
    assert imp_levels(0.5, 0.2) == pytest.approx([0.8, 0.64, 0.512, 0.5])
    assert len(imp_levels(0.8 ** 9, 0.2)) == 9
    assert imp_levels(0.8 ** 9, 0.2)[-1] == pytest.approx(0.8 ** 9)


def test_imp_trains_prunes_and_rewinds_to_initialization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    class FakeTrainer:  # the training service's interface, with a deterministic "training"
        epochs = 3

        def fit(self, m, masks=None, epochs=None, start_epoch=0, **kw):
            calls.append(None if masks is None else sum(int(x.sum()) for x in masks.values()))
            with torch.no_grad():  # a deterministic perturbation, respecting masks
                for n, p in m.named_parameters():
                    p.add_(torch.linspace(-1, 1, p.numel()).view_as(p))
                    if masks and n in masks:
                        p.mul_(masks[n])

    ctx = make_context(model, seed=0, trainer=FakeTrainer())
    cls = get_registry().get("pruner", "imp")
    result = cls(cls.Params()).prune(model, 1 - 0.64, ctx)
    assert calls == [108, round(0.8 * 108)]  # level 1 dense, level 2 at density 0.8
    assert sum(int(m.sum()) for m in result.masks.values()) == round(0.64 * 108)
    for k, v in model.state_dict().items():
        assert torch.equal(v, init[k]), f"{k} not rewound"
    assert result.info["levels"] == 2 and not result.weights_changed
