"""Per-layer frozen counts of a partially frozen random network (Otsuka et al., TMLR 2025).

Which fraction of each layer is frozen (permanently pruned, "-1", or permanently kept, "+1") follows a layer-wise
density rule evaluated on the layers' sizes:

- ``epl`` (edges per layer): every layer gets the same number of kept edges; layers that would exceed their
  size are made dense and their surplus is spread over the others, until nothing is left over;
- ``erk`` (Erdős–Rényi-Kernel): a layer's density is proportional to ``sum(shape) / numel``; layers whose density
  would reach 1 are made dense (all layers of the largest ratio at once) and the factor is solved again;
- ``igq`` (Ideal Gas Quotas): a layer of size L keeps ``L / (f·L + 1)`` edges, the "force" f bisected until the
  overall sparsity is within 1/N of the target.

The frozen counts are computed as the official code computes them (its ``initialize_params`` with
``r_method``), including its float32 arithmetic, so that they agree with it count for count (checked against
counts produced by running the official code: ``scripts/slt_official_counts.py``,
``tests/fixtures/slt/official_counts.json``):

- ``locking_rule="sparsity_distribution"`` (every configuration the official repository ships): the rule's
  per-layer sparsities at density ``1 - (p + r)`` give the frozen fraction of each layer, at density ``1 - p``
  its pruned fraction; the kept fraction is their difference;
- ``locking_rule="density_distribution"`` (the official default when ``r_method`` is not given): pruned fraction
  = the rule's sparsity at density ``1 - p``, kept fraction = the rule's density at density ``r``.

A layer of ``n`` weights then freezes ``int(n * pruned_fraction)`` pruned and ``int(n * kept_fraction)`` kept
weights (float32 products, truncated), at positions drawn by one random permutation per layer.
"""
from __future__ import annotations

from typing import Sequence

import torch

ALLOCATIONS = ("epl", "erk", "igq")
LOCKING_RULES = ("sparsity_distribution", "density_distribution")


def epl_sparsities(numels: Sequence[int], density: float) -> list[float]:
    """Per-layer sparsities of the edges-per-layer rule (kept edges truncated to integers)."""
    sizes = [int(n) for n in numels]
    edges = [0.0] * len(sizes)
    active = set(range(len(sizes)))
    full: set[int] = set()
    left = sum(sizes) * density
    while left != 0:  # same set operations as the official loop: the surplus sums in the same order
        for k in active:
            edges[k] += left / len(active)
        left = 0
        for k in active:
            if edges[k] > sizes[k]:
                left += edges[k] - sizes[k]
                edges[k] = sizes[k]
                full.add(k)
        active = active - full
    return [1 - int(e) / n for e, n in zip(edges, sizes)]


def erk_sparsities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Per-layer sparsities of the Erdős–Rényi-Kernel rule (not truncated)."""
    numels = [_numel(s) for s in shapes]
    ratio = [sum(s) / n for s, n in zip(shapes, numels)]
    dense: set[int] = set()
    eps = 0.0
    while True:
        divisor = 0.0
        rhs = 0
        for i, n in enumerate(numels):
            zeros = int(n * (1 - density))
            if i in dense:
                rhs -= zeros
            else:
                rhs += n - zeros
                divisor += ratio[i] * n
        if divisor == 0:
            break
        eps = rhs / divisor
        largest = max(ratio[i] for i in range(len(numels)) if i not in dense)
        if largest * eps >= 1:
            dense |= {i for i in range(len(numels)) if i not in dense and ratio[i] == largest}
        else:
            break
    return [0.0 if i in dense else 1.0 - eps * ratio[i] for i in range(len(numels))]


def igq_sparsities(numels: Sequence[int], density: float) -> list[float]:
    """Per-layer sparsities of Ideal Gas Quotas: bisection on the force until within 1/N of the target."""
    sizes = [int(n) for n in numels]
    areas = [1.0 / n for n in sizes]
    target = 1 - density
    tolerance = 1.0 / sum(sizes)
    low, high = 0, 1e20

    def kept(force):
        return [n / (force / a + 1) for n, a in zip(sizes, areas)]

    while True:
        for force in (low, high):
            lengths = kept(force)
            if abs(1 - sum(lengths) / sum(sizes) - target) < tolerance:
                return [1 - length / n for length, n in zip(lengths, sizes)]
        force = float(low + high) / 2
        overall = 1 - sum(kept(force)) / sum(sizes)
        low = force if overall < target else low
        high = force if overall > target else high


def layer_sparsities(allocation: str, shapes: Sequence[Sequence[int]], density: float) -> torch.Tensor:
    """The rule's per-layer sparsities at overall ``density``, as the float32 tensor the official code keeps."""
    numels = [_numel(s) for s in shapes]
    if allocation == "epl":
        values = epl_sparsities(numels, density)
    elif allocation == "erk":
        values = erk_sparsities(shapes, density)
    elif allocation == "igq":
        values = igq_sparsities(numels, density)
    else:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    return torch.tensor(values)  # float32, as torch.tensor of Python floats


def frozen_fractions(allocation: str, shapes: Sequence[Sequence[int]], p: float, r: float,
                     locking_rule: str = "sparsity_distribution") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer (pruned, kept) frozen fractions (float32 tensors)."""
    if p < 0 or r < 0 or p + r > 1:
        raise ValueError(f"pruning_ratio {p} and locking_ratio {r} must be >= 0 with a sum <= 1")
    if locking_rule == "sparsity_distribution":
        frozen = layer_sparsities(allocation, shapes, 1 - (p + r))
        pruned = layer_sparsities(allocation, shapes, 1 - p)
        kept = frozen - pruned
    elif locking_rule == "density_distribution":
        pruned = layer_sparsities(allocation, shapes, 1 - p)
        kept = 1 - layer_sparsities(allocation, shapes, r)
    else:
        raise ValueError(f"locking_rule must be one of {', '.join(LOCKING_RULES)}, got {locking_rule!r}")
    return pruned, kept


def frozen_counts(allocation: str, shapes: Sequence[Sequence[int]], p: float, r: float,
                  locking_rule: str = "sparsity_distribution") -> list[tuple[int, int]]:
    """Per-layer ``(n_pruned, n_kept)`` frozen counts, exactly as the official code derives them."""
    pruned, kept = frozen_fractions(allocation, shapes, p, r, locking_rule)
    out = []
    for i, shape in enumerate(shapes):
        n = _numel(shape)
        n_pruned = int((n * pruned[i]).int())
        n_kept = int((n * kept[i]).int())
        if n_pruned < 0 or n_kept < 0 or n_pruned + n_kept > n:
            raise ValueError(f"allocation {allocation!r} gives layer {i} ({n} weights) {n_pruned} pruned and "
                             f"{n_kept} kept frozen weights: not a valid split")
        out.append((n_pruned, n_kept))
    return out


def ternary_states(shapes: Sequence[Sequence[int]], counts: Sequence[tuple[int, int]],
                   generator: torch.Generator) -> list[torch.Tensor]:
    """Frozen states per layer (int8: -1 pruned, +1 kept, 0 free): one random permutation per layer, its first
    ``n_pruned`` positions pruned, the next ``n_kept`` kept."""
    states = []
    for shape, (n_pruned, n_kept) in zip(shapes, counts):
        n = _numel(shape)
        order = torch.randperm(n, generator=generator)
        state = torch.zeros(n, dtype=torch.int8)
        state[order[:n_pruned]] = -1
        state[order[n_pruned:n_pruned + n_kept]] = 1
        states.append(state.view(*shape))
    return states


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
