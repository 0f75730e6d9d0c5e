"""Scoring by double backprop (a Hessian-gradient product: GraSP, SNOWS): the context such a pruner scores in.

Some ops have no second derivative in ATen: the fused attention kernels (flash, memory-efficient; Vision
Transformers fail with ``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented``) and ``hardsigmoid`` (MobileNetV3's SqueezeExcitation). :func:`double_backprop_scoring` selects the
math attention kernel and swaps ``nn.Hardsigmoid`` / ``nn.Hardswish`` modules, while scoring only, for the same
functions written with twice-differentiable ops (``min(max(x + 3, 0), 6) / 6``, ATen's own forward formula); the
model gets its modules back afterwards. Any other op without a second derivative becomes a
:class:`DoubleBackpropError` naming the op and the module that calls it.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class TwiceDifferentiableHardsigmoid(nn.Module):
    """hardsigmoid(x) = min(max(x + 3, 0), 6) / 6, as ATen's kernel computes it, from ops that have a second
    derivative (``aten::hardsigmoid_backward`` has none). The first derivative differs from ATen's only at
    x = ±3 exactly (1/6 there, 0 in ATen's)."""

    def forward(self, x):
        return (x + 3).clamp(0, 6) / 6


class TwiceDifferentiableHardswish(nn.Module):
    """hardswish(x) = x · min(max(x + 3, 0), 6) / 6, as ATen's kernel computes it, twice differentiable."""

    def forward(self, x):
        return x * (x + 3).clamp(0, 6) / 6


# module types whose backward has no derivative, and their twice-differentiable equivalents
TWICE_DIFFERENTIABLE = {nn.Hardsigmoid: TwiceDifferentiableHardsigmoid, nn.Hardswish: TwiceDifferentiableHardswish}


@contextmanager
def double_backprop_scoring(model: nn.Module, probe: torch.Tensor | None = None) -> Iterator[list[str]]:
    """The context a pruner that differentiates twice scores in: the math attention kernel (the fused ones, flash
    and memory-efficient, have no double backward: ViTs fail with ``derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented``), and every ``nn.Hardsigmoid``
    and ``nn.Hardswish`` module (MobileNetV3, its SqueezeExcitation's scale activation included) swapped for the
    same function written with twice-differentiable ops. Yields the names of the swapped modules; the model gets
    its own modules back on exit, whatever happens. Another op without a second derivative becomes a
    :class:`DoubleBackpropError` naming the op and, given a ``probe`` input, the modules that call it."""
    swapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and type(child) in TWICE_DIFFERENTIABLE:
                parent._modules[name] = TWICE_DIFFERENTIABLE[type(child)]()
                swapped.append((parent, name, child, f"{parent_name}.{name}" if parent_name else name))
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield [full for *_, full in swapped]
    except RuntimeError as exc:
        found = re.search(r"derivative for (\S+) is not implemented", str(exc))
        if not found or isinstance(exc, DoubleBackpropError):
            raise
        op = found.group(1)
        where = modules_calling(model, op, probe) if probe is not None else []
        raise DoubleBackpropError(op, where) from exc
    finally:
        for parent, name, child, _ in swapped:
            parent._modules[name] = child


class DoubleBackpropError(RuntimeError):
    """An op of the model has no second derivative; says which, where, and what would work."""

    def __init__(self, op: str, where: list[str]) -> None:
        self.op, self.where = op, where
        called = f"module(s) {', '.join(where)} call it" if where else "the model calls it"
        super().__init__(
            f"this pruner differentiates the loss twice (a Hessian-gradient product), and {op} has no second "
            f"derivative in torch {torch.__version__}: {called}. Scoring already uses the math attention kernel and "
            f"swaps nn.Hardsigmoid / nn.Hardswish modules for twice-differentiable equivalents. What would work: "
            f"make that module call an nn.Module activation or a twice-differentiable expression (e.g. "
            f"(x + 3).clamp(0, 6) / 6 for F.hardsigmoid), or use a pruner that needs first derivatives only "
            f"(snip, synflow, magnitude).")


def _holds(output, inputs, key: str) -> bool:
    """Whether the autograd graph between a module's inputs and its output holds a node named like ``key``."""
    fn = getattr(output, "grad_fn", None)
    stop = {t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    seen, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        if key in type(node).__name__.lower().replace("_", ""):
            return True
        todo.extend(f for f, _ in node.next_functions)
    return False


def modules_calling(model: nn.Module, op: str, x: torch.Tensor) -> list[str]:
    """Names of the innermost modules whose own computation (between their inputs and output) calls ``op``'s
    forward, found by one forward pass of ``x`` with hooks: where an op without a second derivative is called."""
    key = op.split("::")[-1].removesuffix("_backward").replace("_", "").lower()
    hits: list[str] = []
    handles = []
    for name, module in model.named_modules():
        def hook(mod, inputs, output, name=name):
            if _holds(output, inputs, key):
                hits.append(name)
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            model(x.detach().clone().requires_grad_(x.is_floating_point()))
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    inner = [f"{n} ({type(modules[n]).__name__})" for n in dict.fromkeys(hits)
             if n and not any(o.startswith(n + ".") for o in hits)]
    return inner or ([f"the model's own forward ({type(model).__name__})"] if "" in hits else [])
