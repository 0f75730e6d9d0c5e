"""Every hook of bench-harness, in one module.

A plugin is a module (or object) with functions marked ``@bench_harness.hookimpl`` whose names match the
specifications below. Plugins are discovered through the ``bench_harness`` entry-point group, the built-in
ones included (see ``pyproject.toml``). Hooks are called with keyword arguments only; an implementation may
accept fewer arguments than the specification lists, so specifications can grow without breaking plugins.

Registration hooks return a list; the core collects the lists of all plugins and refuses two entries with
the same name (the error names both distributions).
"""
from __future__ import annotations

import pluggy

PROJECT_NAME = "bench_harness"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def bench_register_pruners():
    """Called once, when the registry is built (first use of ``bench`` or of the Python API).

    Returns a list of :class:`bench_harness.contract.pruner.Pruner` subclasses. Each class declares its ``name``,
    ``regime``, ``requires``, ``granularity``, ``Params`` dataclass and implements ``prune``; see the
    contract in :mod:`bench_harness.contract.pruner`.
    """


@hookspec
def bench_register_models():
    """Called once, when the registry is built.

    Returns a list of :class:`bench_harness.contract.specs.ModelSpec`: a name, a builder
    ``build(num_classes, in_channels, image_size, **params) -> torch.nn.Module`` and help text. A spec may
    set ``prefix=True``: it then serves every name ``"<spec.name>:<anything>"`` (e.g. ``torchvision:resnet18``)
    and its builder receives the part after the colon as ``arch``.
    """


@hookspec
def bench_register_datasets():
    """Called once, when the registry is built.

    Returns a list of :class:`bench_harness.contract.specs.DatasetSpec`: name, number of classes, input
    channels, image size, normalization and a loader ``load(root, split, augment, download, **params)``
    returning a ``torch.utils.data.Dataset`` of ``(image_tensor, label)``. A missing data set must raise
    :class:`bench_harness.contract.specs.DatasetNotFound` saying where the files are expected and how to get them.
    """


@hookspec
def bench_register_metrics():
    """Called once, when the registry is built.

    Returns a list of :class:`bench_harness.contract.specs.Metric`: a name and a function
    ``compute(model, masks, test_loader, device) -> float`` evaluated after training. Each metric becomes a
    column ``metric_<name>`` of the results.
    """


@hookspec
def bench_run_started(run):
    """Called in the process that executes a run, before the model is built.

    ``run`` is a deep copy of the :class:`bench_harness.config.suite.RunSpec` (changing it changes nothing).
    Return value ignored; an exception is reported as a warning and does not fail the run.
    """


@hookspec
def bench_run_finished(run, row):
    """Called after a run's result row is written (also for failed runs).

    ``run`` and ``row`` are deep copies of the :class:`bench_harness.config.suite.RunSpec` and of the result row (see
    :mod:`bench_harness.results.store` for its columns). Return value ignored; exceptions become warnings.
    """
