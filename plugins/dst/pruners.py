"""During-training pruners: ``gmp`` (gradual magnitude pruning), ``set`` and ``rigl`` (dynamic sparse training) and
``static_sparse`` (their control: the same random initial masks, never updated). See docs/dst.md.

``gmp``, ``set`` and ``rigl`` are ``Regime.DURING_TRAINING``: ``prune()`` returns the initial masks (dense for GMP,
random with the layer allocation for SET/RigL) and a :class:`bench_harness.MaskUpdater` that the core calls after
the optimizer steps of the schedule. The math is in :mod:`.schedules` and :mod:`.sparse_ops` (pure functions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

import bench_harness
from bench_harness import (
    MaskUpdate,
    MaskUpdater,
    PruneContext,
    Pruner,
    PruneResult,
    Regime,
    SparsityKind,
    hookimpl,
    masking,
    param,
)
from bench_harness_plugins.dst import schedules, sparse_ops

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Every = Annotated[int, Field(ge=1)]
PowerScale = Annotated[float, Field(ge=-10.0, le=10.0)]  # finite: NaN, inf and 1e300 are refused by bench validate
Allocation = Literal["erk", "uniform", "uniform_dense_first", "er"]


def _shapes(prunable: dict[str, nn.Parameter]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in prunable.items()}


def initial_counts(prunable: dict[str, nn.Parameter], density: float, allocation: str,
                   erk_power_scale: float = 1.0) -> dict[str, int]:
    """Kept weights per layer at ``density`` under ``allocation`` (the shared layer allocation of the contract)."""
    return bench_harness.allocation.layer_counts(_shapes(prunable), density, allocation,
                                                 erk_power_scale=erk_power_scale)


def initial_random_masks(prunable: dict[str, nn.Parameter], sparsity: float, allocation: str,
                         erk_power_scale: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random initial masks of ``set``, ``rigl`` and ``static_sparse`` (one draw, the same for all three)."""
    counts = initial_counts(prunable, 1.0 - sparsity, allocation, erk_power_scale)
    masks = sparse_ops.random_masks(_shapes(prunable), counts, generator)
    return {n: m.to(prunable[n].device) for n, m in masks.items()}


def _check_window(name: str, params: Any) -> None:
    if params.begin > params.end:
        raise ValueError(f"{name}: begin ({params.begin}) lies after end ({params.end}); both are fractions of the "
                         f"training's optimizer steps")


# --------------------------------------------------------------------------------------------------- static


@dataclass
class StaticParams:
    allocation: Allocation = param("erk", "layer allocation of the random masks: erk (the RigL paper's choice), "
                                          "uniform, uniform_dense_first or er")
    erk_power_scale: PowerScale = param(1.0, "ERK only: the power of the ratio (sum(shape)/prod(shape)); < 1 is softer")


class StaticSparse(Pruner):
    """Random masks with a layer allocation, fixed for the whole training (RigL's ``static`` control)."""

    name = "static_sparse"
    description = ("static sparse training: random masks with a layer allocation (ERK default), never updated; the "
                   "control of set and rigl (the same masks for the same seed)")
    # AT_INIT: the masks are chosen once, before training, and kept; nothing changes while the run trains, so the
    # core needs no updater (the training is the same as a DURING_TRAINING run whose updater never updates).
    regime = Regime.AT_INIT
    Params = StaticParams

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        masks = initial_random_masks(ctx.prunable, sparsity, self.params.allocation, self.params.erk_power_scale,
                                     ctx.generator)
        return PruneResult(masks=masks, info={"allocation": self.params.allocation,
                                              "layer_density": masking.layer_densities(masks)})


# --------------------------------------------------------------------------------------------------- SET / RigL


@dataclass
class DSTParams:
    allocation: Allocation = param("erk", "layer allocation of the initial random masks (kept through training: "
                                          "each layer's count is constant): erk (the RigL paper's choice), uniform, "
                                          "uniform_dense_first or er")
    erk_power_scale: PowerScale = param(1.0, "ERK only: the power of the ratio (sum(shape)/prod(shape)); < 1 is softer")
    begin: Fraction = param(0.0, "first mask update, as a fraction of the training's optimizer steps (RigL: "
                                 "maskupdate_begin_step 0)")
    end: Fraction = param(0.75, "last mask update, as a fraction of the training (RigL: stop at 75 %)")
    every: Every = param(100, "optimizer steps between mask updates (RigL CIFAR-10: 100)")
    drop_fraction: Fraction = param(0.3, "fraction of each layer's active weights dropped and regrown at an update "
                                         "(at the first update, before annealing)")
    drop_fraction_anneal: Literal["cosine", "constant"] = param(
        "cosine", "cosine: drop_fraction * 0.5 * (1 + cos(pi * (t - begin) / (end - begin))); constant")
    noise_std: Annotated[float, Field(ge=0.0)] = param(
        1e-5, "std of the Gaussian noise added to |w| before the drop (RigL's random tie-breaking); 0: ties by "
              "position, as JaxPruner")


