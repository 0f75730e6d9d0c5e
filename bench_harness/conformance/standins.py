"""What the kit gives a pruner in place of what a suite run gives it: a tiny stand-in for each thing it requests.

- scoring data: two batches of 16 random 3×8×8 examples of 4 classes, given only when the pruner declares
  ``requires.data`` (a pruner that reads data it did not declare fails "runs without error");
- the training service: the core's :class:`~bench_harness.running.trainer.Trainer` over those batches with a
  tiny recipe (:data:`RECIPE`: 2 epochs, constant lr, no augmentation);
- pretraining: a pruner that prunes a trained model (``POST_TRAINING`` or ``requires.pretrained``) gets the kit's
  model trained with that recipe first, once per model and seed (``ctx.pretrained`` is True);
- stage artifacts: a real artifact store in a temporary folder shared by the kit's cases: a stage is produced on
  the kit's model and data by the first case that asks for it, and reused by the cases after it;
- hyperparameters: the pruner's ``check_params`` over its defaults (a CPU-sized setting of an expensive method),
  then the ones given to the kit.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from bench_harness.api import make_recipe
from bench_harness.config.suite import needs_pretrained
from bench_harness.conformance.models import BATCH_SIZE, BATCHES, INPUT_SHAPE, MODELS, NUM_CLASSES, data
from bench_harness.contract.pruner import Pruner
from bench_harness.running.training import train

RECIPE = dict(epochs=2, batch_size=16, lr=0.01, momentum=0.9, weight_decay=0.0, schedule="constant",
              augment=False)


def kit_params(cls: type[Pruner], given: Mapping[str, Any] | None = None) -> Any:
    """The validated hyperparameters the kit runs ``cls`` with: its ``check_params``, then ``given``, over its
    defaults (a bad key or value raises ValueError)."""
    return cls.make_params({**dict(cls.check_params), **dict(given or {})})


def recipe():
    return make_recipe(RECIPE)


class Pretraining:
    """The pretraining stand-in: the kit's model trained with :data:`RECIPE` on the kit's data, once per model and
    seed; a case loads the weights into its freshly built model."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def weights(self, model_name: str, seed: int) -> dict[str, torch.Tensor]:
        key = (model_name, seed)
        if key not in self._states:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the initialization a case builds (see checks.prune_once)
                model = MODELS[model_name]()
                train(model, list(data(seed)()), recipe(), torch.device("cpu"))
            self._states[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self._states[key]


def describe(cls: type[Pruner]) -> list[str]:
    """One line per stand-in the kit gives ``cls``."""
    shape = "×".join(map(str, INPUT_SHAPE))
    lines = [f"models: {', '.join(MODELS)} ({shape} inputs, {NUM_CLASSES} classes)"]
    lines.append(f"scoring data: {BATCHES} batches of {BATCH_SIZE} random examples" if cls.requires.data
                 else "scoring data: none (the pruner does not declare requires.data)")
    lines.append(f"training service: the core's Trainer over those batches, {RECIPE['epochs']} epochs, "
                 f"constant lr {RECIPE['lr']}")
    if needs_pretrained(cls):
        lines.append(f"pretraining: each model trained {RECIPE['epochs']} epochs on those batches before pruning")
    lines.append("stage artifacts: a temporary store shared by the cases (produced once on the kit's models)")
    return lines


def describe_params(cls: type[Pruner], given: Mapping[str, Any] | None = None) -> str:
    """The hyperparameters :func:`kit_params` sets, as one line ('' when they are the pruner's defaults)."""
    given = dict(given or {})
    parts = [f"{k}={v!r} (check_params)" for k, v in cls.check_params.items() if k not in given]
    parts += [f"{k}={v!r}" for k, v in given.items()]
    return f"hyperparameters: {', '.join(parts)}, the others default" if parts else ""
