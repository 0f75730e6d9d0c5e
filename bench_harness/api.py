"""The public Python API: use any registered pruner outside a benchmark."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench_harness import masking
from bench_harness.plugins import get_registry
from bench_harness.pruner import Pruner, iter_batches
from bench_harness.pruning import call_pruner, make_context


def prune(model: nn.Module, pruner: str | type[Pruner], sparsity: float, data: Any = None,
          **params: Any) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with a registered pruner and return its masks.

    - ``pruner``: a registered name (see ``bench plugins``) or a Pruner subclass.
    - ``sparsity``: fraction of prunable weights (conv and linear weights) to remove, in [0, 1).
    - ``data``: scoring/calibration data for pruners that need it: a DataLoader or any iterable of
      ``(inputs, labels)``, a pair ``(inputs, labels)``, or a tensor of inputs.
    - ``params``: the pruner's hyperparameters (see ``bench plugins -v``); ``seed=`` is taken from them if
      the pruner has no such parameter (default 0).

    Returns boolean masks keyed by the model's parameter names (``True`` = kept); the masks are already
    applied (pruned weights are zero).
    """
    cls = get_registry().get("pruner", pruner) if isinstance(pruner, str) else pruner
    seed = 0
    if "seed" in params and "seed" not in cls.param_help():
        seed = int(params.pop("seed"))
    cls_params = cls.make_params(params)
    batches = iter_batches(data)
    input_shape = None
    if batches is not None:
        first = next(iter(batches()))[0]
        input_shape = tuple(first.shape[1:])
    ctx = make_context(model, seed=seed, batches=batches, input_shape=input_shape)
    if batches is not None:
        ys = torch.cat([y for _, y in batches()])
        ctx.num_classes = int(ys.max()) + 1 if ys.numel() else None
    if cls.requires.data and batches is None:
        raise ValueError(f"pruner {cls.name!r} needs data: pass data=(inputs, labels) or a DataLoader")
    result = call_pruner(cls, cls_params, model, sparsity, ctx)
    masking.apply_masks(model, result.masks)
    return result.masks
