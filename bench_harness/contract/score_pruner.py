"""Score-then-mask pruners (the Synaptic-Flow interface): scoring is a pure function of (model, data);
masking is the shared top-k code, optionally over R rounds of the exponential schedule.

``check_numerics`` (every score pruner; on by default for PX): on round 1 the scores are computed once more in
float64 on a copy of the model and data, and the weights kept at the target density are compared; when they
differ (IoU < 0.9) or a score is not finite, a :class:`bench_harness.DegenerateScoresWarning` names the pruner and
the layers whose scores are rounding residue (criteria in :mod:`bench_harness.contract.numerics`). The float64 pass runs
on copies with the random number generators forked, so the pruner's masks are the same with the check on or off.
Later rounds are checked for non-finite scores only (free).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch
from torch import nn

from bench_harness.contract import masking, numerics
from bench_harness.contract.pruner import PruneContext, Pruner, param

# The tie rule of every built-in score pruner, and of a plugin whose Params has no ``tie_rule`` field: one default,
# so that a pruner written from the docs thresholds as the built-ins do (it cannot fall back to another rule).
DEFAULT_TIE_RULE = "reference"


@dataclass
class ScoreParams:
    scope: Literal["global", "layerwise"] = param("global", "global: one threshold over all prunable weights; "
                                 "layerwise: every layer "
                                 "keeps the same density")
    rounds: int = param(1, "rounds of the exponential schedule density**(r/R), re-scoring the masked network "
                           "each round; 1 = one shot")
    tie_rule: Literal["reference", "exact"] = param(DEFAULT_TIE_RULE, "reference: prune every score <= the k-th "
                                                    "smallest, k = int((1-d)N) (Synaptic-Flow, PX); exact: keep "
                                                    "exactly round(d N), ties by position")
    check_numerics: bool = param(False, "round 1: score again in float64 on a copy and warn "
                                        "(DegenerateScoresWarning) when the kept sets at the target density differ "
                                        "(IoU < 0.9) or a score is not finite; costs about one extra round")


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
    """Subclasses implement :meth:`score`; ``Params`` must have ``scope`` and ``rounds`` (subclass ScoreParams);
    without ``tie_rule`` or ``check_numerics`` fields they take ScoreParams' defaults (the reference tie rule)."""

    Params = ScoreParams
    invert_scores: bool = False  # set by the "invert" sanity ablation: keep the LOWEST scores
    masks: dict[str, torch.Tensor] | None = None  # the current masks while score() runs (all ones in round 1)

    def score(self, model: nn.Module, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """Scores keyed by the names of ``ctx.prunable``; the model's prunable weights are already masked."""
        raise NotImplementedError

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> dict[str, torch.Tensor]:
        density = 1.0 - sparsity
        masks = masking.full_masks(ctx.prunable)
        check = bool(getattr(self.params, "check_numerics", False))
        warned_nonfinite = False
        with masked_weights(ctx.prunable) as original:
            schedule = masking.exponential_schedule(density, self.params.rounds)
            for r, round_density in enumerate(schedule, start=1):
                with torch.no_grad():
                    for n, p in ctx.prunable.items():
                        p.copy_(original[n] * masks[n])
                self.masks = masks
                scores = self.score(model, ctx)
                if check and r == 1:
                    report = self.check_scores(model, ctx, scores, density)
                    if report.degenerate:
                        warned_nonfinite = bool(report.nonfinite)
                        warnings.warn(report.warning(self.name), stacklevel=2)
                elif check and not warned_nonfinite:
                    bad = numerics.nonfinite_layers(scores)
                    if bad:
                        warned_nonfinite = True
                        warnings.warn(numerics.DegenerateScoresWarning(
                            self.name, bad, None, bad, detail=f"first seen in round {r} of {len(schedule)}"),
                            stacklevel=2)
                if self.invert_scores:
                    scores = {n: -s for n, s in scores.items()}
                masks = masking.topk_masks(masking.restrict_scores(scores, masks), round_density, self.params.scope,
                                           self._tie_rule(), final=r == len(schedule))
        return masks

    def _tie_rule(self) -> str:
        """The parameters' ``tie_rule``; for a ``Params`` without one, the built-ins' rule (``DEFAULT_TIE_RULE``)."""
        return getattr(self.params, "tie_rule", DEFAULT_TIE_RULE)

    def check_scores(self, model: nn.Module, ctx: PruneContext, scores: Mapping[str, torch.Tensor],
                     density: float) -> numerics.HealthReport:
        """Compare ``scores`` (this round's) with the same scores computed in float64 (see the module doc)."""
        scores64 = self.score_float64(model, ctx)
        return numerics.compare_precisions(scores, scores64, density, self.params.scope)

    def score_float64(self, model: nn.Module, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """:meth:`score` on a float64 copy of the model, with float64 data and forked random generators.

        Subclasses that cache per-model state across rounds must key it by the model they are given (the copy
        is a different module)."""
        model64 = copy.deepcopy(model).double()
        params64 = dict(model64.named_parameters())
        ctx64 = _float64_context(ctx, model64, {n: params64[n] for n in ctx.prunable})
        masks = self.masks
        devices = [p.device for p in params64.values() if p.device.type == "cuda"][:1]
        try:
            with torch.random.fork_rng(devices=devices):
                return self.score(model64, ctx64)
        finally:
            self.masks = masks


def _as_float64(batch):
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_as_float64(b) for b in batch)
    return batch


def _float64_context(ctx: PruneContext, model64: nn.Module, prunable: dict[str, nn.Parameter]) -> PruneContext:
    batches = ctx.batches
    generator = ctx.generator
    if isinstance(generator, torch.Generator):  # a copy in the same state: the float32 run's draws are untouched
        clone = torch.Generator(device=generator.device)
        clone.set_state(generator.get_state())
        generator = clone
    changes = {"prunable": prunable, "generator": generator, "model": model64,
               "batches": None if batches is None else (lambda: (_as_float64(b) for b in batches()))}
    if dataclasses.is_dataclass(ctx):
        fields = {f.name for f in dataclasses.fields(ctx)}
        return dataclasses.replace(ctx, **{k: v for k, v in changes.items() if k in fields})
    out = copy.copy(ctx)
    for k, v in changes.items():
        setattr(out, k, v)
    return out