class DropGrowUpdater(MaskUpdater):
    """SET's and RigL's updater: at each update step, every layer drops ``int(n_active * f_t)`` active weights of
    smallest magnitude and grows as many (random for SET, largest dense-gradient magnitude for RigL); grown weights
    start at zero."""

    grow: str = "random"
    # the update replaces the optimizer step of its batch, as RigL's optimizer (``cond(update, mask_update_op,
    # apply_gradient_op)``) and JaxPruner's SET/RigL (``skip_gradients=True``) do
    skips_step = True

    def __init__(self, params: DSTParams) -> None:
        self.params = params
        self.updates = 0

    def window(self, total_steps: int) -> tuple[int, int]:
        return schedules.update_window(self.params.begin, self.params.end, total_steps)

    def is_update_step(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        begin, end = self.window(total_steps)
        return schedules.is_update_step(step, begin, end, self.params.every)

    def drop_fraction(self, step: int, total_steps: int) -> float:
        begin, end = self.window(total_steps)
        return schedules.drop_fraction_at(step, self.params.drop_fraction, begin, end,
                                          self.params.drop_fraction_anneal)

    def grow_scores(self, name: str, weight: torch.Tensor, u: MaskUpdate) -> torch.Tensor:
        g = u.generator
        return torch.rand(weight.shape, generator=g, device=g.device, dtype=torch.float32)

    def update(self, u: MaskUpdate) -> dict[str, torch.Tensor] | None:
        fraction = self.drop_fraction(u.step, u.total_steps)
        self.updates += 1
        new_masks = {}
        with torch.no_grad():
            for name, weight in u.prunable.items():
                mask = u.masks[name]
                n = sparse_ops.drop_count(int(mask.sum()), fraction)
                if n == 0:
                    new_masks[name] = mask.clone()
                    continue
                score_grow = self.grow_scores(name, weight, u)
                new, grown = sparse_ops.drop_grow_layer(weight, mask, score_grow, n, u.generator,
                                                        self.params.noise_std)
                weight[grown.to(weight.device)] = 0.0  # RigL's grow_init 'zeros'
                new_masks[name] = new
        return new_masks

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

    def info(self) -> dict[str, Any]:
        return {"updates": self.updates, "grow": self.grow}


class RigLUpdater(DropGrowUpdater):
    needs_dense_grad = True
    grow = "gradient"

    def grow_scores(self, name: str, weight: torch.Tensor, u: MaskUpdate) -> torch.Tensor:
        if u.grads is None or name not in u.grads:
            raise ValueError(f"rigl needs the dense gradient of {name} at an update step, and the core gave none")
        return u.grads[name].detach().abs()


class SET(Pruner):
    """Sparse Evolutionary Training (Mocanu et al. 2018) as the RigL reference runs it."""

    name = "set"
    description = ("SET: dynamic sparse training from random (ERK) masks; every `every` steps each layer drops its "
                   "smallest-magnitude weights and regrows as many at random (RigL reference)")
    regime = Regime.DURING_TRAINING
    sparsity_kind = SparsityKind.EXACT
    Params = DSTParams
    check_params = {"every": 1, "end": 1.0}
    updater_class: type[DropGrowUpdater] = DropGrowUpdater

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        p = self.params
        _check_window(self.name, p)
        masks = initial_random_masks(ctx.prunable, sparsity, p.allocation, p.erk_power_scale, ctx.generator)
        info = {"allocation": p.allocation, "initial_layer_density": masking.layer_densities(masks)}
        return PruneResult(masks=masks, updater=self.updater_class(p), info=info)


class RigL(SET):
    """Rigging the Lottery (Evci et al. 2020) as google-research/rigl's ``SparseRigLOptimizer``."""

    name = "rigl"
    description = ("RigL: dynamic sparse training from random (ERK) masks; every `every` steps each layer drops its "
                   "smallest-magnitude weights and grows those of largest dense-gradient magnitude (zero-initialised), "
                   "cosine-annealed drop fraction, updates until 75 % of training (RigL reference)")
    updater_class = RigLUpdater


# --------------------------------------------------------------------------------------------------- GMP


@dataclass
class GMPParams:
    scope: Literal["layerwise", "global"] = param(
        "layerwise", "layerwise: each layer reaches its allocated sparsity (Zhu & Gupta, TF model_pruning); "
                     "global: one magnitude threshold over all prunable weights")
    allocation: Allocation = param("uniform", "layerwise only: the final per-layer densities (uniform: every layer "
                                              "at the target, as Zhu & Gupta; erk, er, uniform_dense_first)")
    erk_power_scale: PowerScale = param(1.0, "ERK only: the power of the ratio (sum(shape)/prod(shape))")
    initial_sparsity: Fraction = param(0.0, "s_i, the sparsity at the begin step (0: start dense)")
    begin: Fraction = param(0.2, "t_0 as a fraction of the training's optimizer steps (RigL's CIFAR-10 GMP: "
                                 "20000 of 97656 steps)")
    end: Fraction = param(0.75, "t_0 + n dt as a fraction of the training: the final sparsity from here on (RigL's "
                                "CIFAR-10 GMP: 75000 of 97656 steps)")
    every: Every = param(100, "dt, optimizer steps between mask updates (the end step always updates)")
    power: Annotated[int, Field(ge=1)] = param(3, "exponent of the schedule (Zhu & Gupta: 3)")


class GMPUpdater(MaskUpdater):
    """Prunes the smallest-magnitude active weights to the cubic schedule's sparsity at each update step (after the
    step's optimizer update: TF model_pruning and JaxPruner's magnitude pruners do not skip it)."""

    def __init__(self, params: GMPParams, final_sparsity: float, final_counts: dict[str, int] | None) -> None:
        self.params = params
        self.final_sparsity = float(final_sparsity)
        self.final_counts = final_counts  # layerwise: kept per layer at the end; global: None
        self.updates = 0

    def window(self, total_steps: int) -> tuple[int, int]:
        return schedules.update_window(self.params.begin, self.params.end, total_steps)

    def is_update_step(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        begin, end = self.window(total_steps)
        return schedules.is_update_step(step, begin, end, self.params.every, include_end=True)

    def sparsity(self, step: int, total_steps: int) -> float:
        begin, end = self.window(total_steps)
        return schedules.gmp_sparsity(step, self.final_sparsity, begin, end, self.params.initial_sparsity,
                                      self.params.power)

    def update(self, u: MaskUpdate) -> dict[str, torch.Tensor] | None:
        self.updates += 1
        weights = {n: p.detach() for n, p in u.prunable.items()}
        counts = gmp_counts(weights, self.sparsity(u.step, u.total_steps), self.final_sparsity, self.final_counts)
        return sparse_ops.magnitude_masks(weights, u.masks, counts)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

    def info(self) -> dict[str, Any]:
        return {"updates": self.updates}


def gmp_counts(weights: dict[str, torch.Tensor], sparsity: float, final_sparsity: float,
               final_counts: dict[str, int] | None) -> dict[str, int] | int:
    """Kept weights at schedule sparsity ``sparsity``: globally ``round((1 - s) N)``; layer-wise, layer ``l`` at
    sparsity ``s_l^final * s / s_final`` (so that the layers reach their allocated counts together at the end step
    and the total follows the schedule), ``round``-ed, and exactly ``final_counts`` once ``s >= s_final``."""
    if final_counts is None:
        total = sum(w.numel() for w in weights.values())
        return int(round((1.0 - sparsity) * total))
    if sparsity >= final_sparsity:
        return dict(final_counts)
    scale = sparsity / final_sparsity if final_sparsity > 0 else 0.0
    out = {}
    for n, w in weights.items():
        layer_sparsity = (1.0 - final_counts[n] / w.numel()) * scale
        out[n] = max(int(final_counts[n]), int(round((1.0 - layer_sparsity) * w.numel())))
    return out


class GMP(Pruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017), the cubic schedule of TF model_pruning."""

    name = "gmp"
    description = ("gradual magnitude pruning (Zhu & Gupta 2017): from dense, the smallest-magnitude weights are "
                   "pruned every `every` steps between `begin` and `end` to the cubic schedule; layer-wise "
                   "(with an allocation) or global")
    regime = Regime.DURING_TRAINING
    sparsity_kind = SparsityKind.EXACT
    Params = GMPParams
    check_params = {"every": 1, "begin": 0.0}

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        p = self.params
        _check_window(self.name, p)
        if p.scope == "global" and p.allocation != "uniform":
            raise ValueError(f"gmp: allocation {p.allocation!r} applies to scope 'layerwise' only (a global threshold "
                             f"decides the layer densities itself); use scope: layerwise or allocation: uniform")
        if p.initial_sparsity > sparsity:
            raise ValueError(f"gmp: initial_sparsity {p.initial_sparsity} exceeds the target sparsity {sparsity}: "
                             f"the masks only shrink")
        final_counts = None
        if p.scope == "layerwise":
            final_counts = initial_counts(ctx.prunable, 1.0 - sparsity, p.allocation, p.erk_power_scale)
        updater = GMPUpdater(p, sparsity, final_counts)
        masks = masking.full_masks(ctx.prunable)
        info = {"scope": p.scope, "allocation": p.allocation}
        return PruneResult(masks=masks, updater=updater, info=info)


@hookimpl
def bench_register_pruners():
    return [GMP, SET, RigL, StaticSparse]
