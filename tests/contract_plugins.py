"""Pruners written against contract v2, one per regime the contract carries, used by tests/test_contract_v2.py.

They are registered in-process (``Registry(extra_plugins=[("contract", this module)])``), exactly as an
installed plugin's module would be through the entry-point group.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bench_harness import MaskUpdate, MaskUpdater, hookimpl, masking
from bench_harness.contract.pruner import Pruner, PruneResult, Regime, Requirements, SparsityKind, Stage, param


class PostTrainingMagnitude(Pruner):
    """Post-training regime: global magnitude of a pretrained model; records what it saw."""

    name = "pt_magnitude"
    regime = Regime.POST_TRAINING

    def prune(self, model, sparsity, ctx):
        scores = {n: p.detach().abs() for n, p in ctx.prunable.items()}
        weight_sum = float(sum(p.detach().double().abs().sum() for p in ctx.prunable.values()))
        return PruneResult(masking.topk_masks(scores, 1.0 - sparsity),
                           info={"weight_abs_sum": weight_sum, "pretrained": ctx.pretrained})


@dataclass
class LearnedParams:
    l1: float = param(1e-3, "L1 penalty on the prunable weights during training")
    threshold: float = param(0.05, "weights with |w| below this after training are pruned")
    l1_epochs: int = param(2, "epochs trained with the penalty; the run's training continues the schedule after")


class LearnedThreshold(Pruner):
    """Learned sparsity: train with an L1 penalty (a loss override), then drop the small weights."""

    name = "learned_threshold"
    regime = Regime.ITERATIVE
    sparsity_kind = SparsityKind.LEARNED
    changes_weights = True
    requires = Requirements(data=True, labels=True)
    Params = LearnedParams

    def prune(self, model, sparsity, ctx):
        trainer = ctx.require_trainer(self.name)
        weights = list(ctx.prunable.values())
        l1 = self.params.l1

        def loss(m, x, y):
            return F.cross_entropy(m(x), y) + l1 * sum(w.abs().sum() for w in weights)

        epochs = min(self.params.l1_epochs, trainer.epochs)
        trainer.fit(model, loss=loss, epochs=epochs, phase="l1")
        masks = {n: p.detach().abs() > self.params.threshold for n, p in ctx.prunable.items()}
        return PruneResult(masks, weights_changed=True, train_from_epoch=epochs)


def _produce_teacher(ctx):
    """A stage: train a copy of the model one epoch and keep |w| as the teacher's scores."""
    model = copy.deepcopy(ctx.model)
    prunable = masking.prunable_parameters(model)
    ctx.require_trainer("teacher stage").fit(model, epochs=1, phase="teacher")
    return {"scores": {n: p.detach().abs().cpu() for n, p in prunable.items()}}


class TeacherScores(Pruner):
    """A pruner fed by a stage artifact: the teacher's trained magnitudes, shared by every run of a model."""

    name = "teacher_scores"
    requires = Requirements(data=True, labels=True)

    @classmethod
    def stages(cls, params, run):
        return [Stage("test-teacher", {"model": run.model.name, "dataset": run.dataset.name, "seed": run.seed,
                                       "recipe_epochs": run.recipe.epochs}, _produce_teacher)]

    def prune(self, model, sparsity, ctx):
        if ctx.run is not None:
            stage = self.stages(self.params, ctx.run)[0]
        else:
            shapes = {n: list(p.shape) for n, p in ctx.prunable.items()}
            stage = Stage("test-teacher", {"shapes": shapes, "seed": ctx.seed}, _produce_teacher)
        teacher = ctx.stage(stage)
        scores = {n: teacher["scores"][n].to(p.device) for n, p in ctx.prunable.items()}
        if ctx.run_dir is not None:
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            (ctx.run_dir / "used-teacher.txt").write_text(ctx.artifacts.used["test-teacher"].key)
        return masking.topk_masks(scores, 1.0 - sparsity)


