"""PX against hand computation, gate order, errors, determinism and the schedule."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench_harness
from bench_harness.masking import full_masks, global_topk_masks, prunable_parameters
from bench_harness.models import build_model
from bench_harness.plugins import get_registry
from bench_harness_plugins.pruners_px import CURRENT, CVPR2024, PXViews
from bench_harness_plugins.relu_gates import UnsupportedActivation, relu_gates

W1 = torch.tensor([[1.0, -0.5], [0.5, 2.0], [-1.0, 1.0]])
W2 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.5, -0.5]])
W3 = torch.tensor([[1.0, -2.0], [0.5, 1.0]])
X = torch.tensor([[1.0, -2.0], [0.5, 0.25]])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(2, 3, bias=False)
        self.lin2 = nn.Linear(3, 2, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lin1.weight.copy_(W1)
            self.lin2.weight.copy_(W2)
            self.fc.weight.copy_(W3)

    def forward(self, x):
        return self.fc(torch.relu(self.lin2(F.relu(self.lin1(x)))))


def _views_scores(model, rules):
    prunable = list(prunable_parameters(model))
    views = PXViews(model, prunable, rules, "bn", ("fc",))
    masks = full_masks(dict(prunable_parameters(model)))
    views.set_masks(masks)
    for x in [X]:
        z1 = views.z1(x, views.gates(x))
        (z1 * views.z2(x)).sum().backward()
    return views.scores(masks)


def test_px_scores_by_hand():
    # gates from the real network (eval): g1 = 1[W1 x > 0], g2 = 1[W2 relu(W1 x) > 0], per example
    h1 = X @ W1.T
    g1 = (h1 > 0).float()
    g2 = ((h1.clamp(min=0) @ W2.T) > 0).float()
    # jvf: weights -> 1, classifier kept, input x², ReLU -> gate
    ones1, ones2 = torch.ones_like(W1), torch.ones_like(W2)
    z1 = ((((X ** 2) @ ones1.T) * g1) @ ones2.T * g2) @ W3.T  # [batch, 2]
    s = z1.sum(0)  # R = Σ_b z1_b · z2 (z2 identical for every example: all-ones input)
    # pk: weights squared, classifier kept, ReLUs removed, all-ones input: z2 = W3 W2² W1² 1
    A, B = W1 ** 2, W2 ** 2
    one = torch.ones(2)
    dA = torch.outer((s @ W3) @ B, one)  # ∂R/∂W1²
    dB = torch.outer(s @ W3, A @ one)  # ∂R/∂W2²
    dC = torch.outer(s, B @ A @ one)  # ∂R/∂W3 (classifier not squared)
    expected = {"lin1.weight": dA.abs() * W1 ** 2, "lin2.weight": dB.abs() * W2 ** 2, "fc.weight": dC.abs() * W3 ** 2}
    got = _views_scores(Tiny(), CURRENT)
    for n in expected:
        assert torch.allclose(got[n], expected[n], rtol=1e-5), n
    # one round of the pruner = global top-k of these scores
    masks = bench_harness.prune(Tiny(), "px", 0.5, data=(X, torch.tensor([0, 1])), rounds=1, examples_per_class=1)
    by_hand = global_topk_masks(expected, 0.5)
    assert all(torch.equal(masks[n], by_hand[n]) for n in expected)


def test_px_cvpr2024_scores_by_hand():
    # all views in train mode (no BN here), x into every view; jvf: prunable weights -> mask (= 1); pk: every
    # weight squared, classifier included; score = |∂R/∂θ²| θ⁴
    h1 = X @ W1.T
    g1 = (h1 > 0).float()
    g2 = ((h1.clamp(min=0) @ W2.T) > 0).float()
    z1 = ((X @ torch.ones_like(W1).T * g1) @ torch.ones_like(W2).T * g2) @ torch.ones_like(W3).T
    A, B, C = W1 ** 2, W2 ** 2, W3 ** 2
    # R = Σ_b z1_b · (C B A x_b)
    dA = sum(torch.outer((z1[b] @ C) @ B, X[b]) for b in range(2))
    dB = sum(torch.outer(z1[b] @ C, A @ X[b]) for b in range(2))
    dC = sum(torch.outer(z1[b], B @ A @ X[b]) for b in range(2))
    expected = {"lin1.weight": dA.abs() * W1 ** 4, "lin2.weight": dB.abs() * W2 ** 4, "fc.weight": dC.abs() * W3 ** 4}
    got = _views_scores(Tiny(), CVPR2024)
    for n in expected:
        assert torch.allclose(got[n], expected[n], rtol=1e-5), n


class ManyRelus(nn.Module):
    """One block calling ReLU four ways, one nn.ReLU instance twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.l[0](x))
        x = F.relu(self.l[1](x))
        x = torch.relu(self.l[2](x))
        x = self.act(self.l[3](x)).relu()
        return self.l[4](x)


