"""Recipe-driven training and evaluation, with masks enforced after every optimizer step.

:func:`train` is the one training loop of the harness: the run's training after pruning, the harness's own
pretraining and every training a pruner asks for through the training service (:mod:`bench_harness.running.trainer`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bench_harness.contract.masking import MaskEnforcer
from bench_harness.errors import RunFailure
from bench_harness.running.mask_updates import MaskSchedule
from bench_harness.running.step_options import prepare_input, prepare_model, step_options


@dataclass
class Evaluation:
    top1: float
    top5: float
    loss: float


def param_groups(model: nn.Module, params=None, base_lr: float = 0.1) -> list[dict]:
    """Optimizer parameter groups: ``params`` None (every parameter of ``model`` with ``requires_grad``), an
    iterable of tensors, or a list of dicts (torch parameter groups; a group's ``lr`` is its base lr, which the
    schedule scales). Every group gets ``base_lr``: the lr the schedule multiplies."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(g, params=list(g["params"])) for g in params]
    else:
        groups = [{"params": params}]
    for g in groups:
        g["base_lr"] = float(g.get("lr", base_lr))
        g["lr"] = g["base_lr"]
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: no parameter requires a gradient (pass params= to the training service)")
    return groups


def classifier_prefix(model: nn.Module) -> str | None:
    """The module path of a model's classifier: its last ``nn.Linear`` (None: it has none)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def recipe_param_groups(named: Mapping[str, torch.Tensor], classifier: str | None, recipe) -> list:
    """What the recipe trains of a model's parameters (``named``: name -> tensor, those with ``requires_grad``):
    all of them at ``lr``, or, for a transfer (``backbone_lr_scale`` != 1 or ``freeze_backbone``), the classifier
    (the module ``classifier``) at ``lr`` and the backbone (every other parameter) at ``lr x backbone_lr_scale`` or
    not at all. The groups' lr is the base the schedule scales."""
    trainable = {n: p for n, p in named.items() if p.requires_grad}
    scale, frozen = float(getattr(recipe, "backbone_lr_scale", 1.0)), bool(getattr(recipe, "freeze_backbone", False))
    if scale == 1.0 and not frozen:
        return list(trainable.values())
    if classifier is None:
        raise RunFailure("recipe backbone_lr_scale / freeze_backbone train the classifier apart from the backbone, "
                         "and this model has no Linear layer to be its classifier: leave them at their defaults")
    in_head = {n: n == classifier or n.startswith(classifier + ".") for n in trainable}
    groups = [{"params": [p for n, p in trainable.items() if in_head[n]], "lr": recipe.lr}]
    body = [p for n, p in trainable.items() if not in_head[n]]
    if body and not frozen:
        groups.append({"params": body, "lr": recipe.lr * scale})
    return groups


