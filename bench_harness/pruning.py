"""Calling a pruner: build it, run it, validate what it returns. Shared by runs, the API and check-plugin."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from bench_harness import ablations, masking
from bench_harness.errors import InvalidMaskError
from bench_harness.pruner import PruneContext, Pruner, PruneResult


def call_pruner(pruner_cls: type[Pruner], params: Any, model: nn.Module, sparsity: float, ctx: PruneContext,
                ablation: str | None = None) -> PruneResult:
    """Run a pruner and validate its masks; raises InvalidMaskError naming every problem."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1) (fraction of weights removed), got {sparsity}")
    pruner = pruner_cls(params)
    ablations.prepare_pruner(ablation, pruner)
    out = pruner.prune(model, sparsity, ctx)
    result = out if isinstance(out, PruneResult) else PruneResult(masks=dict(out))
    target = None if pruner_cls.ignores_sparsity else sparsity
    problems = masking.validate_masks(result.masks, ctx.prunable, target, pruner_cls.sparsity_tolerance)
    if problems:
        raise InvalidMaskError(f"pruner {pruner_cls.name!r} returned invalid masks: " + "; ".join(problems))
    result.masks = {n: m.to(ctx.prunable[n].device) for n, m in result.masks.items()}
    return result


def make_context(model: nn.Module, *, seed: int = 0, device: torch.device | None = None, batches=None,
                 exclude_first: bool = False, exclude_last: bool = False, **kw: Any) -> PruneContext:
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    prunable = masking.prunable_parameters(model, exclude_first=exclude_first, exclude_last=exclude_last)
    return PruneContext(prunable=dict(prunable), device=device, generator=generator, seed=seed, batches=batches,
                        **kw)


def mask_summary(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    total, nonzero = masking.count_parameters(model)
    return {
        "achieved_sparsity": 1.0 - masking.global_density(masks),
        "achieved_sparsity_all": 1.0 - nonzero / total if total else 0.0,
        "layer_density": masking.layer_densities(masks),
        "collapsed_layers": masking.collapsed_layers(masks),
        "params_total": total,
        "params_nonzero": nonzero,
    }
