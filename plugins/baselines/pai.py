"""Pruning-at-initialization baselines as the Synaptic-Flow reference code (ganguli-lab/Synaptic-Flow) computes
them: SNIP, GraSP and SynFlow. Scores are pure functions of (model, data); masking is the core's shared code.

Conventions of the reference kept here: the model is scored in eval() mode (``prune_loop`` calls
``model.eval()``); pruned weights are zero while a later round scores the network; scores are "higher is
kept". Differences, on purpose: the top-k tie rule of the core (exact counts), and scores are not divided by
their sum (a positive constant does not change the ranking).

GraSP differentiates twice (H g by double backprop), so it scores inside ``bench_harness.double_backprop_scoring``
(:mod:`bench_harness.contract.double_backprop`): the math
attention kernel (the fused CPU/CUDA kernels have no double backward: Vision Transformers), and ``nn.Hardsigmoid``
(no double backward in ATen: MobileNetV3's SqueezeExcitation) and ``nn.Hardswish`` modules swapped, while scoring
only, for the same functions written in twice-differentiable ops (``min(max(x + 3, 0), 6) / 6``, ATen's own
forward formula); the model gets its modules back afterwards. Any other op without a second derivative is a
:class:`DoubleBackpropError` naming the op and the module that calls it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench_harness import Requirements, ScoreParams, ScorePruner, double_backprop_scoring, hookimpl, param


def _batches(ctx, limit: int):
    for i, (x, y) in enumerate(ctx.data()):
        if limit and i >= limit:
            break
        yield x, y


@dataclass
class SnipParams(ScoreParams):
    batches: int = param(0, "scoring batches to use; 0 = all the scoring data (default 10 x classes examples, "
                            "as Synaptic-Flow's prune_dataset_ratio=10)")
    train_mode: bool = param(False, "score in train() mode (the reference scores in eval())")


def snip_scores(model: nn.Module, prunable: dict[str, nn.Parameter], batches) -> dict[str, torch.Tensor]:
    """|dL/dm| = |g ⊙ θ| with the cross-entropy gradient summed over the batches."""
    grads = {n: torch.zeros_like(p) for n, p in prunable.items()}
    params = list(prunable.values())
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        for n, g in zip(prunable, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                grads[n] += g
    return {n: (grads[n] * p.detach()).abs() for n, p in prunable.items()}


class Snip(ScorePruner):
    """SNIP (Lee et al. 2019): connection sensitivity |∂L/∂m| = |g ⊙ θ| on labelled batches."""

    name = "snip"
    description = "SNIP connection sensitivity |g*w| (Lee et al. 2019); iterative with rounds > 1"
    requires = Requirements(data=True, labels=True)
    Params = SnipParams

    def score(self, model, ctx):
        model.train(self.params.train_mode)
        return snip_scores(model, ctx.prunable, _batches(ctx, self.params.batches))


@dataclass
class GraspParams(SnipParams):
    temperature: float = param(200.0, "softmax temperature dividing the logits (reference: 200)")


def grasp_scores(model: nn.Module, prunable: dict[str, nn.Parameter], batches: list, temperature: float,
                 masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """(H g) ⊙ θ by double backprop; keeping the HIGHEST is GraSP's "remove the top of −(H g) ⊙ θ".

    g is the gradient of the temperature-scaled loss summed over the batches (without graph); H g is the
    gradient of Σ_batches (g_stopped · g_batch). Gradients are restricted to the current masks, as the
    reference's gradients with respect to masked parameters are.
    """
    names, params = list(prunable), list(prunable.values())

    def masked(grads):
        if masks is None:
            return list(grads)
        return [g * masks[n] for n, g in zip(names, grads)]

    stopped = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y)
        grads = masked(torch.autograd.grad(loss, params))
        stopped = [s + g.detach() for s, g in zip(stopped, grads)]
    hg = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y)
        grads = masked(torch.autograd.grad(loss, params, create_graph=True))
        z = sum((s * g).sum() for s, g in zip(stopped, grads))
        hg = [h + d for h, d in zip(hg, torch.autograd.grad(z, params))]
    return {n: h * p.detach() for n, h, p in zip(names, hg, params)}


class Grasp(ScorePruner):
    """GraSP (Wang et al. 2020): preserve gradient flow; score −(H g) ⊙ θ, lowest kept, temperature 200."""

    name = "grasp"
    description = "GraSP gradient-signal preservation, -(Hg)*w lowest kept, T=200 (Wang et al. 2020)"
    requires = Requirements(data=True, labels=True)
    Params = GraspParams

    def score(self, model, ctx):
        model.train(self.params.train_mode)
        batches = list(_batches(ctx, self.params.batches))
        with double_backprop_scoring(model, probe=batches[0][0][:2] if batches else None):
            return grasp_scores(model, ctx.prunable, batches, self.params.temperature, self.masks)


@dataclass
class SynflowParams(ScoreParams):
    rounds: int = param(100, "rounds of the exponential schedule (reference: 100)")
    double: bool = param(False, "score in float64 (deep networks can overflow float32 products)")


def synflow_scores(model: nn.Module, prunable: dict[str, nn.Parameter], input_shape: tuple[int, ...],
                   device: torch.device, double: bool = False) -> dict[str, torch.Tensor]:
    """|∂R/∂θ ⊙ θ| with R = Σ f(1; |θ|): every parameter AND buffer made non-negative (BN running statistics
    included, as the reference's state_dict().abs_()), model in eval(), one all-ones input."""
    state = model.state_dict(keep_vars=True)
    signs = {}
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.is_floating_point():
                signs[name] = torch.sign(tensor)
                tensor.abs_()
    if double:
        model.double()
    try:
        model.eval()
        dtype = torch.float64 if double else torch.float32
        x = torch.ones((1, *input_shape), device=device, dtype=dtype)
        params = list(prunable.values())
        grads = torch.autograd.grad(model(x).sum(), params, allow_unused=True)
        scores = {n: ((g if g is not None else torch.zeros_like(p)) * p.detach()).abs().double()
                  for (n, p), g in zip(prunable.items(), grads)}
    finally:
        if double:
            model.float()
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                if name in signs:
                    tensor.mul_(signs[name].to(tensor.dtype))
    return scores


class Synflow(ScorePruner):
    """SynFlow (Tanaka et al. 2020): data-free iterative synaptic flow conservation, 100 rounds."""

    name = "synflow"
    description = "SynFlow data-free |dR/dw * w| over 100 exponential rounds (Tanaka et al. 2020)"
    requires = Requirements(data=False)
    Params = SynflowParams
    sparsity_tolerance = 1e-3

    def score(self, model, ctx):
        shape = ctx.input_shape
        if shape is None:
            raise ValueError("synflow needs the input shape: pass data (or input_shape) to the context")
        return synflow_scores(model, ctx.prunable, shape, ctx.device, self.params.double)


@hookimpl
def bench_register_pruners():
    return [Snip, Grasp, Synflow]
