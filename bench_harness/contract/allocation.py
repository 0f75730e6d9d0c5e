"""Layer allocation: how a global density is shared among the prunable layers (pure functions, no torch).

``shapes`` are the prunable weights' shapes in model order, PyTorch layout (``(out, in, *kernel)``);
``density`` = 1 - sparsity over all of them together; ``dense`` names layers kept fully dense. Every allocation
meets the target over ALL layers, the dense ones included (their weights are paid for by the others).

- ``uniform``: every layer not in ``dense`` gets the same density ``(d N - N_dense) / (N - N_dense)`` (with no
  dense layer: ``d``).
- ``uniform_dense_first``: ``uniform`` with the first layer added to ``dense``. RigL's code (its ``uniform`` with
  ``custom_sparsity_map={first layer: 0}``, the MNIST/ImageNet configs) instead leaves the other layers at ``d``,
  so that its total density is ``(N_1 + d (N - N_1)) / N``, above the target; the same masks are obtained here by
  asking for that total.
- ``erk`` (Erdős–Rényi-Kernel) and ``er`` (Erdős–Rényi), as ``get_sparsities_erdos_renyi`` of the RigL reference
  (google-research/rigl ``rigl/sparse_utils.py``) and of JaxPruner (``jaxpruner/sparsity_distributions.py``) define
  them: layer l gets density ``eps * r_l`` with ``r_l = (sum(shape_l) / prod(shape_l)) ** erk_power_scale`` (ERK)
  or ``r_l = (n_in + n_out) / (n_in n_out)`` (ER; for a conv its kernel is ignored, ``erk_power_scale`` does not
  apply, as in the reference); ``eps`` solves ``eps * sum_{l not dense} r_l N_l = sum_{l not dense} (N_l - z_l) -
  sum_{l dense} z_l`` with ``z_l = floor((1 - d) N_l)`` (the reference counts zeros per layer with a floor); while
  the largest ``eps * r_l`` exceeds 1, every layer with that largest ``r_l`` joins the dense set and ``eps`` is
  solved again. ``dense`` layers start in the dense set (the reference's layers that saturate; NOT its
  ``custom_sparsity_map``, which leaves a layer out of the balance so that the total misses the target).

:func:`layer_counts` turns the densities into kept counts (see its docstring for the rounding).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Collection, Mapping, Sequence

ALLOCATIONS = ("uniform", "uniform_dense_first", "erk", "er")


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


MAX_POWER = 10.0  # erk_power_scale beyond: ratio ** power under- or overflows for real layer shapes


def power_problem(power: Any) -> str | None:
    """Why ``power`` cannot be an ``erk_power_scale`` (None: it can): a number in [0, MAX_POWER] (0: every layer
    the same ratio, uniform; 1: ERK; a larger one makes every layer's ratio ** power 0 or inf, a negative one gives
    the largest layers the highest density: layers of no weight)."""
    if not (isinstance(power, numbers.Real) and not isinstance(power, bool) and math.isfinite(power)
            and 0.0 <= power <= MAX_POWER):
        return f"erk_power_scale must be a number in [0, {MAX_POWER:g}] (1: ERK), got {power!r}"
    return None


def _check(shapes: Mapping[str, Sequence[int]], density: float, allocation: str, dense: Collection[str],
           erk_power_scale: float) -> set[str]:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}: use one of {', '.join(ALLOCATIONS)}")
    if not isinstance(density, numbers.Real) or isinstance(density, bool) or not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must lie in (0, 1] (density = 1 - sparsity), got {density!r}")
    if not shapes:
        raise ValueError("no layers to allocate a density to (shapes is empty)")
    empty = [n for n, s in shapes.items() if _numel(s) == 0]
    if empty:
        raise ValueError(f"layers with no weights cannot be allocated a density: {empty}")
    unknown = sorted(set(dense) - set(shapes))
    if unknown:
        raise ValueError(f"dense names {unknown} are not among the layers {list(shapes)}")
    problem = power_problem(erk_power_scale)
    if problem:
        raise ValueError(problem)
    if erk_power_scale != 1.0 and allocation != "erk":
        raise ValueError(f"erk_power_scale={erk_power_scale} applies to allocation 'erk' only (the reference "
                         f"ignores it for {allocation!r}); leave it at 1.0 or use allocation 'erk'")
    if allocation == "er":
        flat = [n for n, s in shapes.items() if len(s) < 2]
        if flat:
            raise ValueError(f"allocation 'er' needs (n_out, n_in, ...) weights; {flat} have fewer than 2 "
                             f"dimensions: use 'erk' or leave them out of the prunable set")
    forced = set(dense)
    if allocation == "uniform_dense_first":
        forced.add(next(iter(shapes)))
    return forced


def _unreachable(density: float, shapes: Mapping[str, Sequence[int]], forced: set[str]) -> ValueError:
    total = sum(_numel(s) for s in shapes.values())
    kept = sum(_numel(shapes[n]) for n in forced)
    return ValueError(f"density {density} cannot be reached with the layers {sorted(forced)} kept dense: they "
                      f"alone hold {kept} of {total} weights (density {kept / total:.6g}); ask for a density of at "
                      f"least that, or keep fewer layers dense")


def _raw_probability(shape: Sequence[int], allocation: str, erk_power_scale: float) -> float:
    if allocation == "erk":
        return (sum(int(s) for s in shape) / _numel(shape)) ** erk_power_scale
    n_out, n_in = int(shape[0]), int(shape[1])
    return (n_in + n_out) / (n_in * n_out)


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float, allocation: str, *,
                    dense: Collection[str] = (), erk_power_scale: float = 1.0) -> dict[str, float]:
    """Density of every layer (keys in the order of ``shapes``) under ``allocation`` (one of
    :data:`ALLOCATIONS`; see the module docstring), such that ``sum d_l N_l`` is the target ``density * N`` (up
    to the reference's per-layer floor for ``erk``/``er``). Layers in ``dense`` (and those ERK/ER saturate) get
    exactly 1.0.

    Raises ``ValueError`` for an unknown allocation, a density outside (0, 1], an ``erk_power_scale`` other than 1
    with an allocation other than ``erk``, and a target that the dense layers alone exceed.
    """
    forced = _check(shapes, density, allocation, dense, erk_power_scale)
    density = float(density)
    if density == 1.0:
        return {n: 1.0 for n in shapes}
    numel = {n: _numel(s) for n, s in shapes.items()}
    total = sum(numel.values())
    dense_total = sum(numel[n] for n in forced)
    if dense_total >= density * total:
        raise _unreachable(density, shapes, forced)
    if allocation in ("uniform", "uniform_dense_first"):
        share = (density * total - dense_total) / (total - dense_total)
        return {n: 1.0 if n in forced else share for n in shapes}

    sparsity = 1.0 - density
    saturated = set(forced)
    while True:
        rhs = 0.0
        divisor = 0.0
        raw: dict[str, float] = {}
        for n, shape in shapes.items():
            zeros = math.floor(sparsity * numel[n])
            if n in saturated:
                rhs -= zeros
            else:
                rhs += numel[n] - zeros
                raw[n] = _raw_probability(shape, allocation, erk_power_scale)
                divisor += raw[n] * numel[n]
        if not raw or rhs <= 0:
            raise _unreachable(density, shapes, saturated)
        eps = rhs / divisor
        largest = max(raw.values())
        if largest * eps <= 1.0:
            break
        saturated.update(n for n, r in raw.items() if r == largest)
    return {n: 1.0 if n in saturated else eps * raw[n] for n in shapes}


def layer_counts(shapes: Mapping[str, Sequence[int]], density: float, allocation: str, *,
                 dense: Collection[str] = (), erk_power_scale: float = 1.0) -> dict[str, int]:
    """Kept weights per layer: the :func:`layer_densities` apportioned to integers whose sum is
    ``K = round(density * N)`` (Python's ``round``: halves to even).

    Rounding: every layer starts at ``floor(d_l N_l)``, at least 1; dense and saturated layers (``d_l = 1``) keep
    all ``N_l``. The weights still missing to reach ``K`` go one each to the layers with the largest remainders
    ``d_l N_l - count_l`` (ties: model order); a surplus (left by the at-least-1 rule) is taken back one each from
    the layers with the smallest remainders that keep more than 1. So every count is within one weight of
    ``d_l N_l`` unless the at-least-1 rule moved it, and the total is exactly ``K`` whenever ``K`` is at least
    the number of layers plus the dense weights. At extreme sparsity, where ``K`` is smaller, every non-dense
    layer keeps exactly 1 weight (no layer is emptied: a layer with nothing kept disconnects the network) and the
    total exceeds ``K`` by the difference.
    """
    densities = layer_densities(shapes, density, allocation, dense=dense, erk_power_scale=erk_power_scale)
    numel = {n: _numel(s) for n, s in shapes.items()}
    target = int(round(float(density) * sum(numel.values())))
    ideal = {n: min(max(densities[n], 0.0), 1.0) * numel[n] for n in shapes}
    fixed = {n for n in shapes if densities[n] >= 1.0}
    counts = {n: numel[n] if n in fixed else min(max(math.floor(ideal[n]), 1), numel[n]) for n in shapes}
    order = list(shapes)
    missing = target - sum(counts.values())
    while missing > 0:
        room = [n for n in order if n not in fixed and counts[n] < numel[n]]
        if not room:
            break
        for n in sorted(room, key=lambda n: -(ideal[n] - counts[n]))[:missing]:  # stable: model order on ties
            counts[n] += 1
            missing -= 1
    while missing < 0:
        room = [n for n in order if n not in fixed and counts[n] > 1]
        if not room:
            break
        for n in sorted(room, key=lambda n: ideal[n] - counts[n])[:-missing]:
            counts[n] -= 1
            missing += 1
    return counts


def check_params(pruner: str, params: Any) -> None:
    """A score pruner's allocation parameters (``allocation``, ``erk_power_scale``; absent fields are their
    defaults) that contradict each other or ``scope``: a ``ValueError`` naming the fix. Here, not in the pruner
    class, so that ``bench validate`` checks them from the registry cache without importing torch."""
    alloc = getattr(params, "allocation", None)
    power = getattr(params, "erk_power_scale", 1.0)
    if alloc is not None and alloc not in ALLOCATIONS:
        raise ValueError(f"pruner {pruner!r}: unknown allocation {alloc!r}: use one of "
                         f"{', '.join(ALLOCATIONS)} (or leave it out for the scope's rule)")
    if alloc is not None and getattr(params, "scope", "global") != "global":
        raise ValueError(f"pruner {pruner!r}: allocation {alloc!r} sets every layer's density itself, so scope "
                         f"{params.scope!r} contradicts it: drop scope (allocation: uniform is the layer-wise rule "
                         f"with exact per-layer counts), or drop allocation")
    problem = power_problem(power)
    if problem:
        raise ValueError(f"pruner {pruner!r}: {problem}")
    if power != 1.0 and alloc != "erk":
        raise ValueError(f"pruner {pruner!r}: erk_power_scale={power} applies to allocation 'erk' only: add "
                         f"allocation: erk, or drop erk_power_scale")
