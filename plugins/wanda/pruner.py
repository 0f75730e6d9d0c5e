"""Wanda (Sun, Liu, Bair, Kolter 2023, "A simple and effective pruning approach for large language models"):
post-training pruning by weight magnitude times input activation norm, no weight update (docs/wanda.md).

The score of weight W_ij (row i = output, column j = input) is ``|W_ij| · ‖X_j‖₂``, with ‖X_j‖ the norm of input
feature j over every calibration row the layer multiplies (tokens of a linear layer; for ``nn.Conv2d``, ours: the
column j = (in_channel, kh, kw) of the unfolded (im2col) input, over examples and output positions). The
official code (locuslab/wanda, ``lib/prune.py`` ``prune_wanda``) compares the scores within each output row and
prunes ``int(cols · sparsity)`` of every row; ``nm: "2:4"`` keeps N of every M consecutive inputs of a row.

The layers are handled one block after another (``calibration: sequential``, the official ``prune_wanda``): the
calibration inputs of a block's layers are computed by the network whose earlier blocks are already pruned, while
the block itself is still dense. A block is the outermost module on a layer's path that is an item of an
``nn.Sequential`` or ``nn.ModuleList`` (a decoder layer of an LLM, a residual block, a ViT block; the layer itself
when there is none). The pure functions below compute the scores and the masks; :class:`Wanda` walks the network.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench_harness import Granularity, Pruner, PruneResult, Regime, Requirements, SparsityKind, hookimpl, masking, param

# -- parameters -----------------------------------------------------------------------------------------------------


@dataclass
class Params:
    scope: Literal["output", "input", "layer", "global"] = param(
        "output", "comparison group of the scores: 'output' (each row of a layer, the official Wanda), 'input' (each "
                  "column) or 'layer' (the paper's ablations), 'global' (all layers at once; ours, needs calibration "
                  "'dense')")
    nm: str = param("", "N:M masks instead, e.g. '2:4': each row keeps N of every M consecutive inputs (for a conv, "
                        "N of every M input channels at each kernel position); the run's sparsity must be 1 - N/M")
    calibration: Literal["sequential", "sequential_layers", "dense"] = param(
        "sequential", "which network computes each layer's inputs: 'sequential' (the official prune_wanda: block by "
                      "block, earlier blocks pruned), 'sequential_layers' (layer by layer, ours), 'dense' (the dense "
                      "network, as the official image_classifiers code)")
    variant: bool = param(
        False, "the appendix's Wanda variant (official --use_variant): each row prunes its lowest scores whose "
               "cumulative sum stays within alpha times the row's sum, alpha bisected (from 0.4 in [0, 0.8]) until "
               "the layer is within 0.001 of the target; scope 'output', no nm")
    row_rounding: Literal["spread", "floor"] = param(
        "spread", "scope output/input: 'floor' prunes int(cols * sparsity) of every row (the official code, short "
                  "of the target when that is not an integer); 'spread' prunes the rest of the layer's "
                  "round(sparsity * size) one more per row, in the rows whose next score is lowest (the same mask "
                  "when cols * sparsity is an integer)")


# -- scores ---------------------------------------------------------------------------------------------------------

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _conv2d_view(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple, tuple]:
    """(x padded as the conv pads it, kernel, stride, dilation), all 2-d (a Conv1d as a conv of height 1)."""
    if isinstance(module, nn.Conv1d):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        padding = module.padding if isinstance(module.padding, str) else (0, *module.padding)
    else:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        kernel, stride, dilation, padding = module.kernel_size, module.stride, module.dilation, module.padding
    if padding == "valid":
        pads = (0, 0, 0, 0)
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    else:
        pads = (padding[1], padding[1], padding[0], padding[0])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    if any(pads):
        x = F.pad(x, pads, mode=mode)
    return x, kernel, stride, dilation


def input_square_sums(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ of the squared inputs of every column the layer's weight multiplies, over all rows of one call, float64.

    Linear: shape (in_features,), Σ over every leading dimension (examples, tokens). Conv (ours): shape
    (in_channels, kh, kw): for each kernel position, Σ of x² over the examples and the input positions that this
    kernel position reads at some output position (the columns of the im2col matrix, zero padding included)."""
    x = x.detach().double()
    if isinstance(module, nn.Linear):
        return (x.reshape(-1, x.shape[-1]) ** 2).sum(0)
    xp, (kh, kw), (sh, sw), (dh, dw) = _conv2d_view(module, x)
    sq = (xp ** 2).sum(0)  # (C, H, W): summed over the examples first
    hout = (sq.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wout = (sq.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = torch.empty(sq.shape[0], kh, kw, dtype=torch.float64, device=sq.device)
    for i in range(kh):
        for j in range(kw):
            window = sq[:, i * dh: i * dh + sh * (hout - 1) + 1: sh, j * dw: j * dw + sw * (wout - 1) + 1: sw]
            out[:, i, j] = window.sum(dim=(1, 2))
    if isinstance(module, nn.Conv1d):
        out = out[:, 0, :]
    return out


def row_norms(module: nn.Module, sums: torch.Tensor, examples: int) -> torch.Tensor:
    """‖X_j‖ per weight entry, shaped as the weight: sqrt(sums / examples), each row reading the input channels of
    its own group (grouped convs)."""
    norms = (sums / max(examples, 1)).sqrt()
    weight = module.weight
    if isinstance(module, nn.Linear):
        return norms.expand_as(weight)
    groups, out = module.groups, weight.shape[0]
    per_group = norms.reshape(groups, weight.shape[1], *weight.shape[2:])
    return per_group.repeat_interleave(out // groups, dim=0)


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X_j‖ (float64), shaped as the weight."""
    return weight.detach().double().abs() * norms.double()


# -- masks ----------------------------------------------------------------------------------------------------------

def row_keep(scores: torch.Tensor, sparsity: float, rounding: str = "spread") -> torch.Tensor:
    """Bool (rows, cols) mask of the official per-output comparison: every row prunes its ``int(cols · sparsity)``
    lowest scores (stable ascending sort: among equal scores the earlier column goes first). ``spread``: the rest of
    the layer's count (``size − round((1 − sparsity) · size)``) is pruned one more per row in the rows whose next
    score is lowest (or one fewer in those whose last pruned score is highest, when the floor overshoots)."""
    rows, cols = scores.shape
    values, order = torch.sort(scores, dim=1, stable=True)
    base = min(int(cols * sparsity), cols)
    counts = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    if rounding == "spread":
        total = rows * cols - int(round((1.0 - sparsity) * rows * cols))
        extra = total - rows * base
        if extra > 0 and base < cols:
            pick = torch.sort(values[:, base], stable=True).indices[:extra]
            counts[pick] += 1
        elif extra < 0 and base > 0:
            pick = torch.sort(values[:, base - 1], descending=True, stable=True).indices[:-extra]
            counts[pick] -= 1
    elif rounding != "floor":
        raise ValueError(f"unknown row_rounding {rounding!r}: use 'spread' or 'floor'")
    pruned_sorted = torch.arange(cols, device=scores.device)[None, :] < counts[:, None]
    return torch.empty_like(pruned_sorted).scatter_(1, order, ~pruned_sorted)


def variant_keep(scores: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, float]:
    """(bool (rows, cols) mask, alpha) of the official variant (``prune_wanda`` with ``use_variant``,
    ``return_given_alpha``): with the row's scores sorted ascending, the threshold of a row is its last sorted score
    whose cumulative sum is <= alpha · the row's sum, and every score <= that threshold is pruned; alpha starts at
    0.4 and is bisected in [0, 0.8] while the layer's sparsity (float32, as the official tensor arithmetic) is more
    than 0.001 from the target and the bracket is at least 0.001 wide. A row whose lowest score already exceeds
    alpha · its sum prunes nothing (the official gather fails on it)."""
    values = torch.sort(scores, dim=1, stable=True).values
    cumulative = torch.cumsum(values, dim=1)
    row_sums = scores.sum(dim=1)

    def given(alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        index = (cumulative <= (row_sums * alpha)[:, None]).sum(dim=1, keepdim=True) - 1
        threshold = torch.gather(values, 1, index.clamp(min=0))
        threshold = torch.where(index < 0, torch.full_like(threshold, float("-inf")), threshold)
        pruned = scores <= threshold
        return pruned, pruned.sum() / pruned.numel()  # a float32 tensor, as the official cur_sparsity

    alpha, low, high = 0.4, 0.0, 0.8
    pruned, current = given(alpha)
    while bool(torch.abs(current - sparsity) > 0.001) and high - low >= 0.001:
        if bool(current > sparsity):
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        pruned, current = given(alpha)
    return ~pruned, alpha


parse_nm = masking.parse_nm  # its home is the core's masking module (shared with snows/wanda)


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask shaped as ``scores``: along the inputs of each row (columns of a linear layer; input channels at
    each kernel position of a conv), every group of M consecutive inputs keeps its N highest scores (the official
    ``prune_n``/``prune_m`` loop prunes the M − N lowest; among equal scores the earlier input is pruned). A last
    group shorter than M keeps its N highest (all of it when shorter than N)."""
    s = scores if scores.dim() > 2 else scores[:, :, None]
    s = s.flatten(2).transpose(1, 2)  # (out, positions, in)
    out, pos, cin = s.shape
    keep = torch.ones_like(s, dtype=torch.bool)
    for start in range(0, cin, m):
        group = s[:, :, start:start + m]
        drop = group.shape[-1] - min(n, group.shape[-1])
        if drop:
            order = torch.sort(group, dim=-1, stable=True).indices[..., :drop]
            keep[:, :, start:start + m].scatter_(-1, order, False)
    keep = keep.transpose(1, 2)
    return keep.reshape(scores.shape)


def layer_keep(scores: torch.Tensor, sparsity: float, scope: str, rounding: str,
               nm: tuple[int, int] | None, variant: bool = False) -> torch.Tensor:
    """The mask of one layer (bool, shaped as the weight) for the scopes decided layer by layer."""
    if nm is not None:
        return nm_keep(scores, *nm)
    flat = scores.reshape(scores.shape[0], -1)
    if variant:
        return variant_keep(flat, sparsity)[0].reshape(scores.shape)
    if scope == "output":
        return row_keep(flat, sparsity, rounding).reshape(scores.shape)
    if scope == "input":
        return row_keep(flat.t(), sparsity, rounding).t().reshape(scores.shape)
    if scope == "layer":
        return masking.layerwise_topk_masks({"w": scores}, 1.0 - sparsity)["w"]
    raise ValueError(f"scope {scope!r} is not decided layer by layer")


# -- the walk -------------------------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by a hook once a block's last layer has seen its inputs: the rest of the forward is not needed."""


def block_of(model: nn.Module, module_name: str) -> str:
    """The outermost module on the path of ``module_name`` that is an item of an ``nn.Sequential`` or
    ``nn.ModuleList`` (the module itself when there is none)."""
    parts = module_name.split(".") if module_name else []
    parent = model
    for k, part in enumerate(parts):
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            return ".".join(parts[:k + 1])
        parent = getattr(parent, part)
    return module_name


def _first_input(args, kwargs):
    return args[0] if args else next(iter(kwargs.values()))


class _Collector:
    """Forward hooks accumulating the input square sums of some layers; optionally stops the forward after the
    ``stop_after``-th call of them."""

    def __init__(self, layers: dict[str, nn.Module], stop_after: int | None = None) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.stop_after = stop_after
        self.handles = [m.register_forward_hook(self._hook(n), with_kwargs=True) for n, m in layers.items()]

    def _hook(self, name):
        def hook(module, args, kwargs, _output):
            s = input_square_sums(module, _first_input(args, kwargs))
            self.sums[name] = s if name not in self.sums else self.sums[name] + s
            self.calls += 1
            if self.stop_after is not None and self.calls >= self.stop_after:
                raise _Stop
        return hook

    def run(self, model: nn.Module, batches: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for x in batches:
                self.calls = 0
                try:
                    model(x)
                except _Stop:
                    pass

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def call_order(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> list[str]:
    """The names of ``modules`` in the order their calls finish during ``model(x)`` (a name per call)."""
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


class Wanda(Pruner):
    name = "wanda"
    version = "1"
    description = ("Wanda: |W| · ‖X‖ per output row from calibration inputs, layers pruned block by block "
                   "(locuslab/wanda prune_wanda), or N:M; weights unchanged")
    regime = Regime.POST_TRAINING
    requires = Requirements(data=True)
    Params = Params
    # the default (row_rounding 'spread') hits the target exactly; 'floor' (the official count) falls short of it
    # when cols · sparsity is not an integer: a warning in the row, not a failed run
    sparsity_kind = SparsityKind.TARGET

    @classmethod
    def granularity_of(cls, params: Params) -> Granularity:
        return Granularity.N_M if parse_nm(params.nm) else Granularity.UNSTRUCTURED

    def prune(self, model, sparsity, ctx):
        p = self.params
        start = time.perf_counter()
        nm = parse_nm(p.nm)
        if nm is not None and p.scope != "output":
            raise ValueError(f"nm masks are decided per row: leave scope at 'output' (got {p.scope!r})")
        if p.variant and (nm is not None or p.scope != "output"):
            raise ValueError("the variant is a per-row unstructured rule: use it with scope 'output' and no nm")
        if p.scope == "global" and p.calibration != "dense":
            raise ValueError("scope 'global' compares every layer at once, so no layer can be pruned before the "
                             "others are scored: use calibration 'dense' with it")
        batches = [x for x, _ in ctx.data()]
        if not batches:
            raise ValueError("wanda needs calibration data: the scoring batches are empty")
        examples = sum(len(x) for x in batches)
        names = list(ctx.prunable)
        modules = {}
        for n in names:
            module_name, attr = n.rsplit(".", 1) if "." in n else ("", n)
            module = model.get_submodule(module_name)
            if attr == "weight" and isinstance(module, SUPPORTED) and module.weight is ctx.prunable[n]:
                modules[n] = module
        magnitude_only = [n for n in names if n not in modules]

        was_training = model.training
        model.eval()  # BatchNorm running statistics, no dropout
        originals: dict[str, torch.Tensor] = {}  # weights zeroed for the later steps of a sequential walk
        masks: dict[str, torch.Tensor] = {}
        scores: dict[str, torch.Tensor] = {}
        try:
            order = call_order(model, batches[0][:2], modules)  # the calls of a forward, in order
            if p.calibration == "dense":
                steps = [[n for n in names if n in modules]]
            else:
                steps = self._steps(model, order, p.calibration)
            for step in steps:
                called = [n for n in step if n in order]
                if called:
                    last = max(i for i, n in enumerate(order) if n in step)
                    stop = sum(1 for n in order[:last + 1] if n in step)
                    collector = _Collector({n: modules[n] for n in called},
                                           stop_after=None if p.calibration == "dense" else stop)
                    try:
                        collector.run(model, batches)
                    finally:
                        collector.remove()
                else:
                    collector = None
                for n in step:
                    if collector is not None and n in collector.sums:
                        norms = row_norms(modules[n], collector.sums[n], examples)
                    else:
                        norms = torch.ones_like(ctx.prunable[n], dtype=torch.float64)
                        magnitude_only.append(n)
                    scores[n] = wanda_scores(ctx.prunable[n], norms)
                if p.scope != "global":
                    for n in step:
                        masks[n] = layer_keep(scores.pop(n), sparsity, p.scope, p.row_rounding, nm, p.variant)
                        if p.calibration != "dense":
                            originals[n] = ctx.prunable[n].detach().clone()
                            with torch.no_grad():
                                ctx.prunable[n].mul_(masks[n].to(ctx.prunable[n].dtype))
            for n in names:  # not weights of a supported layer, or never called: |W| alone
                if n not in masks and n not in scores:
                    scores[n] = ctx.prunable[n].detach().double().abs()
                    magnitude_only.append(n)
                    if p.scope != "global":
                        masks[n] = layer_keep(scores.pop(n), sparsity, p.scope, p.row_rounding, nm, p.variant)
            if p.scope == "global":
                masks = masking.global_topk_masks({n: scores[n] for n in names}, 1.0 - sparsity)
        finally:
            with torch.no_grad():
                for n, w in originals.items():
                    ctx.prunable[n].copy_(w)
            model.train(was_training)
        masks = {n: masks[n].to(torch.bool).to(ctx.prunable[n].device) for n in names}
        if nm is not None:
            achieved = 1.0 - masking.global_density(masks)
            if abs(achieved - sparsity) > 1e-3:
                raise ValueError(f"nm {p.nm!r} removes {achieved:.4f} of the prunable weights; set the run's sparsity "
                                 f"to that value (got {sparsity})")
        info = {"calibration": p.calibration, "steps": len(steps), "calibration_examples": examples,
                "magnitude_only": sorted(set(magnitude_only)), "granularity": p.nm or "unstructured",
                "seconds": time.perf_counter() - start}
        return PruneResult(masks, info=info)

    @staticmethod
    def _steps(model: nn.Module, order: list[str], calibration: str) -> list[list[str]]:
        """Groups of the called prunable layers handled together, in forward order (by the first call of any of
        them): blocks for 'sequential', single layers for 'sequential_layers'."""
        groups: dict[str, list[str]] = {}
        for n in dict.fromkeys(order):
            key = n if calibration == "sequential_layers" else block_of(model, n.rsplit(".", 1)[0] if "." in n
                                                                          else "")
            groups.setdefault(key, []).append(n)
        return list(groups.values())


@hookimpl
def bench_register_pruners():
    return [Wanda]
