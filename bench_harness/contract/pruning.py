"""Calling a pruner: build it, run it, validate what it returns. Shared by runs, the API and check-plugin."""
from __future__ import annotations

import hashlib
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from bench_harness.contract import ablations, masking
from bench_harness.contract.pruner import PruneContext, Pruner, PruneResult, Regime, SparsityKind
from bench_harness.contract.services import Services
from bench_harness.errors import InvalidMaskError


class SparsityOffTargetWarning(UserWarning):
    """A pruner of sparsity kind ``target`` missed its target by more than its tolerance."""


def call_pruner(pruner_cls: type[Pruner], params: Any, model: nn.Module, sparsity: float, ctx: PruneContext,
                ablation: str | None = None) -> PruneResult:
    """Run a pruner and validate its output; raises InvalidMaskError naming the pruner and every problem."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1) (fraction of weights removed), got {sparsity}")
    pruner = pruner_cls(params)
    ablations.prepare_pruner(ablation, pruner)
    out = pruner.prune(model, sparsity, ctx)
    result = as_result(pruner_cls, out)
    problems = validate_result(pruner_cls, result, model, ctx, sparsity)
    if problems:
        raise InvalidMaskError(f"pruner {pruner_cls.name!r} returned invalid output: " + "; ".join(problems))
    result.masks = {n: m.to(ctx.prunable[n].device) for n, m in result.masks.items()}
    result.achieved_sparsity = 1.0 - masking.global_density(result.masks)
    result.weights_frozen = pruner_cls.regime == Regime.MASK_LEARNING
    if (pruner_cls.sparsity_kind == SparsityKind.TARGET and not pruner_cls.ignores_sparsity
            and result.updater is None
            and not masking.sparsity_on_target(result.masks, sparsity, pruner_cls.sparsity_tolerance)):
        warnings.warn(SparsityOffTargetWarning(
            f"pruner {pruner_cls.name!r} reached sparsity {result.achieved_sparsity:.4f} for the target {sparsity:.4f} "
            f"(tolerance {pruner_cls.sparsity_tolerance})"), stacklevel=2)
    return result


def as_result(pruner_cls: type[Pruner], out: Any) -> PruneResult:
    """What prune() returned as a PruneResult; InvalidMaskError naming the pruner when it is neither a PruneResult
    nor a mapping of masks (None: a forgotten ``return``)."""
    if isinstance(out, PruneResult):
        return out
    if not isinstance(out, Mapping):
        raise InvalidMaskError(f"pruner {pruner_cls.name!r} returned {type(out).__name__} from prune(): it must "
                               f"return a dict of masks (parameter name -> bool tensor) or a PruneResult"
                               + (" (a missing return statement?)" if out is None else ""))
    return PruneResult(masks=dict(out))


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> dict[str, str]:
    """A SHA-256 of every parameter's bytes (one tensor at a time on the CPU: no second copy of the model)."""
    out = {}
    for name, p in model.named_parameters():
        data = p.detach().contiguous().cpu().reshape(-1)
        out[name] = hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return out


