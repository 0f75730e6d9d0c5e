"""Score-then-mask pruners (the Synaptic-Flow interface): scoring is a pure function of (model, data);
masking is the shared top-k code, optionally over R rounds of the exponential schedule.

``check_numerics`` (every score pruner; on by default for PX): on round 1 the scores are computed once more in
float64 on a copy of the model and data, and the weights kept at the target density are compared; when they
differ (IoU < 0.9) or a score is not finite, a :class:`bench_harness.DegenerateScoresWarning` names the pruner and
the layers whose scores are rounding residue (criteria in :mod:`bench_harness.contract.numerics`). The float64 pass runs
on copies with the random number generators forked, so the pruner's masks are the same with the check on or off.
Later rounds are checked for non-finite scores only (free).

``allocation`` (every score pruner; default null: the ``scope`` rule): each layer keeps the count that
:func:`bench_harness.contract.allocation.layer_counts` gives it (uniform, uniform with a dense first layer, ERK, ER),
by its own scores (:func:`count_masks`, the pruner's tie rule), in every round of the schedule (docs/allocation.md).
"""
# No `from __future__ import annotations` here: the fields of ScoreParams must be real types, not strings, because
# pydantic 2.6 (the declared minimum) resolves an inherited dataclass field's string annotation in the SUBCLASS's
# module (a plugin's Params(ScoreParams) without `Literal` or `Optional` imported failed to build a schema).

import copy
import dataclasses
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Optional

import torch
from torch import nn

from bench_harness.contract import allocation as layer_allocation
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
    allocation: Optional[Literal["uniform", "uniform_dense_first", "erk", "er"]] = param(
        None, "per-layer densities from a layer allocation (docs/allocation.md): each layer keeps its count of "
              "highest scores (uniform; uniform_dense_first: first layer dense, the total still on target; erk: "
              "Erdős–Rényi-Kernel; er: Erdős–Rényi, as RigL/JaxPruner); null: the scope decides")
    erk_power_scale: float = param(1.0, "allocation erk: the ratio (sum(shape)/prod(shape)) ** erk_power_scale "
                                        "(RigL's erk_power_scale; < 1 is closer to uniform)")


