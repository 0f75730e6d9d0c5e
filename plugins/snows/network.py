"""How the post-training pruners see a network: a chain of blocks, the module calls the K-step objective
watches, and the inputs of a layer.

- :func:`chain_of`: the model as blocks whose composition is its forward (CIFAR ResNets of the harness,
  torchvision ResNets and MobileNet-V2, timm ViTs, any ``nn.Sequential``; otherwise the whole model as one block).
  The chain is checked against the model's own output before use.
- :func:`watched_modules`: the modules whose calls make the K-step objective: Conv2d and ReLU(6) calls outside
  shortcut/downsample branches for CNNs (the official ``register_hooks_on_basicblock``); for transformers the
  attention modules, GELU, and the linear layers outside attention (the official ViT hooks).
- :func:`run_window`: run blocks and capture the outputs of chosen calls, stopping right after the last one.
- :func:`layer_inputs`: the rows a layer multiplies by its weight (unfolded patches of a conv, tokens of a linear).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class StopForward(Exception):
    """Raised by a hook once everything needed from a forward pass has been captured."""


class Fn(nn.Module):
    """A block computed by a function of the modules it holds (registered, so module lookups find them)."""

    def __init__(self, fn: Callable, **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x):
        return self.fn(x)


def _cifar_resnet(model):
    stem = Fn(lambda x: model.relu(model.bn1(model.conv1(x))), conv1=model.conv1, bn1=model.bn1, relu=model.relu)

    def head(x):
        return model.fc(F.avg_pool2d(x, tuple(x.shape[2:])).flatten(1))

    return ([("stem", stem)] + [(f"layers.{i}", b) for i, b in enumerate(model.layers)]
            + [("head", Fn(head, fc=model.fc))])


def _torchvision_resnet(model):
    stem = Fn(lambda x: model.maxpool(model.relu(model.bn1(model.conv1(x)))), conv1=model.conv1, bn1=model.bn1,
              relu=model.relu, maxpool=model.maxpool)
    blocks = [(f"{stage}.{i}", b) for stage in ("layer1", "layer2", "layer3", "layer4")
              for i, b in enumerate(getattr(model, stage))]
    head = Fn(lambda x: model.fc(torch.flatten(model.avgpool(x), 1)), avgpool=model.avgpool, fc=model.fc)
    return [("stem", stem)] + blocks + [("head", head)]


def _mobilenet_v2(model):
    head = Fn(lambda x: model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)),
              classifier=model.classifier)
    return [(f"features.{i}", b) for i, b in enumerate(model.features)] + [("head", head)]


def _timm_vit(model):
    def stem(x):
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    parts = {k: getattr(model, k) for k in ("patch_embed", "patch_drop", "norm_pre")
             if isinstance(getattr(model, k, None), nn.Module)}
    return ([("stem", Fn(stem, **parts))] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
            + [("head", Fn(lambda x: model.forward_head(model.norm(x)), norm=model.norm, head=model.head))])


def _kind(model: nn.Module) -> str:
    names = {n for n, _ in model.named_children()}
    cls = type(model).__name__
    if {"conv1", "bn1", "relu", "layers", "fc"} <= names and isinstance(model.layers, nn.Sequential):
        return "cifar_resnet"
    if {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"} <= names:
        return "resnet"
    if cls == "MobileNetV2" and {"features", "classifier"} <= names:
        return "mobilenet_v2"
    if (cls == "VisionTransformer" and {"patch_embed", "blocks", "norm", "head"} <= names
            and hasattr(model, "_pos_embed")):
        return "vit"
    if isinstance(model, nn.Sequential):
        return "sequential"
    return "whole"


_ADAPTERS = {"cifar_resnet": _cifar_resnet, "resnet": _torchvision_resnet, "mobilenet_v2": _mobilenet_v2,
             "vit": _timm_vit, "sequential": lambda m: [(str(i), b) for i, b in enumerate(m)],
             "whole": lambda m: [("model", m)]}


@torch.no_grad()
def chain_of(model: nn.Module, sample: torch.Tensor) -> tuple[str, list[tuple[str, nn.Module]]]:
    """(kind, blocks) with ``blocks`` composing to ``model(sample)``; falls back to the whole model as one block
    when an adapter's chain does not reproduce the model's output on ``sample``."""
    kind = _kind(model)
    if kind == "whole":
        return kind, _ADAPTERS[kind](model)
    blocks = _ADAPTERS[kind](model)
    expected = model(sample)
    x = sample
    for _, block in blocks:
        x = block(x)
    if (isinstance(expected, torch.Tensor) and x.shape == expected.shape
            and torch.allclose(x, expected, rtol=1e-4, atol=1e-5)):
        return kind, blocks
    return "whole", _ADAPTERS["whole"](model)


def is_transformer(model: nn.Module) -> bool:
    return any("Attention" in type(m).__name__ for m in model.modules())


def watched_modules(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module whose calls the K-step objective counts (see the module docstring)."""
    out: dict[str, nn.Module] = {}
    if is_transformer(model):
        attention = [n for n, m in model.named_modules() if "Attention" in type(m).__name__]
        for name, m in model.named_modules():
            inside = any(name.startswith(a + ".") for a in attention)
            if name in attention or isinstance(m, nn.GELU) or (isinstance(m, nn.Linear) and not inside):
                out[name] = m
        return out
    for name, m in model.named_modules():
        parts = name.split(".")
        if "downsample" in parts or "shortcut" in parts:
            continue
        if isinstance(m, (nn.Conv2d, nn.ReLU, nn.ReLU6)):
            out[name] = m
    return out


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def run_window(blocks: list[nn.Module], x: torch.Tensor, modules: list[nn.Module],
               ordinals: list[int]) -> list[torch.Tensor]:
    """Run ``blocks`` on ``x``, numbering the calls of ``modules`` (0, 1, ...) in the order they finish, and
    return the outputs of the calls numbered ``ordinals``; the forward stops after the last of them."""
    wanted = set(ordinals)
    last = max(ordinals)
    count = [0]
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        k = count[0]
        count[0] += 1
        if k in wanted:
            captured.append(_first(output))
        if k >= last:
            raise StopForward

    handles = [m.register_forward_hook(hook) for m in dict.fromkeys(modules)]
    try:
        for block in blocks:
            x = block(x)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def call_order(blocks: list[nn.Module], x: torch.Tensor, modules: list[nn.Module]) -> list[tuple[int, nn.Module]]:
    """(block index, module) of every call of ``modules`` in order of completion, over a whole pass."""
    calls: list[tuple[int, nn.Module]] = []
    where = [0]
    handles = [m.register_forward_hook(lambda mod, i, o: calls.append((where[0], mod))) for m in dict.fromkeys(modules)]
    try:
        with torch.no_grad():
            for bi, block in enumerate(blocks):
                where[0] = bi
                x = block(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def capture_input(blocks: list[nn.Module], x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The input of the first call of ``module`` when ``blocks`` run on ``x`` (the rest is not computed)."""
    box: list[torch.Tensor] = []

    def pre(_m, args, kwargs=None):
        box.append(args[0] if args else next(iter(kwargs.values())))
        raise StopForward

    handle = module.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for block in blocks:
                x = block(x)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"{type(module).__name__} was not called by its block")
    return box[0]


def supports_least_squares(module: nn.Module, attr: str) -> bool:
    """Layers whose output is (input rows) @ weightᵀ: linear layers and ungrouped 2-d convs (zero padding)."""
    if attr != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def layer_rows(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """(rows, d): the vectors the layer's weight (flattened to (out, d)) multiplies."""
    if isinstance(module, nn.Linear):
        return inp.reshape(-1, module.in_features)
    cols = F.unfold(inp, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
