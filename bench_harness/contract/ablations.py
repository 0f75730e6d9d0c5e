"""Sanity ablations (Frankle et al. 2021, "Pruning neural networks at initialization: why are we missing
the mark?") applied after any pruner:

- ``shuffle``: each layer's mask is randomly permuted (same per-layer density, structure destroyed);
- ``reinit``: the kept weights are re-initialised (new draw of the model's initialisation);
- ``invert``: the pruner keeps its lowest-scoring weights instead of its highest (score-based pruners only).

If a method's accuracy survives ``shuffle`` or ``reinit``, it uses no more than its per-layer densities.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from bench_harness.errors import BenchError

if TYPE_CHECKING:  # torch is imported by the functions that use it: validating a suite's ablations needs none
    import torch
    from torch import nn

ABLATIONS = ("shuffle", "reinit", "invert")


def shuffle_masks(masks: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for name, m in masks.items():
        perm = torch.randperm(m.numel(), generator=generator)
        out[name] = m.flatten()[perm.to(m.device)].view_as(m)
    return out


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh initialisation of every module with ``reset_parameters`` (a different draw than the run's)."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed + 1_000_003)
    try:
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(state)


def prepare_pruner(ablation: str | None, pruner) -> None:
    """Ablations that change how the pruner scores act before pruning."""
    if ablation == "invert":
        from bench_harness.contract.score_pruner import ScorePruner

        if not isinstance(pruner, ScorePruner):
            raise BenchError(f"the 'invert' ablation needs a score-based pruner; {pruner.name!r} does not expose "
                             f"scores. Use 'shuffle' or 'reinit' with it.")
        pruner.invert_scores = True


def apply_after_pruning(ablation: str | None, model: nn.Module, masks: dict[str, torch.Tensor],
                        generator: torch.Generator, seed: int) -> dict[str, torch.Tensor]:
    if ablation == "shuffle":
        return shuffle_masks(masks, generator)
    if ablation == "reinit":
        reinitialize(model, seed)
    return masks
