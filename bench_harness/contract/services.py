"""The harness's services to pruners (``ctx.services``): what a method needs beyond its own run, done as a run
does it, so that a plugin never rebuilds the core's plumbing.

- :meth:`Services.dataset_spec`, :meth:`Services.load_split`, :meth:`Services.train_loader`: a registered data
  set (its shape, a split, a training loader) loaded as a run loads it: the same data folder, the same
  augmentation, the first ``train_subset`` examples, a shuffle seeded by the run's seed.
- :meth:`Services.build_model`: a registered model for a data set's shape, initialised as a run of that seed
  initialises it (the caller's random state is left alone).
- :meth:`Services.run_pruner`: another registered pruner, its parameters validated and its output checked as the
  core does for a run, sharing the calling pruner's data, generator, training service and artifacts.

A suite run's services read its data folder (``data_root``, ``download``) and its registry; the Python API's
(the default of :func:`bench_harness.contract.pruning.make_context`) use the process registry and ``./data``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench_harness.contract import datasets
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruner import PruneContext, PruneResult
from bench_harness.contract.specs import DatasetSpec


class Services:
    """What a pruner may ask of the harness besides its own run; a pruner reaches it as ``ctx.services``.

    ``call_pruner`` is the core's validated call (:func:`bench_harness.contract.pruning.call_pruner`), passed in
    because that module builds contexts with these services by default."""

    def __init__(self, call_pruner: Callable[..., PruneResult], registry: Registry | None = None, *,
                 data_root: str = "data", download: bool = False) -> None:
        self._call_pruner = call_pruner
        self._registry = registry
        self.data_root = data_root
        self.download = download

    @property
    def registry(self) -> Registry:
        """The registry the run uses (the process-wide one unless the run was given another)."""
        return self._registry if self._registry is not None else get_registry()

    # -- data --------------------------------------------------------------------------------------------------
    def dataset_spec(self, name: str, params: Mapping[str, Any] | None = None) -> DatasetSpec:
        """The registered data set ``name`` with ``params`` resolved: classes, channels, image size, loader."""
        return datasets.concrete_spec(self.registry.get("dataset", name), self.data_root, dict(params or {}))

    def load_split(self, name: str, params: Mapping[str, Any] | None = None, *, split: str = "train",
                   augment: bool = False) -> Dataset:
        """A split (``train`` or ``test``) of a registered data set, with its training augmentation when
        ``augment``; loaded once per process and shared with the runs (never modify it: wrap it)."""
        spec = self.dataset_spec(name, params)
        return datasets.load_split(spec, split, augment, root=self.data_root, download=self.download,
                                   **dict(params or {}))

    def train_loader(self, name: str, params: Mapping[str, Any] | None = None, *, seed: int, batch_size: int = 128,
                     augment: bool = True, train_subset: int | None = None, num_workers: int = 0) -> DataLoader:
        """The training loader a run of this data set and ``seed`` trains on, for a recipe of these fields: the
        training split (augmented when ``augment``), its first ``train_subset`` examples, shuffled by a
        generator seeded with ``seed``, the last partial batch dropped when there is more than one batch."""
        train_set = self.load_split(name, params, split="train", augment=augment)
        return datasets.train_loader(train_set, batch_size, seed, train_subset, num_workers)

    # -- models ------------------------------------------------------------------------------------------------
    def build_model(self, name: str, params: Mapping[str, Any] | None = None, *, dataset: str,
                    dataset_params: Mapping[str, Any] | None = None, seed: int) -> nn.Module:
        """The registered model ``name`` for the shape of data set ``dataset`` (classes, channels, image size),
        initialised as a run of ``seed`` initialises it (torch seeded with ``seed``), on the CPU. The caller's
        random state is left alone."""
        spec = self.dataset_spec(dataset, dataset_params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(self.registry.get("model", name), name, spec.num_classes, spec.in_channels,
                               spec.image_size, dict(params or {}))

    # -- other pruners -----------------------------------------------------------------------------------------
    def run_pruner(self, name: str, model: nn.Module, sparsity: float, ctx: PruneContext,
                   params: Mapping[str, Any] | None = None) -> PruneResult:
        """Run the registered pruner ``name`` on ``model`` at ``sparsity`` as the core runs one: ``params``
        validated by its ``make_params`` (defaults when None), its output validated (masks, sparsity by kind,
        finite weights). It prunes the parameters of ``model`` named as in ``ctx.prunable`` and shares everything
        else of ``ctx`` (scoring data, generator, seed, training service, artifacts). Masks are not applied; a
        pruner that changes weights changes ``model``'s: pass a copy to keep yours."""
        cls = self.registry.get("pruner", name)
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"run_pruner({name!r}, ...): params must be a mapping of parameter: value (or None for "
                            f"the defaults), got {type(params).__name__} {params!r:.80}")
        sub = dataclasses.replace(ctx, prunable={n: model.get_parameter(n) for n in ctx.prunable}, model=model)
        return self._call_pruner(cls, cls.make_params(dict(params or {})), model, sparsity, sub)
