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
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from bench_harness import hookimpl, masking
from bench_harness.pruner import Pruner, PruneResult, Regime, Requirements, param


@dataclass
class ImpParams:
    rate: float = param(0.2, "fraction of the remaining weights removed per level (open_lth: 0.2)")
    rewind_epoch: int = param(0, "rewind survivors to their values after this many epochs (0: initialization)")
    epochs: int = param(0, "training epochs per level; 0 = the suite recipe's epochs")
    scope: str = param("global", "global (open_lth sparse_global) or layerwise")


def imp_levels(density: float, rate: float) -> list[float]:
    """Densities after each level: (1-rate)^1, (1-rate)^2, ..., the last one clipped to the target."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must lie in (0, 1), got {rate}")
    if density >= 1.0:
        return []
    count = max(1, math.ceil(math.log(density) / math.log(1.0 - rate) - 1e-9))
    return [max(density, (1.0 - rate) ** (i + 1)) for i in range(count)]


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
        end = p.epochs or trainer.epochs
        if not 0 <= p.rewind_epoch < end:
            raise ValueError(f"rewind_epoch {p.rewind_epoch} must lie in [0, {end}) (the epochs of a level)")
        if p.rewind_epoch:
            trainer.fit(model, epochs=p.rewind_epoch, phase="imp rewind point")
        rewind_state = copy.deepcopy(model.state_dict())
        masks = masking.full_masks(ctx.prunable)
        levels = imp_levels(1.0 - sparsity, p.rate)
        for level, density in enumerate(levels, start=1):
            trainer.fit(model, masks=masks, epochs=end, start_epoch=p.rewind_epoch,
                        phase=f"imp level {level}/{len(levels)}")
            scores = masking.restrict_scores({n: w.detach().abs() for n, w in ctx.prunable.items()}, masks)
            masks = masking.topk_masks(scores, density, p.scope)
            model.load_state_dict(rewind_state)
        return PruneResult(masks, weights_changed=bool(p.rewind_epoch), train_from_epoch=p.rewind_epoch,
                           train_epochs=p.epochs or None,
                           info={"levels": len(levels), "level_densities": levels, "rewind_epoch": p.rewind_epoch})


@hookimpl
def bench_register_pruners():
    return [Imp]