def changed_weights(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Names of parameters whose fingerprint differs (or that appeared or disappeared)."""
    return sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))


def validate_result(pruner_cls: type[Pruner], result: PruneResult, model: nn.Module, ctx: PruneContext,
                    sparsity: float) -> list[str]:
    """Problems with a pruner's output, as sentences: masks (by sparsity kind) and non-finite weights."""
    exact = pruner_cls.sparsity_kind == SparsityKind.EXACT and not pruner_cls.ignores_sparsity
    if result.sparsity_of not in ("prunable", "all"):
        return [f"sparsity_of must be 'prunable' or 'all', got {result.sparsity_of!r}"]
    frozen = pruner_cls.regime == Regime.MASK_LEARNING
    if result.weights_frozen is not None and bool(result.weights_frozen) != frozen:
        return [f"weights_frozen={result.weights_frozen!r} contradicts regime {pruner_cls.regime.value!r}: the regime "
                f"decides (weights are frozen exactly for Regime.MASK_LEARNING); drop weights_frozen"]
    during = pruner_cls.regime == Regime.DURING_TRAINING
    if during != (result.updater is not None):
        return [f"a {pruner_cls.regime.value!r} pruner returned updater={type(result.updater).__name__}: exactly the "
                f"pruners of regime 'during_training' return a MaskUpdater (in PruneResult.updater)"]
    if during and not callable(getattr(result.updater, "update", None)):
        return [f"updater {result.updater!r} has no update() method: subclass bench_harness.MaskUpdater"]
    # during training the target is checked on the masks training ends with (GMP starts dense)
    on_prunable = exact and result.sparsity_of == "prunable" and not during
    problems = masking.validate_masks(result.masks, ctx.prunable, sparsity if on_prunable else None,
                                      pruner_cls.sparsity_tolerance)
    if not problems and exact and result.sparsity_of == "all" and not during:
        achieved = sparsity_over_all(model, result.masks)
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        slack = 0.5 * len(result.masks) / total if total else 0.0
        if abs(achieved - sparsity) > pruner_cls.sparsity_tolerance + slack + 1e-12:
            problems.append(f"achieved sparsity over all trainable parameters {achieved:.6f} differs from the "
                            f"target {sparsity:.6f} by more than the declared tolerance "
                            f"{pruner_cls.sparsity_tolerance}")
    if not problems:
        bad = nonfinite_parameters(model, result.masks)
        if bad:
            problems.append(f"non-finite weights (NaN or inf) in {', '.join(bad[:8])}{' …' if len(bad) > 8 else ''}")
    return problems


@torch.no_grad()
def sparsity_over_all(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of zeros among all trainable parameters once ``masks`` are applied (existing zeros count)."""
    total = zeros = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        values = p.detach()
        if name in masks:
            values = values * masks[name].to(values.device)
        total += values.numel()
        zeros += int(values.numel() - torch.count_nonzero(values))
    return zeros / total if total else 0.0


@torch.no_grad()
def nonfinite_parameters(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Names of parameters or buffers holding NaN/inf (pruned entries too: NaN times a zero mask is NaN)."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]
    return bad


def select_prunable(model: nn.Module, prunable: Any = None, exclude_first: bool = False,
                    exclude_last: bool = False, exclude: str | None = None) -> dict[str, nn.Parameter]:
    """The prunable set: conv/linear weights filtered by a regex (full match) or an explicit list of names."""
    if prunable is not None and not isinstance(prunable, (str, list, tuple)):
        raise TypeError(f"prunable must be a regex string or a list of parameter names, got {type(prunable).__name__}")
    found = masking.prunable_parameters(model, exclude_first=exclude_first, exclude_last=exclude_last,
                                        include=list(prunable) if isinstance(prunable, tuple) else prunable,
                                        exclude=exclude)
    if not found:
        raise ValueError(f"no prunable weights selected (prunable={prunable!r}, exclude={exclude!r}); the model's "
                         f"conv/linear weights are {list(masking.prunable_parameters(model))[:8]}")
    return dict(found)


def make_context(model: nn.Module, *, seed: int = 0, device: torch.device | None = None, batches=None,
                 exclude_first: bool = False, exclude_last: bool = False, prunable: Any = None,
                 exclude: str | None = None, services: Services | None = None, **kw: Any) -> PruneContext:
    """A pruner's context; ``services`` default: the process registry's, data in ``./data`` (the Python API)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    selected = select_prunable(model, prunable, exclude_first, exclude_last, exclude)
    return PruneContext(prunable=selected, device=device, generator=generator, seed=seed, batches=batches,
                        model=model, services=services or Services(call_pruner), **kw)


def mask_summary(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sparsity and layer collapse of a pruned model, counted on its weights (zeros), not trusted from the masks:
    a kept weight that is zero counts as removed, a layer whose weights are all zero as collapsed."""
    total, nonzero = masking.count_parameters(model)
    weights = masking.weight_summary(model, masks)
    return {
        "achieved_sparsity": 1.0 - weights["kept"] / weights["total"] if weights["total"] else 0.0,
        "achieved_sparsity_all": 1.0 - nonzero / total if total else 0.0,
        "layer_density": weights["layer_density"],
        "collapsed_layers": weights["collapsed_layers"],
        "params_total": total,
        "params_nonzero": nonzero,
    }


def check_final_masks(pruner_cls: type[Pruner], masks: Mapping[str, torch.Tensor],
                      prunable: Mapping[str, torch.Tensor], sparsity: float) -> None:
    """The masks a during-training pruner's training ended with, checked as ``call_pruner`` checks a one-shot
    pruner's: InvalidMaskError for an ``exact`` pruner off its target, a SparsityOffTargetWarning for ``target``."""
    exact = pruner_cls.sparsity_kind == SparsityKind.EXACT and not pruner_cls.ignores_sparsity
    problems = masking.validate_masks(masks, prunable, sparsity if exact else None, pruner_cls.sparsity_tolerance)
    if problems:
        raise InvalidMaskError(f"pruner {pruner_cls.name!r} ended training with invalid masks: " + "; ".join(problems))
    if (pruner_cls.sparsity_kind == SparsityKind.TARGET
            and not masking.sparsity_on_target(masks, sparsity, pruner_cls.sparsity_tolerance)):
        warnings.warn(SparsityOffTargetWarning(
            f"pruner {pruner_cls.name!r} ended training at sparsity {1.0 - masking.global_density(masks):.4f} for the "
            f"target {sparsity:.4f} (tolerance {pruner_cls.sparsity_tolerance})"), stacklevel=2)
