"""bench-harness: a benchmark harness for neural-network pruning methods.

The public API for plugin authors is importable from here (``from bench_harness import Pruner, param, ...``);
module paths inside the package may move, these names do not.
"""
from __future__ import annotations

__version__ = "0.1.0"

from bench_harness.hookspecs import hookimpl  # noqa: E402
from bench_harness.numerics import DegenerateScoresWarning  # noqa: E402,F401 (warned by score pruners)

# name -> module that defines it; imported on first use so that `import bench_harness` stays light
_PUBLIC = {
    "Pruner": "bench_harness.pruner", "PruneResult": "bench_harness.pruner", "PruneContext": "bench_harness.pruner",
    "Regime": "bench_harness.pruner", "Requirements": "bench_harness.pruner", "SparsityKind": "bench_harness.pruner",
    "Granularity": "bench_harness.pruner", "Stage": "bench_harness.pruner", "NoParams": "bench_harness.pruner",
    "param": "bench_harness.pruner",
    "ScorePruner": "bench_harness.score_pruner", "ScoreParams": "bench_harness.score_pruner",
    "Trainer": "bench_harness.trainer", "FitResult": "bench_harness.trainer",
    "ArtifactStore": "bench_harness.artifacts",
    "ModelSpec": "bench_harness.models", "DatasetSpec": "bench_harness.datasets",
    "DatasetNotFound": "bench_harness.datasets", "Metric": "bench_harness.metrics",
    "masking": "bench_harness.masking",
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
