"""Masks that change while a run trains (``Regime.DURING_TRAINING``): the state the training loop carries, how an
update is applied, and how it is logged and checkpointed.

The training loop (:func:`bench_harness.running.training.train`) owns a :class:`MaskSchedule` when a pruner returned a
:class:`bench_harness.contract.pruner.MaskUpdater`. After each optimizer step for which the updater says so, it calls
:meth:`MaskSchedule.step`, which

1. asks the updater for new masks (with this step's dense gradients when the updater needs them: captured by the
   mask enforcer's gradient hooks before the masks zero them, at update steps only);
2. checks them (the same names, shapes, bool);
3. resets the optimizer state (every per-parameter state tensor shaped like the weight: SGD momentum, Adam's
   moments) of each entry whose mask changed, as the RigL reference resets the slots of grown connections (a dropped
   entry's state is reset too: it is zero and stays so while the entry is pruned, and starts from zero if regrown);
4. hands the masks to the enforcer, which zeroes the weights pruned now and keeps them at zero;
5. logs the update: step, global density, per-layer density, fraction of entries whose mask flipped.

:meth:`MaskSchedule.state` and :meth:`MaskSchedule.restore` carry the masks, the updater's ``state_dict`` and its
random generator through the training service's epoch checkpoints (plain tensors and numbers: never unpickled).
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch
from torch import nn

from bench_harness.contract.masking import MaskEnforcer
from bench_harness.contract.pruner import MaskUpdate, MaskUpdater
from bench_harness.errors import RunFailure


def updater_generator(seed: int) -> torch.Generator:
    """The generator of a run's mask updates: seeded from the run's seed, apart from the pruner's ``ctx.generator``
    (which drew the initial masks) so that the two draw different streams."""
    digest = hashlib.sha256(f"mask-updates:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class MaskSchedule:
    """The masks of a during-training run, the updater that changes them, its generator and the update log."""

    def __init__(self, updater: MaskUpdater, masks: Mapping[str, torch.Tensor],
                 generator: torch.Generator | None = None) -> None:
        if not masks:
            raise ValueError("a during-training run needs masks for its prunable weights")
        self.updater = updater
        self.masks = {n: m.detach().clone().bool() for n, m in masks.items()}
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.log: list[dict[str, Any]] = []

    def is_update_step(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        return bool(self.updater.is_update_step(step, total_steps, steps_per_epoch))

    def step(self, step: int, total_steps: int, steps_per_epoch: int, model: nn.Module,
             optimizer: torch.optim.Optimizer, enforcer: MaskEnforcer, grad_scale: float = 1.0) -> None:
        """Apply the update of optimizer step ``step`` (see the module docstring); ``grad_scale``: the loss scale
        of mixed-precision training, divided out of the captured gradients."""
        params = dict(model.named_parameters())
        prunable = {n: params[n] for n in self.masks}
        grads = None
        if self.updater.needs_dense_grad:
            captured = enforcer.take_grads()
            grads = {n: (captured[n] / grad_scale if grad_scale != 1.0 else captured[n]) if n in captured
                     else torch.zeros_like(p) for n, p in prunable.items()}  # a weight the loss did not reach: 0
        update = MaskUpdate(step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch, model=model,
                            masks={n: m.clone() for n, m in self.masks.items()}, prunable=prunable, grads=grads,
                            optimizer=optimizer, generator=self.generator)
        new = self.updater.update(update)
        if new is None:
            self.log.append(entry(step, self.masks, 0))
            return
        problems = mask_problems(new, self.masks)
        if problems:
            raise RunFailure(f"mask updater {type(self.updater).__name__} returned invalid masks at step {step}: "
                             + "; ".join(problems))
        new = {n: new[n].to(self.masks[n].device) for n in self.masks}
        changed = 0
        for n, old in self.masks.items():
            flipped = old != new[n]
            count = int(flipped.sum())
            if count:
                changed += count
                reset_optimizer_state(optimizer, prunable[n], flipped)
        self.masks = new
        enforcer.set_masks(new)
        self.log.append(entry(step, new, changed))

    def state(self) -> dict[str, Any]:
        """What the epoch checkpoint keeps (plain tensors and types)."""
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}, "updater": self.updater.state_dict(),
                "generator": self.generator.get_state(), "log": [dict(e) for e in self.log]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Back to a checkpointed :meth:`state` (the masks must fit the run's)."""
        masks = state["masks"]
        problems = mask_problems(masks, self.masks)
        if problems:
            raise RunFailure("a checkpoint's masks do not fit the run: " + "; ".join(problems))
        self.masks = {n: masks[n].to(self.masks[n].device).bool() for n in self.masks}
        self.updater.load_state_dict(state["updater"])
        self.generator.set_state(state["generator"])
        self.log = [dict(e) for e in state["log"]]


def entry(step: int, masks: Mapping[str, torch.Tensor], changed: int) -> dict[str, Any]:
    """One line of the update log."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {"step": int(step), "density": kept / total if total else 1.0,
            "layer_density": {n: float(m.float().mean()) if m.numel() else 1.0 for n, m in masks.items()},
            "changed": changed / total if total else 0.0}


def mask_problems(new: Any, old: Mapping[str, torch.Tensor]) -> list[str]:
    """Why ``new`` cannot replace ``old`` (empty: it can): the same names, shapes, and bool tensors."""
    if not isinstance(new, Mapping):
        return [f"masks must be a dict of name -> bool tensor, got {type(new).__name__}"]
    problems = []
    if set(new) != set(old):
        missing, extra = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        problems.append(f"names differ from the run's masks (missing {missing[:4]}, unknown {extra[:4]})")
        return problems
    for n, m in old.items():
        got = new[n]
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or tuple(got.shape) != tuple(m.shape):
            problems.append(f"mask {n} must be a bool tensor of shape {tuple(m.shape)}, got "
                            f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}")
    return problems


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero the optimizer state of ``param`` at the entries ``where`` (every state tensor shaped like it)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(where.to(value.device), 0)
