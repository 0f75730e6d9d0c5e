"""NTK-SAP: the score against closed forms on linear networks, fidelity to the official code (scores of every
round and the final masks, stored in tests/fixtures/ntksap by scripts/ntksap_official_fixtures.py from
YiteWang/NTK-SAP e23682b), and the method's definition (the model's weights never enter the score)."""
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import bench_harness
from bench_harness import DegenerateScoresWarning
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import make_context
from bench_harness_plugins.ntksap.pruner import (
    NTKSAP,
    NTKSAPData,
    batch_sizes,
    ntk_perturbation_grads,
    ntksap_scores,
    reinit_names,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ntksap"
D = torch.float64


def _linear2(U, V):
    net = nn.Sequential(nn.Linear(U.shape[1], U.shape[0], bias=False), nn.Linear(V.shape[1], V.shape[0], bias=False))
    net = net.to(D)
    with torch.no_grad():
        net[0].weight.copy_(U)
        net[1].weight.copy_(V)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_one_layer_score_by_hand():
    # f(x) = (W ∘ M) x, θ' = W + ε δ: z − z' = −ε (δ ∘ M) x, so ∂/∂M Σ‖z − z'‖² = 2 ε² δ ∘ Σ_x [(δ ∘ M) x] xᵀ,
    # whatever W is. δ = [1, −2], M = 1, x = [1, 1], ε = 0.1: (δ ∘ M) x = −1, gradient 0.02 · [1, −2] · (−1).
    W = torch.tensor([[0.3, -0.7]], dtype=D)
    delta = torch.tensor([[1.0, -2.0]], dtype=D)
    net = nn.Sequential(nn.Linear(2, 1, bias=False)).to(D)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.tensor([[1.0, 1.0]], dtype=D)
    g = ntk_perturbation_grads(net, {"0.weight": torch.ones(1, 2, dtype=torch.bool)}, {"0.weight": W},
                               {"0.weight": W + 0.1 * delta}, x)
    torch.testing.assert_close(g["0.weight"], torch.tensor([[-0.02, 0.04]], dtype=D), rtol=1e-9, atol=1e-12)


def test_two_layer_score_closed_form():
    # f(x) = (V ∘ A)(U ∘ B) x; e = V1 U1 x − V2 U2 x with U1 = U∘B, V1 = V∘A, U2 = U'∘B, V2 = V'∘A:
    # ∂L/∂A = 2 [V ∘ (Eᵀ H1) − V' ∘ (Eᵀ H2)],  ∂L/∂B = 2 [U ∘ ((E V1)ᵀ X) − U' ∘ ((E V2)ᵀ X)]  (H = X Uᵀ, batch rows)
    U = torch.tensor([[1.0, -0.5, 2.0], [0.5, 1.5, -1.0]], dtype=D)
    V = torch.tensor([[0.7, -1.2], [2.0, 0.4]], dtype=D)
    dU = torch.tensor([[0.3, 1.0, -0.6], [-1.1, 0.2, 0.8]], dtype=D)
    dV = torch.tensor([[-0.4, 0.9], [1.3, -0.2]], dtype=D)
    eps = 0.05
    Up, Vp = U + eps * dU, V + eps * dV
    B = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # a pruned entry: its gradient still exists
    A = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    X = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.5]], dtype=D)
    U1, V1, U2, V2 = U * B, V * A, Up * B, Vp * A
    H1, H2 = X @ U1.T, X @ U2.T
    E = H1 @ V1.T - H2 @ V2.T
    dA = 2 * (V * (E.T @ H1) - Vp * (E.T @ H2))
    dB = 2 * (U * ((E @ V1).T @ X) - Up * ((E @ V2).T @ X))
    g = ntk_perturbation_grads(_linear2(U, V), {"0.weight": B, "1.weight": A}, {"0.weight": U, "1.weight": V},
                               {"0.weight": Up, "1.weight": Vp}, X)
    torch.testing.assert_close(g["0.weight"], dB, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(g["1.weight"], dA, rtol=1e-10, atol=1e-13)
    assert dA[0, 1] != 0  # the pruned weight has a gradient; the score removes it (below)
    # no perturbation: no difference, no gradient
    g0 = ntk_perturbation_grads(_linear2(U, V), {"0.weight": B, "1.weight": A}, {"0.weight": U, "1.weight": V},
                                {"0.weight": U, "1.weight": V}, X)
    assert all(float(t.abs().max()) == 0.0 for t in g0.values())


def test_scores_are_zero_on_pruned_weights_and_sum_over_samples():
    net = _linear2(torch.zeros(2, 3, dtype=D), torch.zeros(2, 2, dtype=D))
    masks = {"0.weight": torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool),
             "1.weight": torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)}
    g = torch.Generator().manual_seed(3)
    scores = ntksap_scores(net, masks, [lambda: torch.randn(4, 3, generator=g)], g, 0.01, samples=2)
    assert float(scores["0.weight"][0, 2]) == 0.0 and float(scores["1.weight"][0, 1]) == 0.0
    assert bool((scores["0.weight"][masks["0.weight"]] > 0).all())
    # two samplings = |sum of the two iterations' signed gradients|, with the draws in the official order
    g = torch.Generator().manual_seed(3)
    total = {n: torch.zeros_like(m, dtype=D) for n, m in masks.items()}
    for _ in range(2):
        w = {n: nn.init.kaiming_normal_(torch.empty(m.shape), generator=g).to(D) for n, m in masks.items()}
        x = torch.randn(4, 3, generator=g).to(D)
        wp = {n: w[n] + 0.01 * torch.randn(m.shape, generator=g).to(D) for n, m in masks.items()}
        for n, t in ntk_perturbation_grads(net, masks, w, wp, x).items():
            total[n] += t
    for n in masks:
        torch.testing.assert_close(scores[n], (total[n] * masks[n]).abs())


