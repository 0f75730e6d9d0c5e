"""bench-harness: a benchmark harness for neural-network pruning methods.

The public API for plugin authors is importable from here (``from bench_harness import Pruner, param, ...``);
module paths inside the package may move, these names do not. Plugins import nothing else of the package (the
built-ins are held to it by an import-linter contract, ``pyproject.toml``).
"""
from __future__ import annotations

from bench_harness.contract.hookspecs import hookimpl  # noqa: E402
from bench_harness.contract.numerics import DegenerateScoresWarning  # noqa: E402,F401 (warned by score pruners)
from bench_harness.version import __version__  # noqa: E402

# name -> module that defines it; imported on first use so that `import bench_harness` stays light
_PUBLIC = {
    "Pruner": "bench_harness.contract.pruner", "PruneResult": "bench_harness.contract.pruner",
    "PruneContext": "bench_harness.contract.pruner",
    "MaskUpdater": "bench_harness.contract.pruner", "MaskUpdate": "bench_harness.contract.pruner",
    "Regime": "bench_harness.contract.pruner", "Requirements": "bench_harness.contract.pruner",
    "SparsityKind": "bench_harness.contract.pruner",
    "Granularity": "bench_harness.contract.pruner", "Stage": "bench_harness.contract.pruner",
    "NoParams": "bench_harness.contract.pruner",
    "param": "bench_harness.contract.params",
    "RunInfo": "bench_harness.contract.run_info", "ComponentInfo": "bench_harness.contract.run_info",
    "ScorePruner": "bench_harness.contract.score_pruner", "ScoreParams": "bench_harness.contract.score_pruner",
    "Trainer": "bench_harness.running.trainer", "FitResult": "bench_harness.running.trainer",
    "ArtifactStore": "bench_harness.contract.artifacts",
    "ModelSpec": "bench_harness.contract.specs", "DatasetSpec": "bench_harness.contract.specs",
    "DatasetNotFound": "bench_harness.contract.specs", "Metric": "bench_harness.contract.specs",
    "Services": "bench_harness.contract.services",
    "prepare_once": "bench_harness.contract.datasets", "first_per_class": "bench_harness.contract.datasets",
    "BenchError": "bench_harness.errors",
    "double_backprop_scoring": "bench_harness.contract.double_backprop",
    "DoubleBackpropError": "bench_harness.contract.double_backprop",
    "masking": "bench_harness.contract.masking", "allocation": "bench_harness.contract.allocation",
    "load_results": "bench_harness.results.store",
}

__all__ = ["__version__", "hookimpl", "prune", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'bench_harness' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    return mod if module.endswith("." + name) else getattr(mod, name)


def prune(model, pruner, sparsity, data=None, **kwargs):
    """Prune ``model`` in place with a registered pruner; returns bool masks keyed by parameter name (or the
    full result with ``return_result=True``).

    See :func:`bench_harness.api.prune`.
    """
    from bench_harness.api import prune as _prune

    return _prune(model, pruner, sparsity, data, **kwargs)
