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
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_harness import Pruner, PruneResult, Regime, Requirements, hookimpl, param
from bench_harness_plugins.snows import network as net
from bench_harness_plugins.snows import solver

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


def removal_counts(model: nn.Module, prunable: dict[str, torch.Tensor], sparsity: float, p: MaskParams) -> dict[str, int]:
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


def mp_masks(model: nn.Module, sparsity: float, prunable: dict[str, torch.Tensor], p: MaskParams) -> dict[str, torch.Tensor]:
    nm = nm_or_none(p, sparsity, prunable)
    if nm is not None:
        return {n: solver.nm_mask(w, *nm) for n, w in prunable.items()}
    counts = removal_counts(model, prunable, sparsity, p)
    return {n: solver.magnitude_mask(w, counts[n]) for n, w in prunable.items()}


def _result(masks, p: MaskParams, changed: bool, info: dict[str, Any]) -> PruneResult:
    info = {"granularity": p.nm or "unstructured", **info}
    return PruneResult(masks, weights_changed=changed, sparsity_of=p.sparsity_of, info=info)


# -- the layer-by-layer walk shared by mp_ls, snows, sparsegpt -------------------------------------------------------

@dataclass
class Layer:
    name: str  # parameter name
    module: nn.Module
    dense_module: nn.Module
    attr: str
    block: int
    module_name: str


class Walk:
    """The pruned model and a dense copy as chains of blocks, the calibration inputs of the current block in both,
    and the prunable layers in forward order."""

    def __init__(self, model: nn.Module, ctx, batch_size: int) -> None:
        xs = [x for x, _ in ctx.data()]
        if not xs:
            raise ValueError("no calibration data")
        self.x = torch.cat(xs).to(ctx.device)
        self.n = len(self.x)
        self.bs = max(1, min(batch_size, self.n))
        self.model = model
        self.dense = copy.deepcopy(model)
        for q in self.dense.parameters():
            q.requires_grad_(False)
        self.dense.eval()
        self.training = model.training
        model.eval()
        sample = self.x[:2]
        self.kind, chain = net.chain_of(model, sample)
        dense_kind, dense_chain = net.chain_of(self.dense, sample)
        if dense_kind != self.kind:
            self.kind, chain, dense_chain = "whole", [("model", model)], [("model", self.dense)]
        self.blocks = [b for _, b in chain]
        self.dense_blocks = [b for _, b in dense_chain]
        owner = {}
        for bi, block in enumerate(self.blocks):
            for m in block.modules():
                owner.setdefault(id(m), bi)
        layers = []
        for name in ctx.prunable:
            module_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
            module = model.get_submodule(module_name)
            if id(module) not in owner or not isinstance(getattr(module, attr, None), torch.Tensor):
                continue
            layers.append(Layer(name, module, self.dense.get_submodule(module_name), attr, owner[id(module)], module_name))
        order = net.call_order(self.blocks, sample, [lay.module for lay in layers])
        first = {}
        for k, (_, m) in enumerate(order):
            first.setdefault(id(m), k)
        self.layers = sorted((lay for lay in layers if id(lay.module) in first), key=lambda lay: first[id(lay.module)])

    def restore(self) -> None:
        self.model.train(self.training)

    def run(self, callback) -> None:
        """callback(layer, xp, xd) for every layer, block by block; xp / xd: the block's inputs in the pruned and
        the dense network."""
        xp = xd = self.x
        for bi, block in enumerate(self.blocks):
            todo = [lay for lay in self.layers if lay.block == bi]
            for lay in todo:
                callback(lay, xp, xd)
            if bi == len(self.blocks) - 1 or not any(lay.block > bi for lay in self.layers):
                break
            xp, xd = self._forward(block, xp), self._forward(self.dense_blocks[bi], xd)

    @torch.no_grad()
    def _forward(self, block, x):
        return torch.cat([block(x[i:i + self.bs]) for i in range(0, self.n, self.bs)])

    @torch.no_grad()
    def grams(self, lay: Layer, xp: torch.Tensor, xd: torch.Tensor | None, chunk: int = 64):
        """XᵀX of the layer's inputs in the pruned network and Xᵀ X_dense (inputs of the dense layer in the dense
        network), both divided by the number of examples (the official normalisation)."""
        xtx = xtd = None
        for i in range(0, self.n, chunk):
            rows = net.layer_rows(lay.module, net.capture_input([self.blocks[lay.block]], xp[i:i + chunk], lay.module))
            xtx = rows.t() @ rows if xtx is None else xtx.addmm_(rows.t(), rows)
            if xd is not None:
                rows_d = net.layer_rows(lay.dense_module, net.capture_input([self.dense_blocks[lay.block]],
                                                                             xd[i:i + chunk], lay.dense_module))
                xtd = rows.t() @ rows_d if xtd is None else xtd.addmm_(rows.t(), rows_d)
        return xtx / self.n, (xtd / self.n if xtd is not None else None)

    def least_squares(self, lay: Layer, mask: torch.Tensor, xp, xd, ls_damping: float) -> torch.Tensor:
        """The official warm start on the mask's support (float64 solve), as the layer's weight shape."""
        xtx, xtd = self.grams(lay, xp, xd)
        dense_w = lay.dense_module.weight.detach().reshape(mask.shape[0], -1).double()
        xty = xtd.double() @ dense_w.t()
        flat_mask = mask.reshape(mask.shape[0], -1)
        w = solver.masked_least_squares(solver.damp(xtx.double(), ls_damping), xty, flat_mask)
        # inputs that are zero on every calibration example leave their weights undetermined: the solve returns 0
        # (an extra zero the official code counts as sparsity); keep the dense value instead (no effect on the fit)
        dead = torch.diagonal(xtx) == 0
        if bool(dead.any()):
            w[:, dead] = (dense_w * flat_mask)[:, dead]
        return w.reshape(mask.shape).to(lay.module.weight.dtype)


