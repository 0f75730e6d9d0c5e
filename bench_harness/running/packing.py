"""Packed training: several runs of one architecture, data set and recipe trained as one batched computation.

Sweeps are many small runs; one LeNet-5 or ResNet-20 leaves most of a CPU (or GPU) idle. With ``packing: N`` in a
suite, the local executor prunes each run alone (as always), then trains up to N compatible runs together: their
parameters and buffers are stacked (``torch.func.stack_module_state``), one ``vmap`` of the model's forward computes
every run's loss on its own batch (each run keeps its own data order, seeded by its seed), and one optimizer steps
the stacked parameters. SGD, Adam and AdamW act element by element and the learning-rate schedule is the recipe's,
so each run follows exactly the updates it would follow alone (up to floating-point summation order); its masks stay
enforced (zero gradients, re-zeroed after each step) and BatchNorm keeps per-run running statistics. Each run still
gets its own row; ``packed_runs`` records how many were trained together and ``train_seconds`` is the packed
training time divided among them.

Compatible runs: same model (and parameters), data set, recipe, training span, device and prunable set. Runs whose
data augmentation draws from the global random generator (torchvision transforms) do not see the same augmented
images as when run alone; the results are then equal in distribution, not bit for bit. Checkpoint-resume
(``execute_run(resume=True)``, the SLURM executor) trains runs one at a time.

With ``recipe.data_on_device`` the packed runs share one device-resident copy of the data set (each run draws
its own order and augmentation from its own seeded generator, exactly as when trained alone, so packed and alone
see the same batches); ``precision`` applies (fp16 with loss scaling, bf16); ``channels_last`` and ``compile`` do
not (the rows say so).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from bench_harness.errors import RunFailure
from bench_harness.identity import config_hash
from bench_harness.running.step_options import step_options
from bench_harness.running.training import classifier_prefix, lr_factor, make_optimizer, recipe_param_groups


def packable_key(prepared) -> Any:
    """Runs with equal keys can be trained together; None: train alone (nothing to train, or masks that change
    while training: a during-training pruner's updater acts on one model)."""
    if prepared.end <= prepared.start or getattr(prepared, "updater", None) is not None:
        return None
    run = prepared.run
    return (run.model.name, config_hash(run.model.params), run.dataset.name, config_hash(run.dataset.params),
            repr(run.recipe), prepared.end, prepared.start, str(prepared.device), tuple(prepared.masks),
            len(prepared.data.train))


def train_packed(group: list, on_epoch=None) -> None:
    """Train the prepared runs of ``group`` (equal packable keys) together, in place; fills their rows."""
    first = group[0]
    device, recipe, end, start = first.device, first.run.recipe, first.end, first.start
    models = [p.model for p in group]
    t0 = time.perf_counter()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    base.train()
    masks = {n: torch.stack([p.masks[n].to(device) for p in group]) for n in first.masks}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    hooks = [params[n].register_hook(lambda g, m=m: g * m) for n, m in masks.items()]
    groups = recipe_param_groups(params, classifier_prefix(models[0]), recipe)  # stacked, by parameter name
    optimizer = make_optimizer(models[0], recipe, params=groups)

    def one_loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y, label_smoothing=recipe.label_smoothing)

    losses_of = vmap(one_loss)
    options = step_options(recipe, device)  # precision (channels_last and compile do not apply to vmap)
    scaler = torch.amp.GradScaler("cuda", enabled=options.scaled)
    loaders = [p.data.train for p in group]
    steps = max(len(loaders[0]), 1)
    try:
        for epoch in range(start, end):
            running = torch.zeros(len(group), device=device)
            seen = 0
            iterators = [iter(loader) for loader in loaders]
            for i in range(len(loaders[0])):
                batch = [next(it) for it in iterators]
                x = torch.stack([b[0] for b in batch]).to(device, non_blocking=True)
                y = torch.stack([b[1] for b in batch]).to(device, non_blocking=True)
                factor = lr_factor(recipe, epoch + i / steps)
                for g in optimizer.param_groups:
                    g["lr"] = g.get("base_lr", recipe.lr) * factor
                with options.autocast(device):
                    losses = losses_of(params, buffers, x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses.sum()).backward()
                scaler.step(optimizer)
                scaler.update()
                with torch.no_grad():
                    for n, m in masks.items():
                        params[n].mul_(m)
                running += losses.detach().float() * y.shape[1]
                seen += y.shape[1]
            means = (running / max(seen, 1)).tolist()
            bad = [p.run.run_id for p, v in zip(group, means) if not math.isfinite(v)]
            if bad:
                raise RunFailure(f"non-finite training loss at epoch {epoch + 1} in packed runs {bad}: lower the "
                                 f"learning rate or check the pruned networks")
            if on_epoch is not None:
                on_epoch(f"train (packed x{len(group)})", epoch + 1, end, sum(means) / len(means))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for i, model in enumerate(models):
            for n, t in model.named_parameters():
                t.copy_(params[n][i])
            for n, b in model.named_buffers():
                b.copy_(buffers[n][i])
    seconds = time.perf_counter() - t0
    for p in group:
        p.row["train_seconds"] = seconds / len(group)
        p.row["packed_runs"] = len(group)
        p.row.update(channels_last=False, compiled=False)