def test_gates_are_recorded_and_applied_in_call_order():
    model = ManyRelus().eval()
    x = torch.randn(3, 4)
    gates = []
    with torch.no_grad(), relu_gates(model, "record", gates):
        out = model(x)
    assert torch.allclose(out, model(x))  # recording does not change the network
    # expected gates, computed by hand in call order (5 ReLU calls: act, F.relu, torch.relu, act, .relu)
    h, expected = x, []
    with torch.no_grad():
        for i in range(4):
            h = model.l[i](h)
            expected.append(h > 0)
            h = h.clamp(min=0)
            if i == 3:
                expected.append(h > 0)
    assert len(gates) == 5
    for g, e in zip(gates, expected):
        assert torch.equal(g, e)
    # applying a distinct gate per call: the output must use them in order
    fake = [torch.rand(3, 4) > 0.5 for _ in range(5)]
    with torch.no_grad(), relu_gates(model, "apply", list(fake)):
        got = model(x)
    h = x
    with torch.no_grad():
        for i in range(4):
            h = model.l[i](h) * fake[i]
        h = h * fake[4]
        assert torch.allclose(got, model.l[4](h))


def test_an_activation_px_cannot_gate_is_an_error_naming_the_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedActivation, match=r"module 1 \(GELU\) applies gelu"):
        bench_harness.prune(model, "px", 0.5, data=(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])))

    class SiluNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.silu(self.body(x)))

    with pytest.raises(UnsupportedActivation, match="silu"):
        bench_harness.prune(SiluNet(), "px", 0.5, data=(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])))


def _resnet_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_model(get_registry().get("model", "resnet20"), "resnet20", 4, 3, 16)
    g = torch.Generator().manual_seed(1)
    return model, (torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 4)


def test_px_is_deterministic_and_exact_on_resnet20():
    masks_a = bench_harness.prune(_resnet_and_data()[0], "px", 0.9, data=_resnet_and_data()[1], rounds=10)
    masks_b = bench_harness.prune(_resnet_and_data()[0], "px", 0.9, data=_resnet_and_data()[1], rounds=10)
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    total = sum(m.numel() for m in masks_a.values())
    assert sum(int(m.sum()) for m in masks_a.values()) == total - int((1.0 - (1.0 - 0.9)) * total)


@pytest.mark.parametrize("name", ["px", "px_cvpr2024"])
def test_reused_views_give_the_official_structures_masks(name):
    a = bench_harness.prune(_resnet_and_data()[0], name, 0.8, data=_resnet_and_data()[1], rounds=5)
    b = bench_harness.prune(_resnet_and_data()[0], name, 0.8, data=_resnet_and_data()[1], rounds=5,
                            reuse_views=False)
    assert all(torch.equal(a[n], b[n]) for n in a)  # same values, same operations: same masks, bit for bit


def test_the_two_variants_differ():
    a = bench_harness.prune(_resnet_and_data()[0], "px", 0.95, data=_resnet_and_data()[1], rounds=5)
    b = bench_harness.prune(_resnet_and_data()[0], "px_cvpr2024", 0.95, data=_resnet_and_data()[1], rounds=5)
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    assert inter / union < 0.9


@pytest.mark.parametrize("model_name, channels, size", [
    ("vgg11_bn", 3, 16), ("conv2", 3, 16), ("mlp", 1, 28), ("torchvision:resnet18", 3, 32)])
def test_px_runs_on_the_model_zoo(model_name, channels, size):
    torch.manual_seed(0)
    model = build_model(get_registry().get("model", model_name), model_name, 4, channels, size)
    x, y = torch.randn(8, channels, size, size), torch.arange(8) % 4
    masks = bench_harness.prune(model, "px", 0.9, data=(x, y), rounds=3)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - int((1.0 - (1.0 - 0.9)) * total)


@pytest.mark.parametrize("name", ["px", "px_cvpr2024"])
def test_passes_the_conformance_kit(name):
    from bench_harness.conformance import check_pruner

    failed = [c for c in check_pruner(get_registry().get("pruner", name)) if not c.passed]
    assert not failed, failed
