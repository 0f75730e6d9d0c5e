"""The layer-by-layer walk of the post-training pruners that reconstruct (``mp_ls``, ``snows``, ``sparsegpt``):
the pruned model and a dense copy as chains of blocks, the calibration inputs of each block in both networks (the
pruned one's computed with the layers re-fitted so far), the prunable layers in forward order, and the helpers
their steps share (Gram matrices, the damped least-squares warm start). The pruners' common skeleton is
``LayerwiseReconstruction`` in :mod:`bench_harness_plugins.snows.pruners`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from bench_harness_plugins.snows import network as net
from bench_harness_plugins.snows import solver


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
            layers.append(Layer(name, module, self.dense.get_submodule(module_name), attr, owner[id(module)],
                                module_name))
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


def set_weight(param_tensor: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param_tensor.copy_(value)


def mask_weights(prunable: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned entries of every prunable weight."""
    with torch.no_grad():
        for n, w in prunable.items():
            w.mul_(masks[n].to(w.dtype))
