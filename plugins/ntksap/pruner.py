"""NTK-SAP (Wang, Li, Sun, ICLR 2023) as the official code (github.com/YiteWang/NTK-SAP, commit e23682b,
``Pruners/pruners.py: NTKSAP``) computes it. docs/ntksap.md has the derivation and the measured agreement.

Each round of the exponential schedule (T = 20 in the paper and the official script) scores the masked network
by the sensitivity of a finite-difference estimate of the NTK trace to the mask m. For each of ``samples`` (R,
"multi-sampling") passes over ``examples`` random inputs in batches of ``batch_size``, each batch:

1. re-draws the network's weights θ from the initialisation (the official ``_initialize_weights``: every Conv and
   Linear weight Kaiming-normal, fan-in, gain √2; BatchNorm weight 1, bias 0; the other biases kept);
2. draws the input x ~ N(0, I) of the batch's shape ("data-free": no real data);
3. sets the BatchNorm statistics to the batch's (running stats reset, momentum 1, one train-mode pass without
   gradient, as the official code does), then evaluates in eval mode: z = f(x; θ ⊙ m) and, with a perturbation
   δ ~ N(0, I) of the prunable weights, z' = f(x; (θ + ε δ) ⊙ m);
4. accumulates ∂/∂m of Σ_batch ‖z − z'‖² (the mask is shared by both evaluations).

score = |accumulated gradient| ⊙ 1[m ≠ 0]; the weights the model holds are never used (the score depends on the
architecture and the mask alone). Every random draw comes from ``ctx.generator`` in the official order (weights in
module order, input, perturbations in prunable order), drawn in float32 and cast to the model's dtype, so the
float64 check of ``check_numerics`` sees the same samples.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Iterable, Mapping

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from bench_harness import Requirements, ScoreParams, ScorePruner, hookimpl, param

Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]  # 0: the parameter's default rule
Epsilon = Annotated[float, Field(gt=0.0, le=1e6)]  # a finite perturbation scale (NaN and inf refused)


def reinit_names(model: nn.Module, prunable: Iterable[str]) -> list[str]:
    """Weights re-drawn at every iteration, in draw order: the ``weight`` of every Conv/Linear module in
    ``model.modules()`` order (the official ``_initialize_weights``), then any other prunable weight."""
    names = [f"{mod_name}.weight" if mod_name else "weight" for mod_name, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and getattr(m, "weight", None) is not None]
    seen = set(names)
    return names + [n for n in prunable if n not in seen]


def kaiming_draw(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """``nn.init.kaiming_normal_`` with its defaults (fan-in, gain √2), float32, on the generator's device."""
    t = torch.empty(shape, dtype=torch.float32, device=generator.device)
    if t.dim() < 2:  # a prunable vector: no fan-in; N(0, 1)
        return t.normal_(0.0, 1.0, generator=generator)
    return nn.init.kaiming_normal_(t, generator=generator)


