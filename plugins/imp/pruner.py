"""Iterative magnitude pruning with rewinding: the lottery-ticket procedure of facebookresearch/open_lth.

Train, remove ``rate`` (20 %) of the remaining weights by global magnitude, rewind the survivors to their
values at initialization (or at epoch ``rewind_epoch``), repeat until the target density; the last level
lands exactly on the target. The number of levels follows from the target:
``ceil(log(density) / log(1 - rate))``. Training goes through the core's training service (``ctx.trainer``:
the run's recipe, progress, per-epoch checkpoints; a preempted job restores the finished levels instead of
training them again), so the whole cost shows in the pruning time. The returned masks are then trained once
more by the run (the ticket).

Rewinding to epoch k (open_lth's ``rewinding_steps``): the network is trained k epochs from initialization and
that state is the rewind point; every level, and the final training of the ticket, then trains schedule epochs
``[k, E)``: the learning-rate schedule resumes at epoch k, it does not restart (``PruneResult.train_from_epoch``).
k = 0 (rewind to the initialization) is defined for any E, 0 included (nothing trains: every level prunes the
initial weights); k > 0 needs k < E.

Schedules (``schedule``):

- ``geometric`` (default, open_lth): each level keeps ``1 - rate`` of the remaining weights, the number of levels
  following from the target; with ``levels: E`` instead, level r = 1..E targets ``density ** (r / E)``.
- ``linear_count`` (AutoSparse's iterative rewind pruning, the official ``schedule: num``): every level removes
  the same number of weights; level i = 0..E-1 keeps the fraction ``1 - (1-c) / (E - (1-c)·i)`` of the
  non-zero weights (c the final density, E = ``levels``, 20 by default), so that the density after level i
  is ``1 - (i+1)(1-c)/E``. Like the official code, the pruned count of a level is ``int((1 - keep)·n_nonzero)``;
  the last level lands exactly on the target.

``info["level_densities"]`` holds the density achieved after each level for ``linear_count`` (the schedule's
targets for ``geometric``, as before; ``info["achieved_level_densities"]`` always the achieved ones).
:func:`rewind_pruning` is the loop itself, shared with the AutoSparse teacher (which also needs how many levels
each weight survived).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from bench_harness import Pruner, PruneResult, Regime, Requirements, hookimpl, masking, param


@dataclass
class ImpParams:
    rate: float = param(0.2, "fraction of the remaining weights removed per level (open_lth: 0.2)")
    rewind_epoch: int = param(0, "rewind survivors to their values after this many epochs (0: initialization)")
    epochs: int = param(0, "training epochs per level; 0 = the suite recipe's epochs")
    scope: Literal["global", "layerwise"] = param("global", "global (open_lth sparse_global) or layerwise")
    schedule: Literal["geometric", "linear_count"] = param(
        "geometric", "geometric: keep 1-rate per level (open_lth); linear_count: remove the same number of weights "
        "per level (AutoSparse's IRP)")
    levels: int = param(0, "number of levels E; 0: from rate (geometric), 20 (linear_count)")


def imp_levels(density: float, rate: float) -> list[float]:
    """Densities after each level: (1-rate)^1, (1-rate)^2, ..., the last one clipped to the target."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must lie in (0, 1), got {rate}")
    if density >= 1.0:
        return []
    count = max(1, math.ceil(math.log(density) / math.log(1.0 - rate) - 1e-9))
    return [max(density, (1.0 - rate) ** (i + 1)) for i in range(count)]


def geometric_levels(density: float, levels: int) -> list[float]:
    """Densities after each of ``levels`` levels: ``density ** (r / levels)``, r = 1..levels."""
    return masking.exponential_schedule(density, levels) if density < 1.0 else []


def linear_count_keep(final_density: float, levels: int) -> list[float]:
    """AutoSparse's per-level keep fractions of the non-zero weights: ``1 - (1-c) / (E - (1-c)·i)``, i = 0..E-1."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if not 0.0 < final_density <= 1.0:
        raise ValueError(f"the final density must lie in (0, 1], got {final_density}")
    c = final_density
    return [1.0 - (1.0 - c) / (levels - (1.0 - c) * i) for i in range(levels)]


def linear_count_levels(final_density: float, levels: int) -> list[float]:
    """Densities after each level of the linear-count schedule: ``1 - (i+1)(1-c)/E`` (the keep fractions'
    running product)."""
    out, d = [], 1.0
    for keep in linear_count_keep(final_density, levels):
        d *= keep
        out.append(d)
    return out


def check_rewind_epoch(rewind_epoch: int, end: int) -> None:
    """``rewind_epoch`` 0 (rewind to the initialization) is defined for any number of epochs per level, 0
    included; a later rewind point must come before the end of a level's training."""
    if rewind_epoch < 0:
        raise ValueError(f"rewind_epoch must be >= 0 (0: rewind to the initialization), got {rewind_epoch}")
    if rewind_epoch and rewind_epoch >= end:
        raise ValueError(f"rewind_epoch {rewind_epoch} must be below the {end} training epochs of a level (the "
                         f"imp parameter epochs, or the recipe's epochs when it is 0): raise the epochs above "
                         f"{rewind_epoch}, or set rewind_epoch: 0 to rewind to the initialization")


@dataclass
class RewindPruning:
    """What :func:`rewind_pruning` computed."""

    masks: dict[str, torch.Tensor]
    level_densities: list[float]  # achieved density after each level
    targets: list[float] = field(default_factory=list)  # the schedule's density after each level
    survived: dict[str, torch.Tensor] = field(default_factory=dict)  # levels each weight survived (int16)
    fits: int = 0  # training calls
    epochs_trained: int = 0  # training epochs over all levels


