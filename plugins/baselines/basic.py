"""Reference pruners: dense (no pruning), random and magnitude."""
from __future__ import annotations

import torch

from bench_harness import Pruner, Regime, ScorePruner, hookimpl, masking


class Dense(Pruner):
    """No pruning: the reference row of every table."""

    name = "dense"
    description = "no pruning (reference)"
    regime = Regime.NONE  # the dense reference: one run, no sparsity axis

    def prune(self, model, sparsity, ctx):
        return masking.full_masks(ctx.prunable)


class RandomPruner(ScorePruner):
    """Gaussian scores drawn from the run's seeded generator (Synaptic-Flow's `Rand`). With ``allocation: erk``
    each layer keeps a uniformly random subset of its ERK count: the random-ERK baseline of Liu et al. 2022."""

    name = "random"
    description = "random scores (N(0,1)); global, layer-wise or a layer allocation (uniform, ERK, ER)"

    def score(self, model, ctx):
        return {n: torch.randn(p.shape, generator=ctx.generator).to(p.device) for n, p in ctx.prunable.items()}


class Magnitude(ScorePruner):
    """Score = |θ|."""

    name = "magnitude"
    description = ("weight magnitude |w|; global, layer-wise or a layer allocation (uniform, ERK, ER), one shot or "
                   "iterative")

    def score(self, model, ctx):
        return {n: p.detach().abs() for n, p in ctx.prunable.items()}


@hookimpl
def bench_register_pruners():
    return [Dense, RandomPruner, Magnitude]