class _MaskedByScores(nn.Module):
    """weight -> weight * 1[score in the layer's top density] with a straight-through gradient to the score."""

    def __init__(self, scores: torch.Tensor, density: float) -> None:
        super().__init__()
        self.scores = scores
        self.density = density

    def forward(self, weight):
        k = max(1, int(round(self.density * self.scores.numel())))
        threshold = self.scores.detach().flatten().kthvalue(self.scores.numel() - k + 1).values
        hard = (self.scores >= threshold).to(weight.dtype)
        mask = hard + self.scores - self.scores.detach()  # straight-through
        return weight * mask


@dataclass
class PopupParams:
    score_lr: float = param(0.1, "learning rate of the scores")


class ScorePopup(Pruner):
    """Mask learning (Edge-Popup, layer-wise): train scores over frozen weights, keep the top scores."""

    name = "score_popup"
    regime = Regime.MASK_LEARNING
    requires = Requirements(data=True, labels=True)
    Params = PopupParams

    def prune(self, model, sparsity, ctx):
        trainer = ctx.require_trainer(self.name)
        density = 1.0 - sparsity
        modules = dict(model.named_modules())
        scores = {}
        frozen = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for n, w in ctx.prunable.items():
            s = torch.empty_like(w)
            nn.init.kaiming_uniform_(s.view(s.shape[0], -1), generator=ctx.generator)
            scores[n] = s.requires_grad_(True)
            parametrize.register_parametrization(modules[n.rsplit(".", 1)[0]], "weight",
                                                 _MaskedByScores(scores[n], density), unsafe=True)
        try:
            trainer.fit(model, params=[{"params": list(scores.values()), "lr": self.params.score_lr}],
                        recipe={"weight_decay": 0.0}, phase="scores")
        finally:
            for n in ctx.prunable:
                parametrize.remove_parametrizations(modules[n.rsplit(".", 1)[0]], "weight",
                                                    leave_parametrized=False)
            for n, p in model.named_parameters():
                p.requires_grad_(frozen[n])
        masks = masking.topk_masks({n: s.detach() for n, s in scores.items()}, density, "layerwise")
        return PruneResult(masks, info={"score_sum": float(sum(s.detach().sum() for s in scores.values()))})


class WritesNaN(Pruner):
    name = "writes_nan"
    changes_weights = True

    def prune(self, model, sparsity, ctx):
        name = list(ctx.prunable)[-1]
        with torch.no_grad():
            ctx.prunable[name].fill_(float("nan"))
        return masking.topk_masks({n: torch.ones_like(p) for n, p in ctx.prunable.items()}, 1.0 - sparsity)


class VersionTwoMagnitude(Pruner):
    name = "v2_magnitude"
    version = "2"

    def prune(self, model, sparsity, ctx):
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


class SwapUpdater(MaskUpdater):
    """Every ``every`` steps, per layer: drop the ``swap`` kept weights of smallest magnitude and grow ``swap`` pruned
    entries of largest dense gradient, ties and the order of equal gradients broken by a random draw (so that
    resuming must restore the generator). Records what it saw, for the tests."""

    needs_dense_grad = True

    def __init__(self, every: int, swap: int) -> None:
        self.every, self.swap, self.updates = every, swap, 0
        self.seen: list[dict] = []

    def is_update_step(self, step, total_steps, steps_per_epoch):
        return step % self.every == 0

    def update(self, u: MaskUpdate):
        self.updates += 1
        new = {}
        pruned_nonzero = any(bool((u.prunable[n].detach()[~m] != 0).any()) for n, m in u.masks.items())
        dense_grad = any(bool((u.grads[n][~m] != 0).any()) for n, m in u.masks.items())
        self.seen.append({"step": u.step, "pruned_nonzero": pruned_nonzero, "dense_grad": dense_grad})
        for n, mask in u.masks.items():
            w, g = u.prunable[n].detach().abs().flatten(), u.grads[n].abs().flatten()
            flat = mask.flatten().clone()
            noise = torch.rand(flat.shape, generator=u.generator)
            drop = torch.where(flat, w + 1e-12 * noise, torch.full_like(w, float("inf"))).argsort()[: self.swap]
            grow = torch.where(flat, torch.full_like(g, -1.0), g + 1e-12 * noise).argsort(descending=True)[: self.swap]
            flat[drop] = False
            flat[grow] = True
            new[n] = flat.view_as(mask)
        return new

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])

    def info(self):
        return {"updates": self.updates}


