"""Strong lottery tickets: masks learned over frozen random weights (regime ``mask_learning``).

- ``slt_frozen``: the strong lottery ticket inside a partially frozen random network (Otsuka et al., TMLR 2025;
  official code Hikari43/slt_within_frozen_network): a fraction p of the weights is frozen as pruned, a fraction
  r as kept, per layer as an allocation rule (``epl``, ``erk``, ``igq``) says, and a mask over the free weights
  is learned with the global variant of Edge-Popup. ``pruning_ratio = locking_ratio = 0`` is global Edge-Popup;
  ``locking_ratio = 0`` is the SLT in a randomly pruned network.
- ``edge_popup``: Edge-Popup (Ramanujan et al., CVPR 2020): the same score training with a layer-wise top-k
  (every layer keeps ``n - int(n·s)`` of its weights), nothing frozen.
- ``slt_random_mask``: the control: a random mask of the same density over the same frozen random weights, no
  search (``slt_frozen`` with p = s, which leaves nothing to learn), BatchNorm statistics recomputed.

How the search runs (as the official code computes it):

- weights are drawn anew (``weight_init``: ``kaiming_uniform``, the official default, fan-in/ReLU gain;
  ``signed_constant``, ±sqrt(2/fan_in) with random signs, the official ResNet-50/ImageNet setting; or ``keep``:
  the model's weights as given), scores too (``score_init``: ``kaiming_normal``, the official default); frozen
  states -1/0/+1 sit at positions drawn by one random permutation per layer; every draw comes from the run's seed;
- the forward pass uses ``w ⊙ m`` (× ``1/sqrt(layer density)`` with ``dynamic_scaling``), m = 1[|score| > τ],
  forced to 0 where the state is -1 and to 1 where it is +1; τ is the k-th smallest |score| over all prunable
  weights with frozen entries at ∓∞, k = int(N·s), recomputed after every optimizer step (and after a resumed
  training restores the scores); the gradient reaches the scores straight through (∂m/∂|score| = 1);
- only the scores train, through the core's training service (the suite's recipe: the paper uses SGD lr 0.1,
  momentum 0.9, weight decay 1e-4 on the scores, cosine, 100 epochs); the core asserts that the weights come out
  bit-identical and trains nothing afterwards;
- BatchNorm is non-affine in the official code; the harness's models have affine BatchNorms, so the pruner sets
  their weight to 1 and bias to 0 and keeps them frozen (``non_affine_bn``, default true): a BatchNorm with
  weight 1 and bias 0 computes exactly what a non-affine one computes, on any model (Conv-n, CIFAR ResNets,
  torchvision ResNets) without a special model build. The official networks have no biases: ``biases: zero``
  (default) sets the conv/linear biases to 0, frozen (a zero bias is no bias); ``keep`` leaves them as drawn.

The final mask is that of the final scores: exactly ``int(N·s)`` weights pruned (ties at τ, which the
threshold would leave unresolved, keep the earlier entry: the harness's tie rule), every -1 entry pruned, every +1
entry kept. Where the per-layer truncated frozen counts reach past ``int(N·s)`` (EPL at p = s can freeze a weight
more), the official threshold is ∓inf and its mask prunes exactly the frozen-pruned (keeps exactly the frozen-kept)
weights; so does this one (``info["pruned"]`` against ``info["target_pruned"]``; the row's achieved sparsity).

Storage format (``storage_bits``, the row's ``model_bits``): the weights, biases, BatchNorm constants and frozen
states regenerate from the run's seed (one 64-bit seed: every draw comes, in a fixed order, from a generator
seeded with it), so the ticket is one bit per FREE weight (the mask over the free weights, in model order, row
major) plus 64 bits. ``slt_random_mask`` draws its mask from the seed too: 64 bits. BatchNorm running statistics
(needed at inference, 2 × 32 bits per channel) are not counted, as in the paper. With ``weight_init: keep`` on a
pretrained model the weights do not regenerate: the core's sparse format is reported instead.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from bench_harness import ModelSpec, Pruner, PruneResult, Regime, Requirements, hookimpl, param
from bench_harness_plugins.slt import allocation as slt_allocation
from bench_harness_plugins.slt.models import build_cifar_resnet18

SEED_BITS = 64


# -- hyperparameters ---------------------------------------------------------------------------------------------

@dataclass
class _Common:
    weight_init: Literal["kaiming_uniform", "signed_constant", "keep"] = param(
        "kaiming_uniform", "frozen random weights: kaiming_uniform (official default), signed_constant "
        "(±sqrt(2/fan_in)), or keep (the model's weights as given)")
    score_init: Literal["kaiming_normal", "kaiming_uniform"] = param(
        "kaiming_normal", "initial scores (fan-in, ReLU gain); official default kaiming_normal")
    dynamic_scaling: bool = param(False, "scale each layer's masked weights by 1/sqrt(its density) (the official "
                                         "ImageNet setting)")
    non_affine_bn: bool = param(True, "BatchNorm weight 1 and bias 0, frozen: a non-affine BatchNorm, as the "
                                      "official networks")
    biases: Literal["zero", "keep"] = param("zero", "conv/linear biases: zero (the official networks have none) or "
                                                    "keep (as drawn by the model; frozen either way)")


@dataclass
class SltParams(_Common):
    pruning_ratio: float = param(0.0, "p: fraction of the prunable weights frozen as pruned (-1); p <= s")
    locking_ratio: float = param(0.0, "r: fraction of the prunable weights frozen as kept (+1); s <= 1 - r")
    allocation: Literal["epl", "erk", "igq"] = param("erk", "per-layer frozen counts: epl, erk or igq, as the "
                                                            "official code derives them")
    locking_rule: Literal["sparsity_distribution", "density_distribution"] = param(
        "sparsity_distribution", "how the kept fraction is allocated (official r_method): sparsity_distribution "
        "(rule at densities 1-(p+r) and 1-p; every shipped official config) or density_distribution (rule at "
        "density r)")
    epochs: Optional[int] = param(None, "score-training epochs (default: the recipe's)")


@dataclass
class EdgePopupParams(_Common):
    epochs: Optional[int] = param(None, "score-training epochs (default: the recipe's)")


@dataclass
class RandomMaskParams(_Common):
    allocation: Literal["epl", "erk", "igq"] = param("erk", "per-layer densities of the random mask")


# -- the masked forward pass -------------------------------------------------------------------------------------

class _Search:
    """Scores, frozen states and the threshold of one search; masks are recomputed whenever a score changed."""

    def __init__(self, scores: list[torch.Tensor], states: list[torch.Tensor], sparsity: float, scope: str,
                 dynamic_scaling: bool) -> None:
        self.scores = scores
        self.states = states
        self.sparsity = sparsity
        self.scope = scope
        self.dynamic_scaling = dynamic_scaling
        self._versions: tuple[int, ...] | None = None
        self.masks: list[torch.Tensor] = []
        self.scales: list[float] = []
        self.threshold: float | list[float] = 0.0

    def ranked(self, i: int) -> torch.Tensor:
        """|score| with frozen-pruned entries at -inf and frozen-kept entries at +inf (flat)."""
        values = self.scores[i].detach().abs().flatten()
        state = self.states[i].flatten()
        values = torch.where(state == -1, torch.full_like(values, -math.inf), values)
        return torch.where(state == 1, torch.full_like(values, math.inf), values)

    def refresh(self) -> None:
        versions = tuple(s._version for s in self.scores)
        if versions == self._versions:
            return
        with torch.no_grad():
            if self.scope == "global":
                values = torch.cat([self.ranked(i) for i in range(len(self.scores))])
                k = int(values.numel() * self.sparsity)
                tau = float(values.kthvalue(k).values) if k > 0 else -1.0  # official: k = 0 -> -1
                taus = [tau] * len(self.scores)
                self.threshold = tau
            else:
                taus = []
                for i in range(len(self.scores)):
                    values = self.ranked(i)
                    k = int(values.numel() * self.sparsity)
                    taus.append(float(values.kthvalue(k).values) if k > 0 else -1.0)
                self.threshold = taus
            self.masks, self.scales = [], []
            for i, tau in enumerate(taus):
                m = self.scores[i].detach().abs() > tau
                m = torch.where(self.states[i] == -1, torch.zeros_like(m), m)
                m = torch.where(self.states[i] == 1, torch.ones_like(m), m)
                self.masks.append(m.to(self.scores[i].dtype))
                self.scales.append(_scale(m) if self.dynamic_scaling else 1.0)
        self._versions = versions

    def final_masks(self) -> list[torch.Tensor]:
        """Exactly int(N·s) pruned (per layer for the layer-wise scope), within the frozen bounds (see
        :func:`pruned_count`): the lowest ranked values; among equal values the earlier one (model order, then
        row-major) is kept, the harness's tie rule. Equals the threshold mask whenever no two scores tie at the
        threshold."""
        if self.scope == "global":
            groups = [list(range(len(self.scores)))]
        else:
            groups = [[i] for i in range(len(self.scores))]
        masks: list[torch.Tensor | None] = [None] * len(self.scores)
        for group in groups:
            values = torch.cat([self.ranked(i).double().cpu() for i in group])
            k = pruned_count(values.numel(), self.sparsity, int((values == -math.inf).sum()),
                             int((values == math.inf).sum()))
            keep = torch.zeros(values.numel(), dtype=torch.bool)
            keep[torch.sort(values, descending=True, stable=True).indices[:values.numel() - k]] = True
            start = 0
            for i in group:
                n = self.scores[i].numel()
                masks[i] = keep[start:start + n].view_as(self.scores[i]).to(self.scores[i].device)
                start += n
        return masks  # type: ignore[return-value]


def pruned_count(total: int, sparsity: float, frozen_pruned: int, frozen_kept: int) -> int:
    """How many weights the global search prunes: int(N·s), but never fewer than the frozen-pruned weights nor
    more than N minus the frozen-kept ones. The official code does the same: its threshold is the k-th smallest
    ranked score, and when the frozen entries (at ∓inf) reach past k it is ∓inf, so the mask prunes exactly the
    frozen-pruned (or keeps exactly the frozen-kept) weights. Happens with per-layer truncated counts, e.g. EPL
    at p = s (Conv-6, p = 0.5: 1130593 frozen pruned, int(N·s) = 1130592)."""
    k = int(total * sparsity)
    return min(max(k, frozen_pruned), total - frozen_kept)


def _scale(mask: torch.Tensor) -> float:
    density = float(mask.float().mean())
    return 1.0 / math.sqrt(density) if density > 0 else 1.0


class _Supermask(nn.Module):
    """weight -> weight ⊙ m(score) (× scale), straight-through to the score."""

    def __init__(self, search: _Search, index: int) -> None:
        super().__init__()
        self.search = search
        self.index = index

    def forward(self, weight):
        self.search.refresh()
        magnitude = self.search.scores[self.index].abs()
        mask = self.search.masks[self.index] + magnitude - magnitude.detach()
        return weight * mask * self.search.scales[self.index]


# -- the pruners -------------------------------------------------------------------------------------------------

def _fan_in(shape) -> int:
    return int(math.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _draw(shape, how: str, generator: torch.Generator) -> torch.Tensor:
    """A CPU tensor drawn from ``generator`` (fan-in, ReLU gain, as the official ``set_initial_value``)."""
    std = math.sqrt(2.0 / _fan_in(shape))
    if how == "kaiming_uniform":
        bound = math.sqrt(3.0) * std
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)
    if how == "kaiming_normal":
        return torch.empty(shape).normal_(0.0, std, generator=generator)
    if how == "signed_constant":
        return (torch.randint(0, 2, shape, generator=generator).float() * 2 - 1) * std
    raise ValueError(f"unknown initialisation {how!r}")


class SltFrozen(Pruner):
    """Strong lottery ticket in a partially frozen random network (global Edge-Popup over the free weights)."""

    name = "slt_frozen"
    description = ("SLT in a partially frozen random network (Otsuka et al. 2025): p frozen pruned, r frozen kept, "
                   "global Edge-Popup over the rest; weights never trained")
    regime = Regime.MASK_LEARNING
    requires = Requirements(data=True, labels=True)
    changes_weights = True  # draws the frozen random weights (unless weight_init=keep), zeroes biases, BN at 1/0
    Params = SltParams
    scope = "global"

    # what differs between the three pruners
    def ratios(self, sparsity: float) -> tuple[float, float]:
        return float(self.params.pruning_ratio), float(self.params.locking_ratio)

    def search_epochs(self, ctx) -> int | None:
        return self.params.epochs

    def prune(self, model, sparsity, ctx):
        P = self.params
        names = list(ctx.prunable)
        weights = [ctx.prunable[n] for n in names]
        shapes = [tuple(w.shape) for w in weights]
        total = sum(w.numel() for w in weights)
        p, r = self.ratios(sparsity)
        eps = 1e-9
        if not (p - eps <= sparsity <= 1 - r + eps):
            raise ValueError(
                f"{self.name}: sparsity {sparsity} must satisfy pruning_ratio <= sparsity <= 1 - locking_ratio "
                f"(p = {p}, r = {r}): with s < p the frozen-pruned weights alone exceed the target, with s > 1 - r "
                f"the frozen-kept ones do; the search would be void (the official code then silently returns the "
                f"randomly frozen network)")
        allocation = getattr(P, "allocation", "erk")
        rule = getattr(P, "locking_rule", "sparsity_distribution")
        counts = (slt_allocation.frozen_counts(allocation, shapes, p, r, rule) if p or r
                  else [(0, 0)] * len(shapes))
        k = int(total * sparsity)
        counts = self.adjust_counts(counts, k)
        n_pruned = sum(c[0] for c in counts)
        n_kept = sum(c[1] for c in counts)
        pruned = pruned_count(total, sparsity, n_pruned, n_kept) if self.scope == "global" else k
        if abs(pruned - k) > self.sparsity_tolerance * total:
            raise ValueError(f"{self.name}: the {allocation} allocation freezes {n_pruned} weights as pruned and "
                             f"{n_kept} as kept of {total} (per-layer counts truncated as the official code does), "
                             f"so the mask prunes {pruned} weights while sparsity {sparsity} asks for int(N·s) = "
                             f"{k}: further from the target than the tolerance {self.sparsity_tolerance}; lower "
                             f"pruning_ratio or locking_ratio slightly")
        gen = ctx.generator
        # draws in a fixed order: weights, scores, frozen states (the seed regenerates all of them)
        drawn = [_draw(s, P.weight_init, gen) for s in shapes] if P.weight_init != "keep" else None
        if drawn is not None and ctx.pretrained:
            warnings.warn(f"{self.name}: the model starts from pretrained weights and weight_init: {P.weight_init} "
                          f"draws new random weights over them (the method's random network); set weight_init: "
                          f"keep to learn the mask over the pretrained weights", stacklevel=2)
        scores_cpu = [_draw(s, P.score_init, gen) for s in shapes]
        states_cpu = slt_allocation.ternary_states(shapes, counts, gen)
        modules = dict(model.named_modules())
        with torch.no_grad():
            if drawn is not None:
                for w, value in zip(weights, drawn):
                    w.copy_(value.to(w.device, w.dtype))
            for owner in (modules[n.rsplit(".", 1)[0]] if "." in n else model for n in names):
                bias = getattr(owner, "bias", None)
                if P.biases == "zero" and isinstance(bias, torch.Tensor):
                    bias.zero_()
            if P.non_affine_bn:
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
                        m.weight.fill_(1.0)
                        m.bias.fill_(0.0)
        scores = [s.to(w.device).requires_grad_(True) for s, w in zip(scores_cpu, weights)]
        states = [t.to(w.device) for t, w in zip(states_cpu, weights)]
        search = _Search(scores, states, sparsity, self.scope, P.dynamic_scaling)
        fit_steps = self.train_scores(model, names, weights, search, ctx)
        masks_list = search.final_masks()
        if P.dynamic_scaling:
            with torch.no_grad():
                for w, m in zip(weights, masks_list):
                    w.mul_(_scale(m))
        masks = dict(zip(names, masks_list))
        frozen = {n: {"pruned": int(c[0]), "kept": int(c[1])} for n, c in zip(names, counts)}
        free = total - n_pruned - n_kept
        storage = self.storage(free, ctx)
        info = {"frozen": frozen, "pruning_ratio": p, "locking_ratio": r, "allocation": allocation,
                "free_weights": free, "frozen_pruned": n_pruned, "frozen_kept": n_kept,
                "pruned": int(sum(int((~m).sum()) for m in masks_list)), "target_pruned": k,
                "score_steps": fit_steps, "storage_format": self.storage_format()}
        if self.scope == "global":
            search.refresh()
            info["threshold"] = search.threshold
        return PruneResult(masks, weights_changed=True, info=info, storage_bits=storage)

    def adjust_counts(self, counts: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
        return counts

    def storage(self, free: int, ctx) -> int | None:
        if self.params.weight_init == "keep" and ctx.pretrained:
            return None  # the weights do not regenerate from a seed: the core's sparse format
        return free + SEED_BITS

    def storage_format(self) -> str:
        return "1 bit per free weight (model order, row major) + one 64-bit seed (weights, biases, frozen states)"

    def train_scores(self, model, names, weights, search, ctx) -> int:
        """Train the scores through the core's training service; returns the number of optimizer steps."""
        trainer = ctx.require_trainer(self.name)
        modules = dict(model.named_modules())
        owners = [modules[n.rsplit(".", 1)[0]] if "." in n else model for n in names]
        attrs = [n.rsplit(".", 1)[-1] for n in names]
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        for p_ in model.parameters():
            p_.requires_grad_(False)
        for i, (owner, attr) in enumerate(zip(owners, attrs)):
            parametrize.register_parametrization(owner, attr, _Supermask(search, i), unsafe=True)
        try:
            result = trainer.fit(model, params=[{"params": search.scores}], epochs=self.search_epochs(ctx),
                                 phase="scores")
        finally:
            for owner, attr in zip(owners, attrs):
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
            for n, p_ in model.named_parameters():
                p_.requires_grad_(grads.get(n, p_.requires_grad))
        return int(result.steps)