def make_optimizer(model: nn.Module, recipe, params=None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (see :func:`param_groups`); None: the model's parameters as the
    recipe trains them (:func:`recipe_param_groups`)."""
    if params is None:
        params = recipe_param_groups(dict(model.named_parameters()), classifier_prefix(model), recipe)
    params = param_groups(model, params, recipe.lr)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}: use sgd, adam or adamw")


def lr_factor(recipe, epoch: float) -> float:
    """Multiplier of the base lr at a (fractional) epoch: warmup, then the schedule."""
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        return (epoch + 1e-9) / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "step":
        return recipe.gamma ** sum(1 for m in recipe.milestones if epoch >= m)
    if recipe.schedule == "cosine":
        span = max(recipe.epochs - recipe.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * min(max(epoch - recipe.warmup_epochs, 0) / span, 1.0)))
    raise ValueError(f"unknown schedule {recipe.schedule!r}: use cosine, step or constant")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> Evaluation:
    model.eval()
    correct1 = correct5 = 0
    total_loss = 0.0
    count = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        count += len(y)
    return Evaluation(correct1 / max(count, 1), correct5 / max(count, 1), total_loss / max(count, 1))


def _nonfinite(epoch: int, first_step: int, last_step: int) -> RunFailure:
    where = f"step {last_step}" if first_step == last_step else f"steps {first_step}-{last_step}"
    return RunFailure(f"non-finite training loss at epoch {epoch + 1}, {where}: lower the learning rate or check the "
                      f"pruned network (layer collapse?)")


def train(
    model: nn.Module,
    loader: DataLoader,
    recipe,
    device: torch.device,
    masks: Mapping[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    after_epoch: Callable[[int, torch.optim.Optimizer], None] | None = None,
    params=None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    schedule: MaskSchedule | None = None,
) -> torch.optim.Optimizer:
    """Train in place from schedule epoch ``start_epoch`` up to ``epochs`` (default: the recipe's); pruned
    weights stay exactly zero.

    ``params``: what to optimize (see :func:`param_groups`; default every parameter with ``requires_grad``);
    ``loss_fn(model, x, y)``: replaces cross-entropy (it must return a scalar); ``after_step(step)`` is called
    after every optimizer step (global step count, from 1); ``schedule``: masks that change while training
    (:mod:`bench_harness.running.mask_updates`; it replaces ``masks``). Raises RunFailure on a non-finite loss.
    """
    epochs = recipe.epochs if epochs is None else epochs
    model.to(device)
    if schedule is not None:
        masks = schedule.masks
    enforcer = MaskEnforcer(model, masks) if masks else None
    optimizer = optimizer or make_optimizer(model, recipe, params)
    step = start_epoch * max(len(loader), 1)
    options = step_options(recipe, device)  # precision, channels_last, compile
    forward = prepare_model(model, options, custom_loss=loss_fn is not None)
    scaler = torch.amp.GradScaler("cuda", enabled=options.scaled)
    steps = max(len(loader), 1)
    total_steps = epochs * steps
    # the loss is accumulated on the device and checked every `check_every` steps: on a GPU a per-step
    # check (or .item()) would synchronise every step; on the CPU it is free, and the failing step is exact
    check_every = 1 if device.type == "cpu" else 25
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            running, seen, checked = torch.zeros((), device=device), 0, 0
            for i, (x, y) in enumerate(loader):
                factor = lr_factor(recipe, epoch + i / steps)
                for group in optimizer.param_groups:
                    group["lr"] = group.get("base_lr", recipe.lr) * factor
                x, y = prepare_input(x, device, options), y.to(device, non_blocking=True)
                with options.autocast(device):
                    if loss_fn is None:
                        loss = F.cross_entropy(forward(x), y, label_smoothing=recipe.label_smoothing)
                    else:
                        loss = loss_fn(model, x, y)
                running += loss.detach().float() * len(y)
                seen += len(y)
                if (i + 1) % check_every == 0 and not torch.isfinite(running):
                    raise _nonfinite(epoch, checked + 1, i + 1)
                checked = i + 1 if (i + 1) % check_every == 0 else checked
                optimizer.zero_grad(set_to_none=True)
                updating = schedule is not None and schedule.is_update_step(step + 1, total_steps, steps)
                if updating:
                    enforcer.capture = bool(schedule.updater.needs_dense_grad)
                scaler.scale(loss).backward()
                grad_scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0
                if not (updating and schedule.updater.skips_step):  # the reference's update steps take no step
                    scaler.step(optimizer)
                    scaler.update()
                if enforcer is not None:
                    enforcer.enforce()
                step += 1
                if updating:
                    schedule.step(step, total_steps, steps, model, optimizer, enforcer, grad_scale)
                if after_step is not None:
                    after_step(step)
            mean_loss = float(running) / max(seen, 1)
            if not math.isfinite(mean_loss):
                raise _nonfinite(epoch, checked + 1, steps)
            if after_epoch is not None:
                after_epoch(epoch + 1, optimizer)
            if on_epoch is not None:
                on_epoch(epoch + 1, mean_loss)
    finally:
        if enforcer is not None:
            enforcer.remove()
    return optimizer