def batch_sizes(examples: int, batch_size: int) -> list[int]:
    """The official prune loader's batches: ``examples`` inputs in batches of ``batch_size``, the last one short."""
    if examples < 1 or batch_size < 1:
        raise ValueError(f"examples and batch_size must be >= 1, got {examples}, {batch_size}")
    full, rest = divmod(examples, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def set_batch_statistics(net: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                         seed: int = 0) -> None:
    """BatchNorm running statistics := the statistics of this batch (official: ``reset_BN``, momentum 1.0, one
    train-mode forward without gradient); the network is left in eval mode. A dropout in that train-mode pass
    draws from the global generator, forked and seeded with ``seed`` (the global state is left as it was)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = 1.0
        net.train()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                functional_call(net, dict(params), (x,))
        finally:
            for m, momentum in zip(bns, saved):
                m.momentum = momentum
    net.eval()


def ntk_perturbation_grads(net: nn.Module, masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                           perturbed: Mapping[str, torch.Tensor], x: torch.Tensor,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """∂/∂m of Σ_batch ‖f(x; θ ⊙ m) − f(x; θ' ⊙ m)‖² at the given mask, one iteration of the official score.

    ``weights``: θ for the re-drawn weights (prunable ones among them are multiplied by the mask); ``perturbed``:
    θ' = θ + ε δ for the prunable weights (keys of ``masks``); the other parameters and buffers are ``net``'s.
    BatchNorm statistics are set from the unperturbed network on ``x`` first (:func:`set_batch_statistics`).
    Signed gradients (the official score is the absolute value of their sum over iterations).
    """
    names = list(masks)
    m = {n: masks[n].to(weights[n].dtype).detach().requires_grad_(True) for n in names}
    orig = dict(weights)
    for n in names:
        orig[n] = weights[n] * m[n]
    with torch.no_grad():
        set_batch_statistics(net, {k: v.detach() for k, v in orig.items()}, x, seed)
    mod = dict(weights)
    for n in names:
        mod[n] = perturbed[n] * m[n]
    z = functional_call(net, orig, (x,))
    z_mod = functional_call(net, mod, (x,))
    jac_approx = (torch.norm(z - z_mod, dim=-1) ** 2).sum()
    grads = torch.autograd.grad(jac_approx, [m[n] for n in names], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(m[n])).detach() for n, g in zip(names, grads)}


def ntksap_scores(net: nn.Module, masks: Mapping[str, torch.Tensor],
                  input_batches: Iterable[Callable[[], torch.Tensor]], generator: torch.Generator,
                  epsilon: float, samples: int) -> dict[str, torch.Tensor]:
    """The official ``NTKSAP.score``: ``samples`` passes over the input batches, each batch a fresh draw of the
    weights, the input (``input_batches``: callables, so that the draw happens after the weights') and the
    perturbation; score = |Σ ∂/∂m| ⊙ 1[m ≠ 0]."""
    batches = list(input_batches)
    params = dict(net.named_parameters())
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    drawn = reinit_names(net, masks)
    bn_affine = [m for m in net.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
                 and m.affine]
    total = {n: torch.zeros(masks[n].shape, dtype=dtype, device=device) for n in masks}
    iteration = 0
    for _ in range(samples):
        for make_input in batches:
            iteration += 1
            with torch.no_grad():
                weights = {n: kaiming_draw(params[n].shape, generator).to(device=device, dtype=dtype) for n in drawn}
                for bn in bn_affine:
                    bn.weight.fill_(1.0)
                    bn.bias.fill_(0.0)
            x = make_input().to(device=device, dtype=dtype)
            with torch.no_grad():
                perturbed = {n: weights[n] + epsilon * torch.randn(
                    masks[n].shape, generator=generator, dtype=torch.float32, device=generator.device).to(
                    device=device, dtype=dtype) for n in masks}
            # the statistics pass's dropout (if any) seeded without drawing from the generator: the official order
            grads = ntk_perturbation_grads(net, masks, weights, perturbed, x,
                                           (generator.initial_seed() + 1_000_003 * iteration) % 2**63)
            for n in masks:
                total[n] += grads[n]
    return {n: (total[n] * (masks[n] != 0)).abs() for n in masks}


@dataclass
class NTKSAPParams(ScoreParams):
    rounds: Positive = param(20, "rounds T of the exponential schedule (official script scripts/run.sh: 20)")
    samples: Positive = param(1, "R, re-samplings of weights and inputs per round (official default 1; 5 in its "
                            "CIFAR-10 script)")
    epsilon: Epsilon = param(0.01, "perturbation scale ε of the finite-difference NTK estimate (official: 0.01)")
    examples: Count = param(0, "random inputs per sampling; 0 = 10 x the number of classes (official "
                             "prune_dataset_ratio = 10; the model's output width when the classes are not known)")
    batch_size: Positive = param(256, "inputs per iteration (official prune batch size 256); every batch re-draws the "
                                 "weights")


class NTKSAP(ScorePruner):
    """NTK-SAP (Wang et al., ICLR 2023), data-free, as the official code e23682b computes it."""

    name = "ntksap"
    description = ("NTK-SAP (Wang et al., ICLR 2023): data-free, mask gradient of a finite-difference NTK trace "
                   "on re-drawn weights and Gaussian inputs, 20 exponential rounds (official code e23682b)")
    requires = Requirements(data=False)
    Params = NTKSAPParams
    check_params = {"rounds": 5, "samples": 2, "check_numerics": True}  # every code path, a few seconds

    def prune(self, model, sparsity, ctx):
        self._nets: dict[int, nn.Module] = {}
        try:
            return super().prune(model, sparsity, ctx)
        finally:
            self._nets = {}

    def _net(self, model: nn.Module) -> nn.Module:
        # a working copy per model (check_numerics scores a float64 copy): the model's weights stay untouched
        net = self._nets.get(id(model))
        if net is None:
            net = self._nets[id(model)] = copy.deepcopy(model)
            for p in net.parameters():
                p.requires_grad_(False)
        return net

    def input_batches(self, model: nn.Module, ctx) -> list[Callable[[], torch.Tensor]]:
        shape = ctx.input_shape
        if shape is None:
            raise ValueError(f"{self.name} needs the input shape: pass data or input_shape to the context")
        examples = self.params.examples
        if examples <= 0:  # 10 x classes; without them in the context (Python API), the model's output width
            examples = 10 * (ctx.num_classes or _output_width(self._net(model), shape))
        g = ctx.generator
        return [(lambda b=b: torch.randn((b, *shape), generator=g, dtype=torch.float32, device=g.device))
                for b in batch_sizes(examples, self.params.batch_size)]

    def score(self, model, ctx):
        if not (self.params.epsilon > 0 and math.isfinite(self.params.epsilon)):
            raise ValueError(f"{self.name}: epsilon must be a positive number, got {self.params.epsilon}")
        if self.params.samples < 1:
            raise ValueError(f"{self.name}: samples must be >= 1, got {self.params.samples}")
        net = self._net(model)
        try:
            return ntksap_scores(net, {n: self.masks[n] for n in ctx.prunable}, self.input_batches(model, ctx),
                                 ctx.generator, self.params.epsilon, self.params.samples)
        finally:
            self._nets = {k: v for k, v in self._nets.items() if k == id(model) or _dtype(v) != torch.float64}


def _output_width(net: nn.Module, shape: tuple[int, ...]) -> int:
    p = next(net.parameters())
    net.eval()
    with torch.no_grad():
        return int(net(torch.zeros((2, *shape), dtype=p.dtype, device=p.device)).shape[-1])


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@dataclass
class NTKSAPDataParams(ScoreParams):
    rounds: Positive = param(20, "rounds T of the exponential schedule (official script scripts/run.sh: 20)")
    samples: Positive = param(1, "R, passes over the scoring batches per round, each batch with re-drawn weights")
    epsilon: Epsilon = param(0.01, "perturbation scale ε of the finite-difference NTK estimate (official: 0.01)")
    batches: Count = param(0, "scoring batches to use; 0 = all the scoring data")


class NTKSAPData(NTKSAP):
    """NTK-SAP on the real scoring images instead of Gaussian noise (ours; the official code has noise only)."""

    name = "ntksap_data"
    description = ("NTK-SAP with the scoring images as inputs instead of Gaussian noise (our option; weights still "
                   "re-drawn every batch)")
    requires = Requirements(data=True, labels=False)
    Params = NTKSAPDataParams
    check_params = {"rounds": 5, "samples": 2}

    def input_batches(self, model, ctx):
        out = []
        for i, (x, _) in enumerate(ctx.data()):
            if self.params.batches and i >= self.params.batches:
                break
            out.append(lambda x=x: x)
        if not out:
            raise ValueError(f"{self.name} got no scoring images")
        return out


@hookimpl
def bench_register_pruners():
    return [NTKSAP, NTKSAPData]