def _level_masks(prunable, masks, scope: str, schedule: str, level: int, count: int, final_density: float,
                 geometric: list[float]) -> dict[str, torch.Tensor]:
    scores = masking.restrict_scores({n: w.detach().abs() for n, w in prunable.items()}, masks)
    if schedule == "geometric":
        return masking.topk_masks(scores, geometric[level], scope)
    if level == count - 1:  # the last level lands on the target
        return masking.topk_masks(scores, final_density, scope)
    keep = linear_count_keep(final_density, count)[level]
    if scope == "global":
        total = sum(m.numel() for m in masks.values())
        nonzero = sum(int(m.sum()) for m in masks.values())
        return masking.topk_masks(scores, (nonzero - int((1.0 - keep) * nonzero)) / total, scope)
    densities = {}
    for n, m in masks.items():
        nonzero = int(m.sum())
        densities[n] = (nonzero - int((1.0 - keep) * nonzero)) / max(m.numel(), 1)
    return masking.topk_masks(scores, densities, scope)


def rewind_pruning(model, trainer, prunable, final_density: float, *, schedule: str = "geometric",
                   levels: int = 0, rate: float = 0.2, scope: str = "global", end: int | None = None,
                   rewind_epoch: int = 0, prune_first: bool = False, phase: str = "imp",
                   fit_kwargs: dict | None = None) -> RewindPruning:
    """Iterative magnitude pruning with rewinding, in place: ``model`` ends at its rewind point.

    Each level trains the masked network schedule epochs ``[rewind_epoch, end)`` through ``trainer`` (the
    training service), prunes by global (or layer-wise) magnitude to the level's density and rewinds the
    survivors to the rewind point. ``prune_first``: the first level prunes the untrained weights (|θ at the rewind
    point|) and the last level is not followed by training, as AutoSparse's official teacher does (its
    ``pre_epochs: 0``): E levels then cost E-1 trainings. ``fit_kwargs`` go to every ``trainer.fit`` call (e.g.
    another ``loader``, ``recipe`` overrides). ``rewind_epoch`` > 0 trains the rewind point first.
    """
    fit_kwargs = dict(fit_kwargs or {})
    end = end or trainer.epochs
    check_rewind_epoch(rewind_epoch, end)
    if schedule == "geometric":
        targets = geometric_levels(final_density, levels) if levels else imp_levels(final_density, rate)
    elif schedule == "linear_count":
        targets = linear_count_levels(final_density, levels or 20) if final_density < 1.0 else []
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use 'geometric' or 'linear_count'")
    count = len(targets)
    out = RewindPruning(masks=masking.full_masks(prunable), level_densities=[], targets=list(targets),
                        survived={n: torch.zeros(p.shape, dtype=torch.int16) for n, p in prunable.items()})
    if rewind_epoch:
        trainer.fit(model, epochs=rewind_epoch, phase=f"{phase} rewind point", **fit_kwargs)
        out.fits += 1
        out.epochs_trained += rewind_epoch
    rewind_state = copy.deepcopy(model.state_dict())
    for level in range(count):
        if level or not prune_first:
            trainer.fit(model, masks=out.masks, epochs=end, start_epoch=rewind_epoch,
                        phase=f"{phase} level {level + 1}/{count}", **fit_kwargs)
            out.fits += 1
            out.epochs_trained += end - rewind_epoch
        out.masks = _level_masks(prunable, out.masks, scope, schedule, level, count, final_density, targets)
        out.level_densities.append(masking.global_density(out.masks))
        for n, m in out.masks.items():
            out.survived[n] += m.to("cpu", torch.int16)
        model.load_state_dict(rewind_state)
    return out


class Imp(Pruner):
    """Lottery-ticket IMP with rewinding (Frankle & Carbin 2019; Frankle et al. 2020)."""

    name = "imp"
    description = "lottery-ticket iterative magnitude pruning, 20% per level, rewinding (open_lth)"
    regime = Regime.ITERATIVE
    requires = Requirements(data=True, labels=True)
    Params = ImpParams
    changes_weights = True  # with rewind_epoch > 0 the returned weights are the rewind point

    def prune(self, model, sparsity, ctx):
        trainer = ctx.require_trainer("imp")
        p = self.params
        done = rewind_pruning(model, trainer, ctx.prunable, 1.0 - sparsity, schedule=p.schedule, levels=p.levels,
                              rate=p.rate, scope=p.scope, end=p.epochs or trainer.epochs,
                              rewind_epoch=p.rewind_epoch)
        # level_densities: the schedule's targets for geometric (as before this option existed; achieved within
        # 1/N), the achieved densities for linear_count (its per-level counts are truncated as the official code
        # does); achieved_level_densities: always the achieved ones
        info = {"levels": len(done.level_densities), "rewind_epoch": p.rewind_epoch,
                "level_densities": done.targets if p.schedule == "geometric" else done.level_densities,
                "achieved_level_densities": done.level_densities}
        if p.schedule != "geometric":
            info["schedule"] = p.schedule
        return PruneResult(done.masks, weights_changed=bool(p.rewind_epoch), train_from_epoch=p.rewind_epoch,
                           train_epochs=p.epochs or None, info=info)


@hookimpl
def bench_register_pruners():
    return [Imp]