check_allocation_params = layer_allocation.check_params  # its home is the allocation module (no torch)


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

    @classmethod
    def make_params(cls, values: Mapping[str, Any] | None) -> Any:
        params = super().make_params(values)
        check_allocation_params(cls.name, params)
        return params

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> dict[str, torch.Tensor]:
        density = 1.0 - sparsity
        masks = masking.full_masks(ctx.prunable)
        check_allocation_params(self.name, self.params)
        alloc = getattr(self.params, "allocation", None)
        shapes = {n: tuple(p.shape) for n, p in ctx.prunable.items()}
        check = bool(getattr(self.params, "check_numerics", False))
        warned_nonfinite = False
        with masked_weights(ctx.prunable) as original:
            schedule = masking.exponential_schedule(density, self.params.rounds)
            for r, round_density in enumerate(schedule, start=1):
                with torch.no_grad():
                    for n, p in ctx.prunable.items():
                        p.copy_(original[n] * masks[n])
                self.masks = masks
                before = ctx.generator.get_state() if check and r == 1 and _has_state(ctx.generator) else None
                scores = self.score(model, ctx)
                if check and r == 1:
                    report = self._check_from(before, model, ctx, scores, self._target_densities(shapes, density))
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
                restricted = masking.restrict_scores(scores, masks)
                if alloc is None:
                    masks = masking.topk_masks(restricted, round_density, self.params.scope, self._tie_rule(),
                                               final=r == len(schedule))
                else:  # never more than a layer still has: a round never revives a pruned weight
                    counts = self._layer_counts(shapes, round_density)
                    counts = {n: min(c, int(masks[n].sum())) for n, c in counts.items()}
                    masks = count_masks(restricted, counts, self._tie_rule(), final=r == len(schedule))
        return masks

    def _layer_counts(self, shapes: Mapping[str, tuple[int, ...]], density: float) -> dict[str, int]:
        return layer_allocation.layer_counts(shapes, density, self.params.allocation,
                                             erk_power_scale=getattr(self.params, "erk_power_scale", 1.0))

    def _target_densities(self, shapes: Mapping[str, tuple[int, ...]], density: float) -> float | dict[str, float]:
        """The density the numerics check keeps at: the global one, or each layer's under an allocation."""
        if getattr(self.params, "allocation", None) is None:
            return density
        counts = self._layer_counts(shapes, density)
        return {n: counts[n] / max(1, math.prod(shapes[n])) for n in shapes}

    def _tie_rule(self) -> str:
        """The parameters' ``tie_rule``; for a ``Params`` without one, the built-ins' rule (``DEFAULT_TIE_RULE``)."""
        return getattr(self.params, "tie_rule", DEFAULT_TIE_RULE)

    def _check_from(self, before, model, ctx, scores, density) -> numerics.HealthReport:
        """:meth:`check_scores` with the generator as it was before this round's draws (``before``), so that a
        pruner that samples (random scores, re-drawn weights) draws the same numbers in float64; the generator
        is put back where the round left it."""
        if before is None:
            return self.check_scores(model, ctx, scores, density)
        after = ctx.generator.get_state()
        ctx.generator.set_state(before)
        try:
            return self.check_scores(model, ctx, scores, density)
        finally:
            ctx.generator.set_state(after)

    def check_scores(self, model: nn.Module, ctx: PruneContext, scores: Mapping[str, torch.Tensor],
                     density: float | Mapping[str, float]) -> numerics.HealthReport:
        """Compare ``scores`` (this round's) with the same scores computed in float64 (see the module doc);
        ``density``: per layer (a mapping) under an allocation."""
        scores64 = self.score_float64(model, ctx)
        scope = "layerwise" if isinstance(density, Mapping) else self.params.scope
        return numerics.compare_precisions(scores, scores64, density, scope)  # type: ignore[arg-type]

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


def count_masks(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int], tie_rule: str = "exact",
                final: bool = True) -> dict[str, torch.Tensor]:
    """Each layer keeps its ``counts[name]`` highest scores (NaN lowest).

    ``exact``: exactly that many, ties kept in index order (:func:`masking.layerwise_topk_masks`). ``reference``:
    within the layer, Synaptic-Flow's rule with ``k = n - count`` to prune: every score ``<=`` the k-th smallest
    is pruned (ties pruned); on the ``final`` round, ties beyond k come back, the last ones first, so that the
    layer keeps exactly its count (as :func:`masking.reference_threshold_masks` with ``honour_target``)."""
    if tie_rule == "exact":
        out = {}
        for n, s in scores.items():
            keep = masking.layerwise_topk_masks({n: s}, {n: counts[n] / max(1, s.numel())})[n]
            if int(keep.sum()) != counts[n]:  # cannot happen: round(c / n * n) == c for every c <= n
                raise AssertionError(f"{n}: kept {int(keep.sum())}, asked {counts[n]}")
            out[n] = keep
        return out
    if tie_rule != "reference":
        raise ValueError(f"unknown tie_rule {tie_rule!r}: use 'exact' or 'reference'")
    out = {}
    for n, s in scores.items():
        flat = torch.nan_to_num(s.detach(), nan=float("-inf")).flatten()
        k = flat.numel() - int(counts[n])
        if k < 1:
            out[n] = torch.ones_like(s, dtype=torch.bool)
            continue
        threshold = torch.kthvalue(flat.cpu(), k).values.to(flat.device)
        keep = flat > threshold
        if final:
            excess = int((~keep).sum()) - k
            if excess > 0:
                tied = ((flat == threshold) & ~keep).nonzero().flatten()
                keep[tied[-excess:]] = True
        out[n] = keep.view_as(s)
    return out


def _has_state(generator) -> bool:
    return callable(getattr(generator, "get_state", None)) and callable(getattr(generator, "set_state", None))


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
