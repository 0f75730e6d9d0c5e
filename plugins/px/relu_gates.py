"""Record and replace ReLU gates without patching torch.nn.functional.

A scoped ``TorchFunctionMode`` sees every ReLU however it is called — ``nn.ReLU``, ``F.relu``,
``torch.relu``, ``Tensor.relu`` (and their in-place forms) — and LeakyReLU, which PX's official code gates the
same way. Forward hooks keep the name of the module being run, so an activation PX cannot gate (GELU, SiLU,
sigmoid, ...) is reported with the module that calls it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from bench_harness import BenchError

GATED = {"relu", "leaky_relu"}
UNSUPPORTED = {"gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "softplus", "mish", "hardswish",
               "hardsigmoid", "relu6", "hardtanh", "prelu", "glu", "softsign", "logsigmoid", "rrelu", "tanhshrink",
               "softshrink", "hardshrink", "threshold"}


class UnsupportedActivation(BenchError):
    pass


def _base_name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class _ModuleTracker:
    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            label = f"{name or '(model)'} ({type(module).__name__})"
            self.handles.append(module.register_forward_pre_hook(self._enter(label)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, label: str):
        def hook(module, args):
            self.stack.append(label)  # returns None: the input is left alone
        return hook

    def _leave(self, module, args, output):
        if self.stack:
            self.stack.pop()  # returns None: the output is left alone

    def current(self) -> str:
        return self.stack[-1] if self.stack else "(model)"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _GateMode(TorchFunctionMode):
    def __init__(self, action: str, gates: list[torch.Tensor], tracker: _ModuleTracker) -> None:
        super().__init__()
        self.action, self.gates, self.tracker, self.cursor = action, gates, tracker, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _base_name(func)
        if name in GATED:
            x = args[0]
            if self.action == "observe":  # only note which gated functions run
                self.gates.append(name)
                return func(*args, **kwargs)
            if self.action == "record":
                self.gates.append(x.detach() > 0)
                return func(*args, **kwargs)
            if self.action == "apply":
                if self.cursor >= len(self.gates):
                    raise BenchError(f"the network called more ReLUs than were recorded (at {self.tracker.current()}); "
                                     f"its control flow must not depend on the weights or the input")
                gate = self.gates[self.cursor]
                self.cursor += 1
                return x * gate.to(x.dtype)
            return x  # "identity": ReLU removed
        if name in UNSUPPORTED:
            raise UnsupportedActivation(
                f"module {self.tracker.current()} applies {name}, which PX cannot gate: PX decomposes a network "
                f"into paths through ReLU gates and is defined for ReLU (and LeakyReLU) networks only")
        return func(*args, **kwargs)


class _NoTracker:
    def current(self) -> str:
        return "(a module; run once with tracking to name it)"

    def remove(self) -> None:
        pass


@contextmanager
def relu_gates(model: nn.Module, action: str, gates: list[torch.Tensor], track: bool = True) -> Iterator[_GateMode]:
    """Within the block, forward passes of ``model`` record gates into ``gates`` (action "record"), multiply by
    the recorded gates in call order ("apply"), drop ReLUs ("identity"), or run unchanged while appending the
    name of each gated function called ("observe").

    ``track`` keeps the name of the running module for error messages; a caller that already ran the same
    network once with tracking may switch it off (it costs two hooks per module per forward pass)."""
    if action not in ("record", "apply", "identity", "observe"):
        raise ValueError(action)
    tracker = _ModuleTracker(model) if track else _NoTracker()
    mode = _GateMode(action, gates, tracker)
    try:
        with mode:
            yield mode
    finally:
        tracker.remove()
