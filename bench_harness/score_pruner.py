"""Score-then-mask pruners (the Synaptic-Flow interface): scoring is a pure function of (model, data);
masking is the shared top-k code, optionally over R rounds of the exponential schedule."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from bench_harness import masking
from bench_harness.pruner import PruneContext, Pruner, param


@dataclass
class ScoreParams:
    scope: str = param("global", "global: one threshold over all prunable weights; layerwise: every layer "
                                 "keeps the same density")
    rounds: int = param(1, "rounds of the exponential schedule density**(r/R), re-scoring the masked network "
                           "each round; 1 = one shot")
    tie_rule: str = param("reference", "reference: prune every score <= the k-th smallest, k = int((1-d)N) "
                                       "(Synaptic-Flow, PX); exact: keep exactly round(d N), ties by position")


@contextmanager
def masked_weights(prunable: Mapping[str, nn.Parameter]) -> Iterator[dict[str, torch.Tensor]]:
    """Saves the prunable weights, yields the saved copies, restores them on exit."""
    saved = {n: p.detach().clone() for n, p in prunable.items()}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for n, p in prunable.items():
                p.copy_(saved[n])


class ScorePruner(Pruner):
    """Subclasses implement :meth:`score`; ``Params`` must have ``scope`` and ``rounds`` (see ScoreParams)."""

    Params = ScoreParams
    invert_scores: bool = False  # set by the "invert" sanity ablation: keep the LOWEST scores
    masks: dict[str, torch.Tensor] | None = None  # the current masks while score() runs (all ones in round 1)

    def score(self, model: nn.Module, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """Scores keyed by the names of ``ctx.prunable``; the model's prunable weights are already masked."""
        raise NotImplementedError

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> dict[str, torch.Tensor]:
        density = 1.0 - sparsity
        masks = masking.full_masks(ctx.prunable)
        with masked_weights(ctx.prunable) as original:
            schedule = masking.exponential_schedule(density, self.params.rounds)
            for r, round_density in enumerate(schedule, start=1):
                with torch.no_grad():
                    for n, p in ctx.prunable.items():
                        p.copy_(original[n] * masks[n])
                self.masks = masks
                scores = self.score(model, ctx)
                if self.invert_scores:
                    scores = {n: -s for n, s in scores.items()}
                masks = masking.topk_masks(masking.restrict_scores(scores, masks), round_density, self.params.scope,
                                           getattr(self.params, "tie_rule", "exact"), final=r == len(schedule))
        return masks
