"""Shared masking code: the prunable set, top-k thresholds, schedules, sparsity accounting, mask application.

Conventions (tested in tests/test_masking.py):
- A mask is a bool tensor shaped like its weight; ``True`` = kept.
- Density = kept / total; sparsity = 1 - density. Never one under the other's name.
- Top-k keeps exactly ``k = round(density * N)`` entries with the highest scores. **Tie rule**: among equal
  scores the entry that comes first (parameter order of the model, then row-major index) is kept first.
  This makes the achieved density exact and the mask deterministic. (Synaptic-Flow instead prunes every
  score ``<=`` the k-th smallest, which overshoots the sparsity when scores tie.)
- NaN scores are treated as the lowest possible score.
- The **reference rule** (``tie_rule="reference"``) is the one of Synaptic-Flow and its forks (PX, AutoSparse):
  ``k = int((1 - density) * N)`` entries are to be pruned, the threshold is the k-th smallest score, and every
  score ``<=`` the threshold is pruned (ties are pruned; nothing is pruned when k < 1). Faithful
  re-implementations use it so that their masks match the official code's mask for mask.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_parameters(
    model: nn.Module,
    exclude_first: bool = False,
    exclude_last: bool = False,
    types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
    include: str | list[str] | None = None,
    exclude: str | None = None,
) -> OrderedDict[str, nn.Parameter]:
    """The ``weight`` of every conv and linear layer, and the q/k/v projections of ``nn.MultiheadAttention``, in
    module order (first/last layer optionally left out).

    ``include``: a regex that a name must match in full, or an explicit list of parameter names (any
    parameter, not only conv/linear weights; an unknown name is an error); ``exclude``: a regex of names to drop.
    A tensor shared by several modules (tied weights) is listed once, under its first name (the one
    ``model.named_parameters()`` uses).
    """
    found: OrderedDict[str, nn.Parameter] = OrderedDict()
    if isinstance(include, (list, tuple)):
        params = dict(model.named_parameters())
        unknown = [n for n in include if n not in params]
        if unknown:
            raise ValueError(f"prunable names {unknown} are not parameters of the model; it has e.g. "
                             f"{list(params)[:6]}")
        seen_ids: set[int] = set()
        for n in params:  # model order
            if n in include and id(params[n]) not in seen_ids:
                seen_ids.add(id(params[n]))
                found[n] = params[n]
        return found
    seen: set[int] = set()
    prefix = lambda name: f"{name}." if name else ""  # noqa: E731
    for module_name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            # the packed (or separate) q/k/v projections multiply activations like a Linear; out_proj is a Linear
            for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                weight = getattr(module, attr, None)
                if isinstance(weight, torch.Tensor) and id(weight) not in seen:
                    seen.add(id(weight))
                    found[prefix(module_name) + attr] = weight
            continue
        weight = getattr(module, "weight", None)
        if isinstance(module, types) and isinstance(weight, torch.Tensor) and id(weight) not in seen:
            seen.add(id(weight))
            found[prefix(module_name) + "weight"] = weight
    names = list(found)
    if exclude_first and names:
        found.pop(names[0], None)
    if exclude_last and names:
        found.pop(names[-1], None)
    if include is not None:
        pattern = re.compile(include)
        found = OrderedDict((n, p) for n, p in found.items() if pattern.fullmatch(n))
    if exclude is not None:
        pattern = re.compile(exclude)
        found = OrderedDict((n, p) for n, p in found.items() if not pattern.fullmatch(n))
    return found


def _kept_count(density: float, total: int) -> int:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    return int(round(density * total))


def _top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool vector with the k highest scores kept; ties kept in index order (stable sort)."""
    flat = torch.nan_to_num(scores.detach().flatten().double(), nan=float("-inf"))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:k]] = True
    return keep


