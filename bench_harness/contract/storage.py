"""How many bits a pruned model takes to store: one formula for the runner's ``model_bits`` and the leaderboard.

The core's sparse format stores every non-zero parameter in 32 bits plus a 1-bit mask over the prunable weights
(which of them are kept); a dense model is 32 bits per parameter. A pruner with a format of its own states its
storage (``PruneResult.storage_bits``, e.g. a strong lottery ticket: one bit per free weight plus the seeds), and
that figure wins.
"""
from __future__ import annotations

from typing import Any

FLOAT_BITS = 32  # one stored parameter value
MASK_BITS = 1  # one prunable weight's kept/removed flag


def sparse_storage_bits(params_total: Any, params_nonzero: Any, params_prunable: Any, dense: bool) -> Any:
    """Bits of the core's storage format: ``32 * params_total`` for a dense model, else ``32 * params_nonzero +
    params_prunable``. Plain arithmetic: it takes numbers or, element-wise, NumPy arrays and pandas Series."""
    if dense:
        return FLOAT_BITS * params_total
    return FLOAT_BITS * params_nonzero + MASK_BITS * params_prunable


def model_storage_bits(stated: int | None, params_total: int, params_nonzero: int, params_prunable: int,
                       dense: bool) -> int:
    """A pruned model's storage in bits: what its pruner ``stated`` for its own format, else the core's format."""
    if stated is not None:
        return int(stated)
    return int(sparse_storage_bits(params_total, params_nonzero, params_prunable, dense))
