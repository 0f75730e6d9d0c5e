"""Mask operations of the during-training pruners (pure functions of tensors; randomness from a given generator).

- :func:`random_masks`: the initial random masks of SET, RigL and the static-sparse control: layer ``l`` keeps
  ``counts[l]`` entries drawn uniformly without replacement (the RigL reference shuffles a vector with that many
  ones, ``sparse_utils.get_mask_random``; the draw itself is ours: torch's ``randperm`` on the given generator).
- :func:`drop_count`: RigL's ``n_prune = int(n_active * drop_fraction)`` (a floor).
- :func:`drop_grow_layer`: one drop/grow step of one layer, as RigL's ``_get_update_op``: keep the
  ``n_active - n`` active entries of largest ``|w|`` (+ optional Gaussian noise, RigL's tie-breaking), then grow
  the ``n`` entries of largest grow score among those not kept (the just-dropped ones included: they may regrow).
- :func:`magnitude_masks`: GMP's step: the largest ``|w|`` among the active entries, per layer or globally.

Ties are broken by position (the lower flat index first), as TensorFlow's ``top_k`` and JaxPruner's top-k do.
"""
from __future__ import annotations

from typing import Mapping

import torch


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def random_masks(shapes: Mapping[str, torch.Size | tuple[int, ...]], counts: Mapping[str, int],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Bool masks (on the CPU) keeping ``counts[name]`` uniformly random entries of each layer, drawn in the
    order of ``shapes`` (one ``randperm`` per layer)."""
    masks = {}
    for name, shape in shapes.items():
        numel = int(torch.Size(shape).numel())
        count = int(counts[name])
        if not 0 <= count <= numel:
            raise ValueError(f"layer {name}: cannot keep {count} of {numel} entries")
        order = torch.randperm(numel, generator=generator, device=_generator_device(generator)).cpu()
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[order[:count]] = True
        masks[name] = flat.view(tuple(shape))
    return masks


def drop_count(n_active: int, drop_fraction: float) -> int:
    """Connections dropped (and regrown) in a layer with ``n_active`` kept entries: RigL's
    ``int(n_active * drop_fraction)`` (TensorFlow casts the float32 product to int32: a floor)."""
    return int(n_active * drop_fraction)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool vector keeping the ``k`` largest of a flat float64 vector; ties by lower index (stable sort)."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return keep


def drop_grow_layer(weight: torch.Tensor, mask: torch.Tensor, score_grow: torch.Tensor, n: int,
                    generator: torch.Generator | None = None,
                    noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One drop/grow update of one layer: ``(new mask, grown)``, ``grown`` the entries newly activated (inactive
    before, kept now; their weights are to be initialised, e.g. to zero).

    Drop: of the active entries, the ``n`` of smallest ``|weight|`` (plus ``noise_std`` times standard normal
    noise drawn from ``generator``: RigL's random tie-breaking, 1e-5 there) are removed. Grow: among the entries
    not kept by the drop (inactive ones and the ``n`` just dropped), the ``n`` of largest ``score_grow`` are
    activated (NaN scores count as the lowest). The number of active entries is unchanged.
    """
    if weight.shape != mask.shape or score_grow.shape != mask.shape:
        raise ValueError(f"weight {tuple(weight.shape)}, mask {tuple(mask.shape)} and score_grow "
                         f"{tuple(score_grow.shape)} must have one shape")
    flat_mask = mask.detach().flatten().bool().cpu()
    n_active = int(flat_mask.sum())
    if not 0 <= n <= n_active:
        raise ValueError(f"cannot drop {n} of {n_active} active entries")
    drop_score = weight.detach().flatten().double().abs().cpu()
    if noise_std:
        noise = torch.randn(drop_score.numel(), generator=generator, device=_generator_device(generator),
                            dtype=torch.float32)
        drop_score = drop_score + noise_std * noise.double().cpu()
    drop_score = torch.where(flat_mask, drop_score, torch.full_like(drop_score, float("-inf")))
    kept = _top(drop_score, n_active - n) & flat_mask
    grow_score = torch.nan_to_num(score_grow.detach().flatten().double().cpu(), nan=float("-inf"))
    grow_score = torch.where(kept, torch.full_like(grow_score, float("-inf")), grow_score)
    grown = _top(grow_score, n) & ~kept
    new = kept | grown
    return new.view(mask.shape).to(mask.device), (grown & ~flat_mask).view(mask.shape).to(mask.device)


def magnitude_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                    counts: Mapping[str, int] | int) -> dict[str, torch.Tensor]:
    """Keep the largest ``|w|`` among the active entries: ``counts`` per layer (a dict) or over all layers
    together (an int: one global threshold). A count above a layer's (or the total) active entries keeps them
    all: masks only shrink."""
    names = list(masks)
    scores = {}
    for n in names:
        s = weights[n].detach().flatten().double().abs().cpu()
        scores[n] = torch.where(masks[n].flatten().cpu(), s, torch.full_like(s, float("-inf")))
    if isinstance(counts, int):
        flat = torch.cat([scores[n] for n in names]) if names else torch.empty(0, dtype=torch.float64)
        active = torch.cat([masks[n].flatten().cpu() for n in names]) if names else torch.empty(0, dtype=torch.bool)
        keep = _top(flat, min(counts, int(active.sum()))) & active
        out, start = {}, 0
        for n in names:
            size = masks[n].numel()
            out[n] = keep[start:start + size].view(masks[n].shape).to(masks[n].device)
            start += size
        return out
    out = {}
    for n in names:
        active = masks[n].flatten().cpu()
        keep = _top(scores[n], min(int(counts[n]), int(active.sum()))) & active
        out[n] = keep.view(masks[n].shape).to(masks[n].device)
    return out