@dataclass
class SwapParams:
    every: int = param(2, "steps between mask updates")
    swap: int = param(2, "weights dropped and grown per layer at each update")


class SwapDuringTraining(Pruner):
    """During training: random initial masks at the target per layer, then :class:`SwapUpdater` (a tiny RigL)."""

    name = "swap_during_training"
    regime = Regime.DURING_TRAINING
    Params = SwapParams
    check_params = {"every": 1, "swap": 1}

    def prune(self, model, sparsity, ctx):
        scores = {n: torch.rand(p.shape, generator=ctx.generator) for n, p in ctx.prunable.items()}
        masks = masking.topk_masks(scores, 1.0 - sparsity, "layerwise", "exact")
        return PruneResult(masks, updater=SwapUpdater(self.params.every, self.params.swap))


class ShrinkUpdater(MaskUpdater):
    """Starts dense, reaches ``final`` density by magnitude at step ``at``."""

    def __init__(self, final: float, at: int) -> None:
        self.final, self.at = final, at

    def is_update_step(self, step, total_steps, steps_per_epoch):
        return step == self.at

    def update(self, u):
        return masking.topk_masks({n: p.detach().abs() for n, p in u.prunable.items()}, self.final, "global", "exact")


class ShrinkDuringTraining(Pruner):
    """During training, GMP-like: dense at first, the target at step 3 (or ``miss``: 0.1 short of it)."""

    name = "shrink_during_training"
    regime = Regime.DURING_TRAINING

    @dataclass
    class Params:
        miss: bool = param(False, "end 0.1 below the target sparsity (an exact pruner that misses)")

    def prune(self, model, sparsity, ctx):
        final = 1.0 - sparsity + (0.1 if self.params.miss else 0.0)
        return PruneResult(masking.full_masks(ctx.prunable), updater=ShrinkUpdater(final, 3))


PRUNERS = [PostTrainingMagnitude, LearnedThreshold, TeacherScores, ScorePopup, WritesNaN, VersionTwoMagnitude,
           SwapDuringTraining, ShrinkDuringTraining]


@hookimpl
def bench_register_pruners():
    return PRUNERS


class AllParamsMagnitude(Pruner):
    """Counts its target over all trainable parameters (as the official SNOWS does) but prunes only the
    prunable set: the core validates on the declared basis."""

    name = "all_params_magnitude"

    def prune(self, model, sparsity, ctx):
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        prunable = sum(p.numel() for p in ctx.prunable.values())
        remove = int(round(sparsity * total))
        density = 1.0 - remove / prunable
        masks = masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, density)
        return PruneResult(masks, sparsity_of="all")


class BitsOfItsOwn(Pruner):
    """States its own storage format: one bit per prunable weight and two 64-bit seeds."""

    name = "bits_of_its_own"

    def prune(self, model, sparsity, ctx):
        masks = masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)
        return PruneResult(masks, storage_bits=sum(p.numel() for p in ctx.prunable.values()) + 128)


class TrainsWeightsWhileMaskLearning(Pruner):
    """Breaks the mask-learning promise: its 'score training' moves the weights it should leave frozen."""

    name = "sneaky_mask_learning"
    regime = Regime.MASK_LEARNING
    requires = Requirements(data=True, labels=True)

    def prune(self, model, sparsity, ctx):
        scores = [torch.zeros(1, requires_grad=True)]
        ctx.trainer.fit(model, params=scores, loss=lambda m, x, y: F.cross_entropy(m(x), y) + scores[0].sum(),
                        after_step=lambda step: [p.data.add_(1e-3) for p in ctx.prunable.values()])
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


PRUNERS += [AllParamsMagnitude, BitsOfItsOwn, TrainsWeightsWhileMaskLearning]
