"""Post-training pruners: ``mp``, ``mp_ls``, ``snows`` (Lucas & Mazumder, ICLR 2025) and ``sparsegpt``.

All four prune a pretrained model in one shot with a small calibration set and no retraining (regime
POST_TRAINING). They share the mask of the official SNOWS code (mazumder-lab/SNOWS, ``CNN_pruning/``):

- ``mp``: global magnitude with a per-layer cap: weights sorted by |w| are removed from the smallest until the
  target count is reached, no layer losing more than ``round(max_layer_sparsity × its size)``; weights unchanged.
  ``sparsity_of: all`` counts the target over all trainable parameters (the official basis) while pruning only the
  prunable set; ``nm: "2:4"`` makes N:M masks instead (N kept of every M input channels at each kernel position).
- ``mp_ls``: the ``mp`` mask, then layer by layer (in forward order, each layer's inputs taken from the network
  pruned so far) the damped least squares on the mask's support, regressing the dense layer's output on the dense
  network's inputs: ``min ‖X_pruned W − X_dense W_dense‖²`` with ``XᵀX + ls_damping · mean(diag) · I``.
- ``snows``: that warm start, then the K-step objective — the sum of MSEs between the dense and the pruned
  network's outputs of the current layer and the K watched module calls after it (Conv2d/ReLU calls for CNNs,
  attention/linear/GELU for ViTs), both sub-networks fed the pruned network's activations at the block input —
  minimized over the support by ``newton_passes`` passes of Hessian-free Newton over the calibration
  mini-batches: exact Hessian-vector products by double backprop, conjugate gradient with Tikhonov ``damping``,
  Armijo backtracking on the last mini-batch, and the official stall stop.
- ``sparsegpt``: the layer-wise OBS solver of SparseGPT (Frantar & Alistarh, 2023) with the same per-layer
  sparsities as ``mp`` (or N:M): the baseline family the SNOWS paper compares with.

The official layer selection is a ``prunable:`` regex (docs/snows.md): CIFAR ResNets of the harness
``layers\\.\\d+\\.conv[12]\\.weight`` (the 3×3 convs inside residual blocks), torchvision ResNet-50
``layer\\d\\.\\d+\\.conv\\d\\.weight``, timm ViT ``blocks\\.\\d+\\.(attn\\.(qkv|proj)|mlp\\.fc[12])\\.weight``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench_harness import (
    Granularity,
    Pruner,
    PruneResult,
    Regime,
    Requirements,
    double_backprop_scoring,
    hookimpl,
    param,
)
from bench_harness_plugins.snows import network as net
from bench_harness_plugins.snows import solver
from bench_harness_plugins.snows.layerwise import Layer, Walk, mask_weights, set_weight

# -- parameters -----------------------------------------------------------------------------------------------------

@dataclass
class MaskParams:
    sparsity_of: Literal["prunable", "all"] = param(
        "prunable", "basis of the target: 'prunable' (zeros among the prunable weights, the harness's convention) "
                    "or 'all' (zeros among all trainable parameters, the official SNOWS target)")
    max_layer_sparsity: float = param(1.0, "per-layer cap of the global magnitude mask (official: 0.9 default, "
                                           "0.8 for ResNet-20 in its README); 1.0 = no cap")
    nm: str = param("", "N:M masks instead, e.g. '2:4' (N kept of every M input channels at each kernel position); "
                        "the run's sparsity must equal 1 - N/M")


@dataclass
class LsParams(MaskParams):
    ls_damping: float = param(1e-4, "warm start: XᵀX + ls_damping · mean(diag(XᵀX)) · I (official lambda_inv)")
    batch_size: int = param(512, "calibration mini-batch size (official README: 512 for ResNet-20)")


@dataclass
class SnowsParams(LsParams):
    k_step: int = param(-1, "watched module calls after the current layer in the objective; -1: the official "
                            "setting per architecture (20 CIFAR ResNets, 30 bottleneck ResNets, 3 ViT with 1 for MLP "
                            "layers, 40 otherwise)")
    max_cg_iterations: int = param(500, "conjugate-gradient iterations per Newton step at most")
    newton_passes: int = param(3, "passes of Newton steps over the calibration mini-batches")
    damping: float = param(1e-4, "Tikhonov term of the Newton system (H + damping·I)")
    cg_tolerance: float = param(1e-3, "CG stops when the residual norm falls below this")
    stall_threshold: float = param(0.995, "a pass ends when the last 5 loss ratios all exceed this")
    warm_start: bool = param(True, "start from the layer-wise least squares (False: from the masked weights)")
    mask_from: str = param("mp", "the pruner whose mask SNOWS optimizes over (any registered pruner name)")
    target_input: Literal["pruned", "dense"] = param(
        "pruned", "what the dense sub-network's targets are computed from: pruned (the official code: the pruned "
                  "network's block input, so the objective is local and upstream error is not corrected) or dense "
                  "(the dense network's block input, the targets the warm start fits: upstream error is corrected)")


@dataclass
class SparseGptParams(MaskParams):
    blocksize: int = param(128, "columns per lazy-update block")
    percdamp: float = param(0.01, "damping of XᵀX as a fraction of its mean diagonal")
    batch_size: int = param(512, "calibration mini-batch size")


# -- masks ----------------------------------------------------------------------------------------------------------

def _trainable_total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def removal_counts(model: nn.Module, prunable: dict[str, torch.Tensor], sparsity: float,
                   p: MaskParams) -> dict[str, int]:
    """Weights removed per layer for the target on the chosen basis (the official capped global magnitude).
    On the 'all' basis, zeros already present in trainable parameters outside the prunable set count towards the
    target (the harness counts zeros; a pretrained model has none, a freshly initialised one has its BN biases)."""
    if p.sparsity_of == "all":
        remove = int(round(sparsity * _trainable_total(model))) - _zeros_outside(model, prunable)
    else:
        remove = int(round(sparsity * sum(w.numel() for w in prunable.values())))
    return solver.capped_magnitude_counts(prunable, remove, p.max_layer_sparsity)


@torch.no_grad()
def _zeros_outside(model: nn.Module, prunable: dict[str, torch.Tensor]) -> int:
    inside = {id(w) for w in prunable.values()}
    return sum(int(q.numel() - torch.count_nonzero(q)) for q in model.parameters()
               if q.requires_grad and id(q) not in inside)


def nm_or_none(p: MaskParams, sparsity: float, prunable: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    nm = solver.parse_nm(p.nm)
    if nm is None:
        return None
    if p.sparsity_of != "prunable":
        raise ValueError("nm masks count their sparsity over the prunable weights: use sparsity_of 'prunable'")
    masks = {n: solver.nm_mask(w, *nm) for n, w in prunable.items()}
    achieved = 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    if abs(achieved - sparsity) > 1e-3:
        raise ValueError(f"nm {p.nm!r} removes {achieved:.4f} of the prunable weights; set the run's sparsity to that "
                         f"value (got {sparsity})")
    return nm


def mp_masks(model: nn.Module, sparsity: float, prunable: dict[str, torch.Tensor],
             p: MaskParams) -> dict[str, torch.Tensor]:
    nm = nm_or_none(p, sparsity, prunable)
    if nm is not None:
        return {n: solver.nm_mask(w, *nm) for n, w in prunable.items()}
    counts = removal_counts(model, prunable, sparsity, p)
    return {n: solver.magnitude_mask(w, counts[n]) for n, w in prunable.items()}


def _result(masks, p: MaskParams, changed: bool, info: dict[str, Any]) -> PruneResult:
    info = {"granularity": p.nm or "unstructured", **info}
    return PruneResult(masks, weights_changed=changed, sparsity_of=p.sparsity_of, info=info)


# -- pruners --------------------------------------------------------------------------------------------------------

class MaskPruner(Pruner):
    """The pruners of this module: post-training, on the official SNOWS mask (``MaskParams``): the capped global
    magnitude mask, or N:M masks when ``nm`` is set."""

    regime = Regime.POST_TRAINING

    @classmethod
    def granularity_of(cls, params: MaskParams) -> Granularity:
        return Granularity.N_M if solver.parse_nm(params.nm) else Granularity.UNSTRUCTURED

    def masks(self, model: nn.Module, sparsity: float, ctx) -> dict[str, torch.Tensor]:
        return mp_masks(model, sparsity, dict(ctx.prunable), self.params)


class MagnitudeCapped(MaskPruner):
    name = "mp"
    description = "global magnitude with a per-layer cap (the official SNOWS mask), weights unchanged"
    Params = MaskParams

    def prune(self, model, sparsity, ctx):
        return _result(self.masks(model, sparsity, ctx), self.params, False, {})


class LayerwiseReconstruction(MaskPruner):
    """The skeleton of the post-training pruners that reconstruct: fix a mask (:meth:`masks`: the ``mp`` mask
    unless overridden), walk the network layer by layer in forward order (:class:`layerwise.Walk`: each layer's
    inputs are computed by the network re-fitted so far, and by the dense network), re-fit each layer on the mask's
    support (:meth:`reconstruct`), then zero the pruned weights. The parameters do not require gradients during
    the walk (a step enables what it differentiates). ``info``: the chain the walk found, the subclass's
    :meth:`summary` of the layers it re-fitted, the seconds spent."""

    requires = Requirements(data=True)
    changes_weights = True

    def reconstruct(self, walk: Walk, lay: Layer, masks: dict[str, torch.Tensor], xp: torch.Tensor,
                    xd: torch.Tensor) -> Any:
        """Re-fit ``lay`` (``xp`` / ``xd``: its block's inputs in the pruned and the dense network); may replace
        ``masks[lay.name]``. Returns the layer's record for :meth:`summary`, None when the layer is left as is."""
        raise NotImplementedError

    def summary(self, walk: Walk, done: dict[str, Any]) -> dict[str, Any]:
        """The ``info`` entries of the re-fitted layers (``done``: layer name -> record)."""
        raise NotImplementedError

    def prune(self, model, sparsity, ctx):
        start = time.perf_counter()
        masks = self.masks(model, sparsity, ctx)
        walk = Walk(model, ctx, self.params.batch_size)
        done: dict[str, Any] = {}

        def step(lay, xp, xd):
            record = self.reconstruct(walk, lay, masks, xp, xd)
            if record is not None:
                done[lay.name] = record

        flags = {n: q.requires_grad for n, q in model.named_parameters()}
        for q in model.parameters():
            q.requires_grad_(False)
        try:
            walk.run(step)
        finally:
            for n, q in model.named_parameters():
                q.requires_grad_(flags[n])
            walk.restore()
        mask_weights(ctx.prunable, masks)
        info = {"chain": walk.kind, **self.summary(walk, done), "seconds": time.perf_counter() - start}
        return _result(masks, self.params, True, info)


class MagnitudeLeastSquares(LayerwiseReconstruction):
    name = "mp_ls"
    description = "the mp mask, then layer-wise damped least squares on the support (the SNOWS warm start, MP+)"
    Params = LsParams

    def reconstruct(self, walk, lay, masks, xp, xd):
        if not net.supports_least_squares(lay.module, lay.attr):
            return None
        set_weight(lay.module.weight, walk.least_squares(lay, masks[lay.name], xp, xd, self.params.ls_damping))
        return True

    def summary(self, walk, done):
        return {"least_squares_layers": len(done)}


def default_k(kind: str, model: nn.Module, lay: Layer) -> int:
    """The official K per architecture."""
    if kind == "vit" or net.is_transformer(model):
        return 1 if ".mlp." in f".{lay.module_name}." else 3
    if kind == "cifar_resnet":
        return 20
    if kind == "resnet" and any(type(m).__name__ == "Bottleneck" for m in model.modules()):
        return 30
    return 40


class Snows(LayerwiseReconstruction):
    name = "snows"
    version = "1"
    description = "SNOWS: warm start, then the K-step objective minimized by Hessian-free Newton-CG on the support"
    Params = SnowsParams

    def masks(self, model, sparsity, ctx) -> dict[str, torch.Tensor]:
        p = self.params
        if p.mask_from == "mp":
            return mp_masks(model, sparsity, dict(ctx.prunable), p)
        prunable_total = sum(w.numel() for w in ctx.prunable.values())
        if p.sparsity_of == "all":
            remove = int(round(sparsity * _trainable_total(model)))
            inner = remove / prunable_total
        else:
            inner = sparsity
        masks = ctx.services.run_pruner(p.mask_from, copy.deepcopy(model), inner, ctx).masks
        return {n: masks[n].to(torch.bool).to(w.device) for n, w in ctx.prunable.items()}

    def reconstruct(self, walk, lay, masks, xp, xd):
        p = self.params
        mask = masks[lay.name].to(lay.module.weight.device) if lay.attr == "weight" else masks[lay.name]
        weight = getattr(lay.module, lay.attr)
        if p.warm_start and net.supports_least_squares(lay.module, lay.attr):
            w0 = walk.least_squares(lay, mask, xp, xd, p.ls_damping)
        else:
            w0 = weight.detach().clone()
        set_weight(weight, w0 * mask)
        k = p.k_step if p.k_step >= 0 else default_k(walk.kind, walk.model, lay)
        # exact HVPs need double backward: the math attention kernel (the fused ones have none) and
        # twice-differentiable hardsigmoid/hardswish while it runs (bench_harness.double_backprop_scoring)
        with double_backprop_scoring(walk.model):
            return self.newton(walk, lay, weight, mask, xp, k, list(net.watched_modules(walk.model)),
                               xd if p.target_input == "dense" else xp)

    def summary(self, walk, done):
        return {"layers": done, "calibration_examples": walk.n}

    def newton(self, walk: Walk, lay: Layer, weight: torch.Tensor, mask: torch.Tensor, xp: torch.Tensor, k: int,
               watched_names: list[str], xt: torch.Tensor) -> dict[str, Any]:
        """Minimize the K-step objective over the support of ``mask`` (the official solve_for_W_given_Z): the
        pruned sub-network runs on ``xp``, the dense one on ``xt`` (``xp`` too in the official code)."""
        p = self.params
        names = list(dict.fromkeys(watched_names + [lay.module_name]))
        mods = [walk.model.get_submodule(n) for n in names]
        dmods = [walk.dense.get_submodule(n) for n in names]
        blocks, dblocks = walk.blocks[lay.block:], walk.dense_blocks[lay.block:]
        calls = net.call_order(blocks, xp[:2], mods)
        first = next(i for i, (_, m) in enumerate(calls) if m is lay.module)
        ordinals = list(range(first, min(first + k + 1, len(calls))))
        end = calls[ordinals[-1]][0] + 1
        blocks, dblocks = blocks[:end], dblocks[:end]
        support = mask.bool()

        def objective(x, dense_outs):
            outs = net.run_window(blocks, x, mods, ordinals)
            return sum(F.mse_loss(o, d) for o, d in zip(outs, dense_outs))

        @torch.no_grad()
        def dense_outputs(x):
            return net.run_window(dblocks, x, dmods, ordinals)

        starts = list(range(0, walk.n, walk.bs))
        cache: dict[int, list[torch.Tensor]] = {}
        budget = 1 << 30
        last_x = xp[walk.n - walk.bs:]  # the official Armijo batch: the last batch_size examples
        last_dense = dense_outputs(xt[walk.n - walk.bs:])
        weight.requires_grad_(True)
        history: list[float] = []
        base = None
        cg_total = steps = rejected = 0
        try:
            for rnd in range(p.newton_passes):
                for i in starts:
                    xb = xp[i:i + walk.bs]
                    dense_outs = cache.get(i)
                    if dense_outs is None:
                        dense_outs = dense_outputs(xt[i:i + walk.bs])
                        size = sum(o.numel() * o.element_size() for o in dense_outs)
                        if size * len(starts) <= budget:
                            cache[i] = dense_outs
                    loss = objective(xb, dense_outs)
                    current = float(loss.detach())
                    if rnd == 0:
                        history.append(current)  # the official records the first pass's losses twice
                    history.append(current)
                    grad = torch.autograd.grad(loss, weight, create_graph=True)[0] * support
                    rhs = -grad[support].detach()
                    direction, iters = solver.conjugate_gradient(
                        lambda v, grad=grad: solver.hessian_vector_product(grad, weight, v, support), rhs,
                        p.max_cg_iterations, p.cg_tolerance, p.damping)
                    cg_total += iters
                    full = torch.zeros_like(weight)
                    full[support] = direction.detach()
                    slope = float(torch.dot(grad.detach().flatten(), full.flatten()))
                    del grad, loss
                    origin = weight.detach().clone()
                    seen = {}

                    @torch.no_grad()
                    def loss_at(alpha):
                        weight.copy_(origin + alpha * full)
                        seen["loss"] = float(objective(last_x, last_dense))
                        return seen["loss"]

                    with torch.no_grad():
                        if base is None:
                            base = float(objective(last_x, last_dense))
                    alpha, ok = solver.armijo(loss_at, base, slope)
                    rejected += not ok
                    base = seen["loss"]  # the weight now holds origin + alpha * full (the official keeps it too)
                    steps += 1
                    if solver.stalled(history, p.stall_threshold):
                        break
        finally:
            weight.requires_grad_(False)
        return {"k": k, "loss_first": history[0], "loss_last": history[-1], "armijo_loss": base, "newton_steps": steps,
                "cg_iterations": cg_total, "armijo_rejected": rejected, "outputs": len(ordinals)}


class SparseGpt(LayerwiseReconstruction):
    name = "sparsegpt"
    description = "SparseGPT (layer-wise OBS with lazy updates), per-layer sparsities of the mp mask, or N:M"
    Params = SparseGptParams

    def reconstruct(self, walk, lay, masks, xp, xd):
        p = self.params
        module = lay.module
        if not net.supports_least_squares(module, lay.attr):
            return None
        nm = solver.parse_nm(p.nm)
        w = module.weight.detach()
        out = w.shape[0]
        flat = w.reshape(out, -1)
        d = flat.shape[1]
        perm = torch.arange(d, device=w.device)
        if nm is not None and isinstance(module, nn.Conv2d):
            cin, pos = w.shape[1], w.shape[2] * w.shape[3]
            if cin % nm[1]:
                return None  # groups would straddle kernel positions: keep the magnitude N:M mask
            perm = perm.view(cin, pos).t().flatten()  # columns (position, channel): M channels per group
        xtx, _ = walk.grams(lay, xp, None)
        blocksize = p.blocksize if nm is None else max(nm[1], (p.blocksize // nm[1]) * nm[1])
        remove = 0 if nm else int((~masks[lay.name]).sum())  # the mp mask's count for this layer
        new, keep = solver.sparsegpt_prune(flat[:, perm], xtx[perm][:, perm], remove, nm, blocksize, p.percdamp)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(d, device=w.device)
        set_weight(module.weight, new[:, inverse].reshape(w.shape))
        masks[lay.name] = keep[:, inverse].reshape(w.shape)
        return True

    def summary(self, walk, done):
        return {"solved_layers": len(done)}


PRUNERS = [MagnitudeCapped, MagnitudeLeastSquares, Snows, SparseGpt]


@hookimpl
def bench_register_pruners():
    return PRUNERS
