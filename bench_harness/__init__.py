"""bench-harness: a benchmark harness for neural-network pruning methods."""
from __future__ import annotations

__version__ = "0.1.0"

from bench_harness.hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl", "prune"]


def prune(model, pruner, sparsity, data=None, **params):
    """Prune ``model`` in place with a registered pruner; returns bool masks keyed by parameter name.

    See :func:`bench_harness.api.prune`.
    """
    from bench_harness.api import prune as _prune

    return _prune(model, pruner, sparsity, data, **params)
