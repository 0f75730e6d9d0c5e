"""GraSP (plugins/baselines/pai.py) on models whose ops lack a second derivative: Vision Transformers (fused
attention kernels) and MobileNetV3 (hardsigmoid / hardswish). Scoring runs in ``double_backprop_scoring``: the math
attention kernel, and Hardsigmoid / Hardswish modules swapped for twice-differentiable equivalents while scoring."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import bench_harness
from bench_harness.contract import double_backprop as dbp
from bench_harness.contract import masking
from bench_harness.contract.pruning import make_context
from bench_harness_plugins.baselines import pai


def _data(n=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 32, 32, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g))]


def _vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


def test_grasp_prunes_a_vision_transformer():
    model = _vit()
    masks = bench_harness.prune(model, "grasp", 0.9, data=_data())
    assert 1 - masking.global_density(masks) == pytest.approx(0.9, abs=1e-3)
    # the attention projections were scored (a Hessian-gradient product through attention), not skipped
    attn = [n for n in masks if "self_attention.in_proj_weight" in n]
    assert attn and all(0 < masks[n].sum() < masks[n].numel() for n in attn)


def test_vit_scores_by_double_backprop_match_the_math_kernels_hessian_gradient_product():
    model = _vit().double().eval()
    prunable = masking.prunable_parameters(model)
    data = _data(dtype=torch.float64)
    with dbp.double_backprop_scoring(model) as swapped:
        ours = pai.grasp_scores(model, prunable, data, 200.0)
    assert swapped == []
    # H g by finite differences of the first-order gradient along g (float64), on the attention projection
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    params = list(prunable.values())

    def grad_at(shift):
        with torch.no_grad():
            for p, s in zip(params, shift):
                p.add_(s)
        x, y = data[0]
        gs = torch.autograd.grad(F.cross_entropy(model(x) / 200.0, y), params)
        with torch.no_grad():
            for p, s in zip(params, shift):
                p.sub_(s)
        return gs

    g = grad_at([torch.zeros_like(p) for p in params])
    eps = 1e-4
    plus, minus = grad_at([eps * gi for gi in g]), grad_at([-eps * gi for gi in g])
    i = list(prunable).index(name)
    hg = (plus[i] - minus[i]) / (2 * eps)
    torch.testing.assert_close(ours[name], hg * prunable[name].detach(), rtol=1e-4, atol=1e-12)


class _RefHardsigmoid(nn.Module):  # the textbook piecewise definition, written independently
    def forward(self, x):
        return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), x / 6 + 0.5))


class _RefHardswish(nn.Module):
    def forward(self, x):
        return x * _RefHardsigmoid()(x)


def _replace(model, table):
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) in table:
                parent._modules[name] = table[type(child)]()


def test_mobilenet_v3_scores_equal_a_twice_differentiable_implementation_and_the_model_is_restored():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    reference = copy.deepcopy(model)
    _replace(reference, {nn.Hardsigmoid: _RefHardsigmoid, nn.Hardswish: _RefHardswish})
    originals = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Hardsigmoid, nn.Hardswish))}
    assert any(n.endswith("block.1.scale_activation") for n in originals)  # SqueezeExcitation's Hardsigmoid
    data = _data(n=2)
    grasp = pai.Grasp()
    ctx = make_context(model, batches=lambda: iter(data))
    ours = grasp.score(model, ctx)
    expected = pai.grasp_scores(reference.eval(), masking.prunable_parameters(reference), data, 200.0)
    assert list(ours) == list(expected)
    for n in ours:  # float32 (float64 convolutions are slow on a CPU): the two forms round differently
        scale = float(expected[n].abs().max())
        torch.testing.assert_close(ours[n], expected[n], rtol=1e-3, atol=1e-4 * scale, msg=n)
    assert {n: m for n, m in model.named_modules() if isinstance(m, (nn.Hardsigmoid, nn.Hardswish))} == originals
    assert not any(isinstance(m, (dbp.TwiceDifferentiableHardsigmoid, dbp.TwiceDifferentiableHardswish))
                   for m in model.modules())


def test_the_twice_differentiable_activations_compute_atens_function():
    x = torch.cat([torch.linspace(-5, 5, 1001), torch.tensor([-3.0, 3.0, 0.0])])
    assert torch.equal(dbp.TwiceDifferentiableHardsigmoid()(x), F.hardsigmoid(x))
    assert torch.equal(dbp.TwiceDifferentiableHardswish()(x), F.hardswish(x))
    inside = torch.linspace(-2.9, 2.9, 59, dtype=torch.float64, requires_grad=True)
    for ours, theirs in ((dbp.TwiceDifferentiableHardsigmoid(), F.hardsigmoid),
                         (dbp.TwiceDifferentiableHardswish(), F.hardswish)):
        (g1,) = torch.autograd.grad(ours(inside).sum(), inside, create_graph=True)
        (g2,) = torch.autograd.grad(theirs(inside).sum(), inside)
        torch.testing.assert_close(g1, g2)
    (g1,) = torch.autograd.grad(dbp.TwiceDifferentiableHardswish()(inside).sum(), inside, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), inside)  # the second derivative of hardswish: 1/3 inside (-3, 3)
    torch.testing.assert_close(g2, torch.full_like(g2, 1 / 3))


class _CustomSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(x))


def test_an_op_without_a_second_derivative_is_a_clear_error_naming_the_module():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), _CustomSE(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    hardswish = model[1]
    with pytest.raises(dbp.DoubleBackpropError, match=r"aten::hardsigmoid_backward.*2 \(_CustomSE\) call it.*"
                                                       r"\(x \+ 3\)\.clamp\(0, 6\) / 6.*snip"):
        bench_harness.prune(model, "grasp", 0.5, data=_data())
    assert model[1] is hardswish
