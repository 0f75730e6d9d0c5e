"""Schedules of the during-training pruners, in optimizer steps (pure functions, no torch).

The harness counts steps from 1: ``step`` is the number of optimizer steps taken when an update runs (the update
follows that step). Parameters are given as fractions of the training (``begin``, ``end`` in [0, 1]) and turned
into steps with :func:`step_at` from the run's ``total_steps``; ``every`` is in steps.

- :func:`gmp_sparsity`: Zhu & Gupta (2017), ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_end - t_0)) ** power``,
  clipped to ``s_i`` before ``t_0`` and to ``s_f`` after ``t_end`` (as TensorFlow's ``model_pruning``, the
  code the RigL repository runs for its ``prune`` baseline; ``t_end - t_0 = n Δt``).
- :func:`cosine_drop_fraction`: ``f * 0.5 * (1 + cos(pi * (t - t_0) / (t_end - t_0)))`` clipped to [t_0, t_end]
  (RigL's ``drop_fraction_anneal='cosine'``; see docs/dst.md for how the references count t).
- :func:`is_update_step`: ``t_0 <= t <= t_end`` and ``(t - t_0) % every == 0`` (RigL's
  ``last_update_step + frequency <= global_step`` with updates every ``every`` steps from ``t_0``), plus, with
  ``include_end``, ``t == t_end`` (GMP: the target is reached at the end step whatever ``every`` is).
"""
from __future__ import annotations

import math


def step_at(fraction: float, total_steps: int) -> int:
    """The step at ``fraction`` of a training of ``total_steps`` optimizer steps: ``round(fraction * total)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a fraction of the training must lie in [0, 1], got {fraction}")
    return int(round(fraction * total_steps))


def update_window(begin: float, end: float, total_steps: int) -> tuple[int, int]:
    """(first, last) update step of a schedule given as fractions: ``end`` at least step 1 (so that a very
    short training still updates once) and ``begin`` at most ``end``."""
    if begin > end:
        raise ValueError(f"begin ({begin}) must not lie after end ({end})")
    last = max(1, step_at(end, total_steps))
    return min(step_at(begin, total_steps), last), last


def is_update_step(step: int, begin_step: int, end_step: int, every: int, include_end: bool = False) -> bool:
    """Whether a mask update follows optimizer step ``step`` (1-based)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if step < 1 or step < begin_step or step > end_step:
        return False
    return (step - begin_step) % every == 0 or (include_end and step == end_step)


def progress(step: int, begin_step: int, end_step: int) -> float:
    """``(t - t_0) / (t_end - t_0)`` clipped to [0, 1]; a window of one step: 0 before it, 1 from it on."""
    if end_step <= begin_step:
        return 1.0 if step >= end_step else 0.0
    return min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))


def gmp_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int, initial_sparsity: float = 0.0,
                 power: int = 3) -> float:
    """Zhu & Gupta's cubic (``power``) sparsity at ``step``."""
    p = progress(step, begin_step, end_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p) ** power


def cosine_drop_fraction(step: int, drop_fraction: float, begin_step: int, end_step: int) -> float:
    """RigL's cosine-annealed drop fraction at ``step``: ``drop_fraction`` at ``t_0``, 0 at ``t_end``."""
    return drop_fraction * 0.5 * (1.0 + math.cos(math.pi * progress(step, begin_step, end_step)))


def drop_fraction_at(step: int, drop_fraction: float, begin_step: int, end_step: int, anneal: str) -> float:
    """The drop fraction at ``step`` under ``anneal``: ``"cosine"`` or ``"constant"``."""
    if anneal == "cosine":
        return cosine_drop_fraction(step, drop_fraction, begin_step, end_step)
    if anneal == "constant":
        return float(drop_fraction)
    raise ValueError(f"unknown drop_fraction_anneal {anneal!r}: use 'cosine' or 'constant'")