def _set(param_tensor: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param_tensor.copy_(value)


# -- pruners --------------------------------------------------------------------------------------------------------

class MagnitudeCapped(Pruner):
    name = "mp"
    description = "global magnitude with a per-layer cap (the official SNOWS mask), weights unchanged"
    regime = Regime.POST_TRAINING
    Params = MaskParams

    def prune(self, model, sparsity, ctx):
        masks = mp_masks(model, sparsity, dict(ctx.prunable), self.params)
        return _result(masks, self.params, False, {})


class MagnitudeLeastSquares(Pruner):
    name = "mp_ls"
    description = "the mp mask, then layer-wise damped least squares on the support (the SNOWS warm start, MP+)"
    regime = Regime.POST_TRAINING
    requires = Requirements(data=True)
    changes_weights = True
    Params = LsParams

    def prune(self, model, sparsity, ctx):
        start = time.perf_counter()
        masks = mp_masks(model, sparsity, dict(ctx.prunable), self.params)
        walk = Walk(model, ctx, self.params.batch_size)
        solved = []

        def callback(lay, xp, xd):
            if net.supports_least_squares(lay.module, lay.attr):
                _set(lay.module.weight, self.params_ls(walk, lay, masks[lay.name], xp, xd))
                solved.append(lay.name)

        try:
            walk.run(callback)
        finally:
            walk.restore()
        _mask_weights(ctx, masks)
        return _result(masks, self.params, True, {"chain": walk.kind, "least_squares_layers": len(solved),
                                                  "seconds": time.perf_counter() - start})

    def params_ls(self, walk, lay, mask, xp, xd):
        return walk.least_squares(lay, mask, xp, xd, self.params.ls_damping)


def _mask_weights(ctx, masks) -> None:
    with torch.no_grad():
        for n, w in ctx.prunable.items():
            w.mul_(masks[n].to(w.dtype))


def default_k(kind: str, model: nn.Module, lay: Layer) -> int:
    """The official K per architecture."""
    if kind == "vit" or net.is_transformer(model):
        return 1 if ".mlp." in f".{lay.module_name}." else 3
    if kind == "cifar_resnet":
        return 20
    if kind == "resnet" and any(type(m).__name__ == "Bottleneck" for m in model.modules()):
        return 30
    return 40


class Snows(Pruner):
    name = "snows"
    version = "1"
    description = "SNOWS: warm start, then the K-step objective minimized by Hessian-free Newton-CG on the support"
    regime = Regime.POST_TRAINING
    requires = Requirements(data=True)
    changes_weights = True
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

    def prune(self, model, sparsity, ctx):
        p = self.params
        start = time.perf_counter()
        masks = self.masks(model, sparsity, ctx)
        walk = Walk(model, ctx, p.batch_size)
        watched_names = list(net.watched_modules(model))
        report: dict[str, Any] = {"layers": {}}
        flags = {n: q.requires_grad for n, q in model.named_parameters()}

        def callback(lay, xp, xd):
            mask = masks[lay.name].to(lay.module.weight.device) if lay.attr == "weight" else masks[lay.name]
            weight = getattr(lay.module, lay.attr)
            if p.warm_start and net.supports_least_squares(lay.module, lay.attr):
                w0 = walk.least_squares(lay, mask, xp, xd, p.ls_damping)
            else:
                w0 = weight.detach().clone()
            _set(weight, w0 * mask)
            k = p.k_step if p.k_step >= 0 else default_k(walk.kind, model, lay)
            # exact HVPs need double backward: the math attention kernel has it, the fused ones do not
            with sdpa_kernel(SDPBackend.MATH):
                report["layers"][lay.name] = self.newton(walk, lay, weight, mask, xp, k, watched_names,
                                                         xd if p.target_input == "dense" else xp)

        for q in model.parameters():
            q.requires_grad_(False)
        try:
            walk.run(callback)
        finally:
            for n, q in model.named_parameters():
                q.requires_grad_(flags[n])
            walk.restore()
        _mask_weights(ctx, masks)
        report.update(chain=walk.kind, seconds=time.perf_counter() - start, calibration_examples=walk.n)
        return _result(masks, p, True, report)

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
                        lambda v, grad=grad: solver.hessian_vector_product(grad, weight, v, support), rhs, p.max_cg_iterations,
                        p.cg_tolerance, p.damping)
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


