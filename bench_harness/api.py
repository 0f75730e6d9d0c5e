"""The public Python API: use any registered pruner outside a benchmark."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from bench_harness.contract import masking
from bench_harness.contract.artifacts import ArtifactStore, MemoryArtifactStore
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruner import Pruner, PruneResult, Regime, iter_batches
from bench_harness.contract.pruning import call_pruner, make_context
from bench_harness.errors import InvalidMaskError


def prune(model: nn.Module, pruner: str | type[Pruner], sparsity: float, data: Any = None, *,
          prunable: str | list[str] | None = None, train_data: Any = None, recipe: Mapping[str, Any] | None = None,
          return_result: bool = False, artifacts: str | None = None, input_shape: tuple[int, ...] | None = None,
          **params: Any):
    """Prune ``model`` in place with a registered pruner and return its masks (or its full result).

    - ``pruner``: a registered name (see ``bench plugins``) or a Pruner subclass.
    - ``sparsity``: fraction of prunable weights to remove, in [0, 1).
    - ``data``: scoring/calibration data for pruners that need it: a DataLoader or any iterable of
      ``(inputs, labels)``, a pair ``(inputs, labels)``, or a tensor of inputs.
    - ``prunable``: which weights may be pruned: a regex that parameter names must match in full (among the
      conv and linear weights, e.g. ``r"layer\\d\\..*conv\\d\\.weight"``) or an explicit list of parameter names.
      Default: every conv and linear weight.
    - ``train_data`` + ``recipe``: for pruners that train (``imp``, score training, reconstruction with
      fine-tuning): a DataLoader (or iterable of ``(inputs, labels)``) and a dict of recipe fields (``epochs``,
      ``lr``, ``optimizer``, ``schedule``, ... as in a suite's ``recipe:``), from which the training service is
      built.
    - a during-training pruner (regime ``during_training``: GMP, SET, RigL) needs ``train_data`` + ``recipe``: the
      model is trained with it and the masks returned are the ones training ends with.
    - ``return_result``: return the :class:`~bench_harness.contract.pruner.PruneResult` (masks, info, achieved sparsity,
      the training the pruner asks for afterwards) instead of the masks.
    - ``artifacts``: a folder for stage artifacts (default: kept in memory for this call).
    - ``input_shape``: ``(C, H, W)`` of one example, for data-free pruners (SynFlow) when no data is given.
    - ``params``: the pruner's hyperparameters (see ``bench plugins -v``); ``seed=`` is taken from them if
      the pruner has no such parameter (default 0).

    The masks (``True`` = kept, keyed by parameter names) are already applied: pruned weights are zero.
    """
    cls = get_registry().get("pruner", pruner) if isinstance(pruner, str) else pruner
    seed = 0
    if "seed" in params and "seed" not in cls.param_help():
        seed = int(params.pop("seed"))
    cls_params = cls.make_params(params)
    batches = iter_batches(data)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    num_classes = None
    if batches is not None:
        first = next(iter(batches()))[0]
        input_shape = input_shape or tuple(first.shape[1:])
        ys = torch.cat([y for _, y in batches()])
        num_classes = int(ys.max()) + 1 if ys.numel() else None
    if cls.requires.data and batches is None:
        raise ValueError(f"pruner {cls.name!r} needs data: pass data=(inputs, labels) or a DataLoader")
    trainer = None
    if train_data is not None:
        from bench_harness.running.trainer import Trainer

        trainer = Trainer(train_data, make_recipe(recipe), device)
        if input_shape is None:
            first = next(iter(train_data))
            input_shape = tuple(first[0].shape[1:])
    elif recipe is not None:
        raise ValueError("recipe= needs train_data= (the training service trains on it)")
    store: ArtifactStore = ArtifactStore(artifacts, producer="bench_harness.prune") if artifacts else \
        MemoryArtifactStore("bench_harness.prune")
    ctx = make_context(model, seed=seed, device=device, batches=batches, input_shape=input_shape,
                       num_classes=num_classes, prunable=prunable, trainer=trainer, train_loader=train_data,
                       artifacts=store)
    if cls.regime == Regime.DURING_TRAINING and trainer is None:
        raise ValueError(f"pruner {cls.name!r} prunes while the model trains: pass train_data=<DataLoader> and "
                         f"recipe={{'epochs': N, ...}} (the masks it returns are the ones training ends with)")
    result: PruneResult = call_pruner(cls, cls_params, model, sparsity, ctx)
    if result.updater is not None:  # a during-training pruner: train with it, as a run does
        from bench_harness.contract.pruning import check_final_masks
        from bench_harness.running.mask_updates import updater_generator, updater_info

        fit = trainer.fit(model, masks=result.masks, updater=result.updater,
                          updater_generator=updater_generator(seed), key="during-training", phase="train")
        check_final_masks(cls, fit.masks, ctx.prunable, sparsity)
        result.masks = fit.masks
        result.achieved_sparsity = 1.0 - masking.global_density(fit.masks)
        result.info = {**result.info, **updater_info(result.updater), "mask_updates": fit.mask_updates}
        result.train_epochs = 0  # trained already
    if not cls.ignores_sparsity and result.masks and not any(bool(m.any()) for m in result.masks.values()):
        raise InvalidMaskError(f"pruner {cls.name!r} removed every prunable weight at sparsity {sparsity} (all layers "
                               f"collapsed: the network would compute a constant); lower the sparsity (a suite run "
                               f"fails the same way); the masks were not applied.")
    masking.apply_masks(model, result.masks)
    return result if return_result else result.masks


def make_recipe(values: Mapping[str, Any] | None):
    """A Recipe from a dict of fields, validated as a suite's ``recipe:`` section is (types, allowed values,
    ranges, unknown fields with did-you-mean); ValueError naming the field and the problem otherwise."""
    from bench_harness.config.suite import InvalidSetting, Recipe, checked_dataclass

    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"recipe: expected a mapping of settings, got {values!r}")
    try:
        return checked_dataclass(Recipe, dict(values or {}))
    except InvalidSetting as exc:
        raise ValueError(f"{'recipe.' + exc.key if exc.key else 'recipe'}: {exc.problem}") from None
