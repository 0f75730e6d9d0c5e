"""Numerical health of pruning scores: are the float32 scores a function of the network, or rounding residue?

A score pruner's round-1 scores are computed a second time in float64 on a copy of the model (see
``check_numerics`` in :mod:`bench_harness.contract.score_pruner`); the functions here compare the two, without touching
any model. Scores are residue when a quantity is analytically zero (or cancels) and float32 returns its rounding
error instead: float64 then returns a value many orders of magnitude smaller, and the weights kept at the target
density are a different set. Example: PX's current-code view on a network whose train-mode BatchNorm reaches the
global average pool without a nonlinearity (every CIFAR ResNet) — see docs/px.md.

Criteria (both computed on round 1, where every weight is still present):

- **kept-set IoU** at the pruner's target density and scope between the float32 and float64 scores
  (``|A ∩ B| / |A ∪ B|``, exactly ``round(d·N)`` kept in each); below ``IOU_THRESHOLD`` (0.9) the mask depends on
  the arithmetic, not on the network. Healthy scores agree to float32 precision, so only weights whose scores lie
  within ~1e-6 of the threshold can swap: measured IoUs are ≥ 0.999 on healthy cases;
- **non-finite scores** (inf, NaN) in either precision: an overflow (deep networks without BatchNorm in PX's
  all-ones view) or an invalid operation; the mask of such scores is meaningless whatever its IoU.

A layer is named as residue when its float32 scores differ from the float64 ones by more than
``LAYER_TOLERANCE`` in relative L1 (``Σ|s32 − s64| / Σ|s64|``), or hold a non-finite value. Healthy layers sit
near 1e-6; residue layers near 1 (or far above: float32 residue of an analytic zero is ~1e9× the float64 one).

Only the warning class is imported with the package; the functions import torch when called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch

IOU_THRESHOLD = 0.9
LAYER_TOLERANCE = 0.1


class DegenerateScoresWarning(UserWarning):
    """A pruner's scores are numerically degenerate: rounding residue or non-finite values.

    Attributes: ``pruner`` (its name), ``layers`` (the layers whose scores are residue or non-finite),
    ``iou`` (float32 vs float64 kept sets at the target density; None if not computed), ``nonfinite``
    (layers with inf/NaN float32 scores)."""

    def __init__(self, pruner: str, layers: list[str], iou: float | None = None, nonfinite: list[str] | None = None,
                 detail: str = "") -> None:
        self.pruner, self.layers, self.iou = pruner, list(layers), iou
        self.nonfinite = list(nonfinite or [])
        parts = [f"pruner {pruner!r}: degenerate scores"]
        if iou is not None:
            parts.append(f"float32 and float64 scores keep different weights at the target density "
                         f"(IoU {iou:.3f} < {IOU_THRESHOLD})" if iou < IOU_THRESHOLD else f"kept-set IoU {iou:.3f}")
        if self.nonfinite:
            parts.append(f"non-finite scores (inf/NaN) in {_names(self.nonfinite)}")
        parts.append(f"layers whose scores are rounding residue or non-finite: {_names(self.layers)}")
        if detail:
            parts.append(detail)
        super().__init__("; ".join(parts) + ". The mask is not a function of the network; see docs/px.md "
                                            "(numerical health check).")


def _names(names: list[str], limit: int = 12) -> str:
    if not names:
        return "(none singled out)"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class HealthReport:
    """Result of :func:`compare_precisions`."""

    iou: float
    layer_error: dict[str, float]  # relative L1 difference float32 vs float64, per layer
    layer_scale: dict[str, float]  # Σ|s32| / Σ|s64| per layer (inf when the float64 scores are all zero)
    nonfinite: list[str] = field(default_factory=list)  # layers with inf/NaN float32 (or float64) scores

    @property
    def degenerate(self) -> bool:
        return bool(self.nonfinite) or not self.iou >= IOU_THRESHOLD

    @property
    def residue_layers(self) -> list[str]:
        return [n for n, e in self.layer_error.items() if not e <= LAYER_TOLERANCE or n in self.nonfinite]

    def warning(self, pruner: str) -> DegenerateScoresWarning:
        layers = self.residue_layers
        scales = [self.layer_scale[n] for n in layers if n not in self.nonfinite and math.isfinite(self.layer_scale[n])]
        detail = ""
        if scales:
            detail = (f"in those layers float32 scores are {min(scales):.3g}–{max(scales):.3g}× their float64 "
                      f"values")
        return DegenerateScoresWarning(pruner, layers, self.iou, self.nonfinite, detail)


def nonfinite_layers(scores: Mapping[str, torch.Tensor]) -> list[str]:
    import torch

    return [n for n, s in scores.items() if not bool(torch.isfinite(s).all())]


def kept_sets(scores: Mapping[str, torch.Tensor], density: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """The weights kept at ``density``: exactly ``round(d·N)`` (per layer with scope layerwise), NaN lowest."""
    from bench_harness.contract import masking

    return masking.topk_masks(scores, density, scope, "exact")


def iou(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Intersection over union of two sets of boolean masks with the same keys (1.0 when both are empty)."""
    inter = sum(int((a[n] & b[n].to(a[n].device)).sum()) for n in a)
    union = sum(int((a[n] | b[n].to(a[n].device)).sum()) for n in a)
    return inter / union if union else 1.0


def compare_precisions(scores32: Mapping[str, torch.Tensor], scores64: Mapping[str, torch.Tensor],
                       density: float, scope: str = "global") -> HealthReport:
    """Compare float32 scores with the same scores computed in float64 (same model, same data)."""
    import torch

    nonfinite = sorted(set(nonfinite_layers(scores32)) | set(nonfinite_layers(scores64)),
                       key=list(scores32).index)
    s32 = {n: s.detach().double().cpu() for n, s in scores32.items()}
    s64 = {n: scores64[n].detach().double().cpu() for n in scores32}
    error, scale = {}, {}
    for n in s32:
        a, b = s32[n], s64[n]
        ok = torch.isfinite(a) & torch.isfinite(b)
        ref = float(b[ok].abs().sum())
        diff = float((a[ok] - b[ok]).abs().sum())
        mag = float(a[ok].abs().sum())
        error[n] = diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)
        scale[n] = mag / ref if ref > 0 else (1.0 if mag == 0 else math.inf)
    # NaN sorts lowest in kept_sets (masking.nan_to_num); +inf highest
    value = iou(kept_sets(s32, density, scope), kept_sets(s64, density, scope))
    return HealthReport(value, error, scale, nonfinite)