class SparseGpt(Pruner):
    name = "sparsegpt"
    description = "SparseGPT (layer-wise OBS with lazy updates), per-layer sparsities of the mp mask, or N:M"
    regime = Regime.POST_TRAINING
    requires = Requirements(data=True)
    changes_weights = True
    Params = SparseGptParams

    def prune(self, model, sparsity, ctx):
        p = self.params
        start = time.perf_counter()
        prunable = dict(ctx.prunable)
        nm = nm_or_none(p, sparsity, prunable)
        counts = None if nm else removal_counts(model, prunable, sparsity, p)
        masks = {n: (solver.nm_mask(w, *nm) if nm else solver.magnitude_mask(w, counts[n])) for n, w in prunable.items()}
        walk = Walk(model, ctx, p.batch_size)
        solved = []

        def callback(lay, xp, xd):
            module = lay.module
            if not net.supports_least_squares(module, lay.attr):
                return
            w = module.weight.detach()
            out = w.shape[0]
            flat = w.reshape(out, -1)
            d = flat.shape[1]
            perm = torch.arange(d, device=w.device)
            if nm is not None and isinstance(module, nn.Conv2d):
                cin, pos = w.shape[1], w.shape[2] * w.shape[3]
                if cin % nm[1]:
                    return  # groups would straddle kernel positions: keep the magnitude N:M mask
                perm = perm.view(cin, pos).t().flatten()  # columns (position, channel): M channels per group
            xtx, _ = walk.grams(lay, xp, None)
            blocksize = p.blocksize if nm is None else max(nm[1], (p.blocksize // nm[1]) * nm[1])
            remove = 0 if nm else counts[lay.name]
            new, keep = solver.sparsegpt_prune(flat[:, perm], xtx[perm][:, perm], remove, nm, blocksize, p.percdamp)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(d, device=w.device)
            _set(module.weight, new[:, inverse].reshape(w.shape))
            masks[lay.name] = keep[:, inverse].reshape(w.shape)
            solved.append(lay.name)

        try:
            walk.run(callback)
        finally:
            walk.restore()
        _mask_weights(ctx, masks)
        return _result(masks, p, True, {"chain": walk.kind, "solved_layers": len(solved),
                                        "seconds": time.perf_counter() - start})


PRUNERS = [MagnitudeCapped, MagnitudeLeastSquares, Snows, SparseGpt]


@hookimpl
def bench_register_pruners():
    return PRUNERS
