"""LAMP (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning"; official code
jaeho-lee/layer-adaptive-sparsity, ``tools/pruners.py``).

Within each layer the weights are sorted by magnitude, ascending (u = 1..n); the score of the u-th is
``w_u² / Σ_{v ≥ u} w_v²`` (its squared weight over the squared weights it and every larger one hold); one global
threshold on the scores then gives the masks. The largest weight of every layer scores 1, so a layer keeps at least
one weight whenever at least as many weights survive as there are layers.

Like ``magnitude`` it runs at initialization by default (the regime of this harness's score pruners); the paper
prunes a trained network: give the model entry pretrained weights (``weights: "pretrain:..."`` or ``"file:..."``,
see docs/allocation.md), and ``rounds`` > 1 repeats it on the masked weights (the official ``iterate.py`` retrains
between iterations; rounds here do not).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench_harness import ScoreParams, ScorePruner, hookimpl, param


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer, shaped like ``weight``, in float64.

    Sort ``w²`` ascending, stable (tied weights keep their index order, so of two equal weights the later one
    comes later and scores higher: ``[1, 1]`` scores ``[1/2, 1]``); score = ``w_u² / Σ_{v ≥ u} w_v²``. The
    suffix sums are summed from the largest weight down (the official code subtracts a running sum from the total
    in float32, which loses the smallest denominators to cancellation). A layer of zeros scores 0 everywhere
    (0/0 in the official code: NaN)."""
    sq = weight.detach().double().flatten() ** 2
    order = torch.sort(sq, stable=True).indices
    sorted_sq = sq[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores_sorted = torch.where(suffix > 0, sorted_sq / torch.where(suffix > 0, suffix, torch.ones_like(suffix)),
                                torch.zeros_like(suffix))
    scores = torch.empty_like(scores_sorted)
    scores[order] = scores_sorted
    return scores.view_as(weight)


@dataclass
class LampParams(ScoreParams):
    tie_rule: Literal["reference", "exact"] = param("exact", "exact (default): keep round(d N), the official code's "
                                                    "count (it also keeps every score tied with the last kept); "
                                                    "reference: prune every score <= the k-th smallest, "
                                                    "k = int((1-d) N) (Synaptic-Flow's rule)")


class Lamp(ScorePruner):
    """LAMP scores (:func:`lamp_scores`) per layer, one global threshold (``scope: global``)."""

    name = "lamp"
    description = "LAMP (Lee et al. 2021): w²/Σ_{|v|≥|u|} w_v² per layer, one global threshold; for trained weights"
    Params = LampParams

    def score(self, model, ctx):
        return {n: lamp_scores(p).to(p.device) for n, p in ctx.prunable.items()}


@hookimpl
def bench_register_pruners():
    return [Lamp]