def global_topk_masks(scores: Mapping[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """One threshold over all scores: keep the ``round(density * N)`` highest."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names]) if names else torch.empty(0)
    keep = _top_k_flat(flat, _kept_count(density, flat.numel()))
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[start:start + size].view_as(scores[n]).to(scores[n].device)
        start += size
    return masks


def layerwise_topk_masks(scores: Mapping[str, torch.Tensor],
                         density: float | Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Each layer keeps its own ``round(density * n_layer)`` highest scores (density may be per layer)."""
    masks = {}
    for n, s in scores.items():
        d = density[n] if isinstance(density, Mapping) else density
        masks[n] = _top_k_flat(s.cpu(), _kept_count(d, s.numel())).view_as(s).to(s.device)
    return masks


def _reference_keep(flat: torch.Tensor, density: float, honour_target: bool = False) -> torch.Tensor:
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return flat > float("-inf")
    threshold = torch.kthvalue(flat, k).values
    keep = flat > threshold
    if honour_target:
        excess = int((~keep).sum()) - k  # ties at the threshold pruned beyond k
        if excess > 0:
            tied = ((flat == threshold) & ~keep).nonzero().flatten()
            keep[tied[-excess:]] = True  # the earliest tied entries stay pruned, the last ones come back
    return keep


def reference_threshold_masks(scores: Mapping[str, torch.Tensor], density: float, scope: str = "global",
                              honour_target: bool = False) -> dict[str, torch.Tensor]:
    """Synaptic-Flow's thresholding: prune every score <= the k-th smallest, k = int((1 - density) * N).

    With ``honour_target``, when ties at the threshold would prune more than k entries (where the reference
    code stops with "ERROR: ... remaining, expected ..."), the last tied entries are kept so that exactly k are
    pruned. Pruners apply it on their final round only, so that earlier rounds stay identical to the reference.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    clean = {n: torch.nan_to_num(s.detach(), nan=float("-inf")) for n, s in scores.items()}
    if scope in ("layerwise", "local"):
        return {n: _reference_keep(s.flatten(), density, honour_target).view_as(s) for n, s in clean.items()}
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}: use 'global' or 'layerwise'")
    names = list(clean)
    dtype = functools.reduce(torch.promote_types, (clean[n].dtype for n in names))
    flat = torch.cat([clean[n].flatten().to(dtype) for n in names])
    keep = _reference_keep(flat, density, honour_target)
    masks, start = {}, 0
    for n in names:
        size = clean[n].numel()
        masks[n] = keep[start:start + size].view_as(clean[n])
        start += size
    return masks


def topk_masks(scores: Mapping[str, torch.Tensor], density: float, scope: str = "global",
               tie_rule: str = "exact", final: bool = True) -> dict[str, torch.Tensor]:
    """Masks from scores. ``final``: this is the last round (the reference rule then honours the target)."""
    if tie_rule == "reference":
        return reference_threshold_masks(scores, density, scope, honour_target=final)
    if tie_rule != "exact":
        raise ValueError(f"unknown tie_rule {tie_rule!r}: use 'exact' or 'reference'")
    if scope == "global":
        return global_topk_masks(scores, density)
    if scope in ("layerwise", "local"):
        return layerwise_topk_masks(scores, density)
    raise ValueError(f"unknown scope {scope!r}: use 'global' or 'layerwise'")


def exponential_schedule(final_density: float, rounds: int) -> list[float]:
    """Density before rounds r = 1..R: ``final_density ** (r / R)``; the last entry is ``final_density``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return [final_density ** (r / rounds) for r in range(1, rounds + 1)]


def restrict_scores(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with already-pruned entries set to -inf, so iterative rounds never revive a weight."""
    return {n: torch.where(masks[n], s, torch.full_like(s, float("-inf"))) for n, s in scores.items()}


def full_masks(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(m.sum()) / m.numel() if m.numel() else 1.0 for n, m in masks.items()}


def global_density(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values())) / total if total else 1.0


def collapsed_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Layers with no weight left: the network computes a constant past them (layer collapse)."""
    return [n for n, m in masks.items() if m.numel() and not bool(m.any())]


@torch.no_grad()
def weight_summary(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict:
    """Counted on the model's weights, not on the masks: over the masked (prunable) weights, ``kept`` non-zero
    weights of ``total``, ``layer_density`` per weight, ``collapsed_layers`` (every weight of the layer zero, by a
    mask or written by the pruner)."""
    params = dict(model.named_parameters())
    kept = total = 0
    density, collapsed = {}, []
    for name in masks:
        weight = params[name].detach()
        nonzero = int(torch.count_nonzero(weight))
        kept, total = kept + nonzero, total + weight.numel()
        density[name] = nonzero / weight.numel() if weight.numel() else 1.0
        if weight.numel() and nonzero == 0:
            collapsed.append(name)
    return {"kept": kept, "total": total, "layer_density": density, "collapsed_layers": collapsed}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over all parameters."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


class MaskEnforcer:
    """Applies masks to a model and keeps pruned weights exactly zero during later training.

    Pruned entries get a zero gradient (a hook on the parameter) and are zeroed again by :meth:`enforce`,
    which the training loop calls after every optimizer step (weight decay or a stateful optimizer could
    otherwise move them). :meth:`set_masks` replaces the masks (a during-training pruner's update); with
    ``capture`` set, the hooks keep a copy of each gradient before masking it (the dense gradient), which
    :meth:`take_grads` hands over.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model does not have: {missing}")
        self._names = list(masks)
        self._pairs = [(params[n], masks[n].to(params[n].device)) for n in masks]
        self.capture = False
        self._grads: dict[str, torch.Tensor] = {}
        self._handles = [p.register_hook(functools.partial(self._hook, i)) for i, (p, _) in enumerate(self._pairs)]
        self.enforce()

    def _hook(self, i: int, grad: torch.Tensor) -> torch.Tensor:
        if self.capture:
            self._grads[self._names[i]] = grad.detach().clone()
        return grad * self._pairs[i][1]

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Enforce ``masks`` (the same names as before) from now on; zeroes the weights they prune."""
        self._pairs = [(p, masks[n].to(p.device)) for n, (p, _) in zip(self._names, self._pairs)]
        self.enforce()

    def take_grads(self) -> dict[str, torch.Tensor]:
        """The gradients captured since the last call (and stops capturing)."""
        grads, self._grads, self.capture = self._grads, {}, False
        return grads

    @torch.no_grad()
    def enforce(self) -> None:
        for p, m in self._pairs:
            p.mul_(m)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def parse_nm(nm: str | None) -> tuple[int, int] | None:
    """An N:M pattern (N kept of every M consecutive weights), ``"2:4"`` -> (2, 4); None or "" -> None (unstructured).
    A ValueError names the form when the text is not ``"N:M"`` with 0 < N < M."""
    if not nm:
        return None
    try:
        n, m = (int(v) for v in str(nm).split(":"))
    except ValueError:
        raise ValueError(f"nm must look like '2:4' (N kept of every M), got {nm!r}") from None
    if not 0 < n < m:
        raise ValueError(f"nm {nm!r}: need 0 < N < M")
    return n, m


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights once (no training afterwards)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(params[n].device))


def validate_masks(
    masks: Mapping[str, torch.Tensor],
    prunable: Mapping[str, torch.Tensor],
    target_sparsity: float | None,
    tolerance: float,
) -> list[str]:
    """Problems with a pruner's output, as sentences (empty list: valid)."""
    problems = []
    expected, got = set(prunable), set(masks)
    if got - expected:
        problems.append(f"masks for parameters outside the prunable set: {sorted(got - expected)}")
    if expected - got:
        problems.append(f"no mask for prunable parameters: {sorted(expected - got)}")
    for n in sorted(got & expected):
        m, p = masks[n], prunable[n]
        if not isinstance(m, torch.Tensor):
            problems.append(f"mask {n} is a {type(m).__name__}, not a torch.Tensor")
            continue
        if m.dtype != torch.bool:
            problems.append(f"mask {n} has dtype {m.dtype}, expected torch.bool")
        if tuple(m.shape) != tuple(p.shape):
            problems.append(f"mask {n} has shape {tuple(m.shape)}, the weight has {tuple(p.shape)}")
    if not problems and target_sparsity is not None and not sparsity_on_target(masks, target_sparsity, tolerance):
        achieved = 1.0 - global_density(masks)
        problems.append(f"achieved sparsity {achieved:.6f} differs from the target {target_sparsity:.6f} "
                        f"by more than the declared tolerance {tolerance} (plus per-layer rounding)")
    return problems


def sparsity_on_target(masks: Mapping[str, torch.Tensor], target_sparsity: float, tolerance: float) -> bool:
    """|achieved - target| <= tolerance + rounding slack of half a weight per layer (layer-wise counts round)."""
    total = sum(m.numel() for m in masks.values())
    slack = 0.5 * len(masks) / total if total else 0.0
    return abs((1.0 - global_density(masks)) - target_sparsity) <= tolerance + slack + 1e-12



def sparsity_bin(target: float, achieved: float, kind: str, tolerance: float = 1.25) -> float:
    """The sparsity a run is grouped and compared by: its target, unless its sparsity is learned.

    A learned-sparsity run is binned to its target when its achieved density lies within a factor
    ``tolerance`` of the target density (the target was the method's knob and it landed near it); otherwise to
    its achieved density rounded to two significant digits (so runs that land close together share a bin).
    """
    if kind != "learned":
        return float(target)
    import math

    d_target, d_achieved = 1.0 - target, 1.0 - achieved
    if d_target > 0 and d_achieved > 0 and abs(math.log(d_achieved / d_target)) <= math.log(tolerance):
        return float(target)
    if d_achieved <= 0:
        return 1.0
    return float(1.0 - float(f"{d_achieved:.2g}"))