class EdgePopup(SltFrozen):
    """Edge-Popup (Ramanujan et al. 2020): layer-wise top-k of |score| over frozen random weights."""

    name = "edge_popup"
    description = "Edge-Popup (Ramanujan et al. 2020): layer-wise top-|score| mask over frozen random weights"
    Params = EdgePopupParams
    scope = "layerwise"

    def ratios(self, sparsity):
        return 0.0, 0.0


class SltRandomMask(SltFrozen):
    """A random mask of the target density over the same frozen random weights: the control of the search."""

    name = "slt_random_mask"
    description = ("control for slt_frozen/edge_popup: a random mask (per-layer densities by the allocation rule) "
                   "over the same frozen random weights, no search")
    Params = RandomMaskParams

    def ratios(self, sparsity):
        return float(sparsity), 0.0

    def adjust_counts(self, counts, k):
        """The rule's counts at density 1 - s may exceed int(N·s) by truncation (EPL): take the excess back
        from the layers with the most frozen-pruned weights, one weight at a time."""
        pruned = [c[0] for c in counts]
        excess = sum(pruned) - k
        while excess > 0:
            i = max(range(len(pruned)), key=lambda j: pruned[j])
            pruned[i] -= 1
            excess -= 1
        return [(n, c[1]) for n, c in zip(pruned, counts)]

    def storage(self, free, ctx):
        if self.params.weight_init == "keep" and ctx.pretrained:
            return None
        return SEED_BITS  # the whole mask is drawn from the seed

    def storage_format(self) -> str:
        return "one 64-bit seed (weights, biases and the random mask)"

    def train_scores(self, model, names, weights, search, ctx) -> int:
        """No search; recompute the BatchNorm statistics of the masked network on the scoring batches."""
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                 and m.track_running_stats]
        if not norms or ctx.batches is None:
            return 0
        masks = search.final_masks()
        saved = [w.detach().clone() for w in weights]
        momenta = [m.momentum for m in norms]
        was_training = model.training
        with torch.no_grad():
            for w, m in zip(weights, masks):
                w.mul_(m.to(w.dtype) * (_scale(m) if search.dynamic_scaling else 1.0))
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches
            model.train()
            for x, _ in ctx.data():
                model(x)
            for w, value in zip(weights, saved):
                w.copy_(value)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
        return 0


@hookimpl
def bench_register_pruners():
    return [SltFrozen, EdgePopup, SltRandomMask]


@hookimpl
def bench_register_models():
    return [ModelSpec("cifar_resnet18", build_cifar_resnet18,
                      "CIFAR ResNet-18 (kuangliu layout: 3x3 stem, no max-pool, 64-512 filters, no biases), as in "
                      "Edge-Popup and the partially frozen SLT paper")]