def test_batches_and_draw_order():
    assert batch_sizes(13, 8) == [8, 5] and batch_sizes(100, 256) == [100] and batch_sizes(512, 256) == [256, 256]
    with pytest.raises(ValueError):
        batch_sizes(0, 8)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert reinit_names(net, ["3.weight"]) == ["0.weight", "3.weight"]  # module order, prunable or not


# ---------------------------------------------------------------------------------------------- official code
def _build(case):
    """The fixture script's networks, from plain torch.nn layers (the same state names, without masks)."""
    if case["kind"] == "mlp":
        c, h, w = case["input"]
        mods = [nn.Flatten(), nn.Linear(c * h * w, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                nn.Linear(8, case["classes"])]
    else:
        c = case["input"][0]
        mods = [nn.Conv2d(c, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, case["classes"])]
    return nn.Sequential(*mods)


def _fixture(name):
    return torch.load(FIXTURES / f"{name}.pt")


def _model(fx, dtype):
    model = _build(fx["case"]).to(dtype)
    model.load_state_dict(fx["init"])
    return model


def _relative_error(ours, official):
    return max(float((ours[n].double() - official[n].double()).abs().max() / official[n].double().abs().max())
               for n in official)


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_iteration_matches_official(name, dtype):
    """The official iteration's own tensors (re-drawn θ, input, θ + εδ) into our function: the same scores.
    float64 agrees with the official float32 as closely as float32 does (rounding of the official run)."""
    fx = _fixture(name)
    one = fx["one"]
    assert one["stats_pass_weights_equal"]  # the statistics pass ran on the eval pass's weights
    net = _model(fx, dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    names = fx["weight_names"]
    masks = {n: torch.ones_like(one["weights"][n], dtype=torch.bool) for n in names}
    g = ntk_perturbation_grads(net, masks, {n: one["weights"][n].to(dtype) for n in names},
                               {n: one["perturbed"][n].to(dtype) for n in names}, one["x"].to(dtype))
    assert _relative_error({n: g[n].abs() for n in names}, one["scores"]) < 1e-4


def _prune_recording(fx, dtype, **extra):
    case = fx["case"]
    model = _model(fx, dtype)
    ctx = make_context(model, seed=case["prune_seed"], input_shape=tuple(case["input"]), num_classes=case["classes"])
    assert list(ctx.prunable) == fx["weight_names"]
    pruner = NTKSAP(NTKSAP.make_params({"rounds": case["rounds"], "samples": case["samples"],
                                        "epsilon": case["epsilon"], "examples": sum(case["batches"]),
                                        "batch_size": case["batches"][0], **extra}))
    rounds = []
    score = pruner.score

    def recording(scored, ctx):
        out = score(scored, ctx)
        if scored is model:  # not check_numerics' float64 copy
            rounds.append(out)
        return out

    pruner.score = recording
    return pruner.prune(model, 1 - case["density"], ctx), rounds


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounds_match_official(name, dtype):
    """The whole prune from a generator seeded as the official global RNG: the same draws (weights, inputs,
    perturbations, in the official order), the same scores every round, the same final masks."""
    fx = _fixture(name)
    masks, rounds = _prune_recording(fx, dtype)
    assert len(rounds) == len(fx["rounds"]) == fx["case"]["rounds"]
    for ours, official in zip(rounds, fx["rounds"]):
        assert _relative_error(ours, official["scores"]) < 1e-4
    for n in fx["weight_names"]:
        assert torch.equal(masks[n], fx["rounds"][-1]["masks"][n]), n
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == total - int((1 - fx["case"]["density"]) * total)  # the official count, k = int((1 - d) N)


def test_check_numerics_agrees_on_the_official_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateScoresWarning)
        masks, _ = _prune_recording(_fixture("conv"), torch.float32, check_numerics=True)
    assert torch.equal(masks["0.weight"], _fixture("conv")["rounds"][-1]["masks"]["0.weight"])


# ---------------------------------------------------------------------------------------------- definition
def _conv_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def test_weights_never_enter_the_score():
    """The weights are re-drawn every iteration: two initialisations of one architecture (equal biases) get the
    same masks; the model's weights, biases and BatchNorm statistics are left as they were."""
    a, b = _conv_net(0), _conv_net(1)
    with torch.no_grad():
        for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
            if not n.endswith(".weight"):
                pb.copy_(pa)
    state = {k: v.clone() for k, v in b.state_dict().items()}
    params = {"rounds": 3, "examples": 12, "batch_size": 5}
    ma = NTKSAP(NTKSAP.make_params(params)).prune(a, 0.8, make_context(a, seed=4, input_shape=(3, 5, 5),
                                                                       num_classes=3))
    mb = NTKSAP(NTKSAP.make_params(params)).prune(b, 0.8, make_context(b, seed=4, input_shape=(3, 5, 5),
                                                                       num_classes=3))
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
    mc = NTKSAP(NTKSAP.make_params(params)).prune(b, 0.8, make_context(b, seed=5, input_shape=(3, 5, 5),
                                                                       num_classes=3))
    assert any(not torch.equal(ma[n], mc[n]) for n in ma)  # another seed, other draws


def test_registered_and_python_api():
    assert get_registry().get("pruner", "ntksap") is NTKSAP
    assert get_registry().get("pruner", "ntksap_data") is NTKSAPData
    model = _conv_net(0)
    # no data: examples = 10 x the model's output width (3), input shape given
    masks = bench_harness.prune(model, "ntksap", 0.9, input_shape=(3, 5, 5), rounds=2)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - int(0.9 * total)
    data = (torch.randn(6, 3, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2]))
    masks = bench_harness.prune(_conv_net(0), "ntksap_data", 0.9, data=data, rounds=2)
    assert sum(int(m.sum()) for m in masks.values()) == total - int(0.9 * total)


def test_bad_parameters():
    model = _conv_net(0)
    for params in ({"epsilon": 0.0}, {"samples": 0}):
        with pytest.raises(ValueError):
            NTKSAP(NTKSAP.make_params(params)).prune(model, 0.5, make_context(model, input_shape=(3, 5, 5)))
    with pytest.raises(ValueError, match="input shape"):
        NTKSAP().prune(model, 0.5, make_context(model))


def test_dropout_in_the_statistics_pass_is_seeded_by_the_context():
    """The train-mode statistics pass runs a dropout on the global generator: forked and seeded, so that the masks
    depend on the context's seed alone and the global state is untouched."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    masks = []
    for global_seed in (1, 2):
        model = net()
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        masks.append(NTKSAP(NTKSAP.make_params({"rounds": 2, "examples": 8})).prune(
            model, 0.7, make_context(model, seed=3, input_shape=(6,), num_classes=3)))
        assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
