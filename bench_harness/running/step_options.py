"""Precision, memory layout and compilation of a training step (``recipe.precision``, ``channels_last``,
``compile``; see docs/gpu.md), resolved once per training from the recipe and the device.

- ``precision``: ``fp32``; ``bf16``: autocast to bfloat16, no loss scaling (bf16 has fp32's range), on CUDA and
  on the CPU; ``fp16``: autocast to float16 with a GradScaler, on CUDA only (ignored on the CPU, as
  ``mixed_precision`` always was: the run trains in fp32). ``None`` (the default): ``fp16`` when
  ``mixed_precision`` is true, else ``fp32``.
- ``channels_last``: the model's 4-d weights and the input batches in channels-last layout (faster convolutions
  with tensor cores); the values are the same.
- ``compile``: the model's forward (and so its backward) through ``torch.compile``; the first steps compile.
  A training with its own loss function (``Trainer.fit(loss=...)``) is not compiled: such a loss may look the
  model's parameters up by name, which a compiled wrapper renames.

What a training applied is recorded in the run's row: ``precision``, ``channels_last``, ``compiled``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COMPILE_BACKEND = "inductor"  # torch.compile's backend (tests use "aot_eager": no C++ toolchain, seconds)
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class StepOptions:
    precision: str  # what is applied: fp32 | fp16 | bf16
    channels_last: bool
    compile: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def scaled(self) -> bool:
        """Loss scaling (a GradScaler): fp16 only."""
        return self.precision == "fp16"

    def autocast(self, device: torch.device):
        dtype = self.autocast_dtype
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def columns(self) -> dict[str, object]:
        """The row columns saying what was applied."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compiled": self.compile}


def step_options(recipe, device: torch.device) -> StepOptions:
    """What the recipe asks for, as applied on ``device``."""
    precision = getattr(recipe, "precision", None) or ("fp16" if recipe.mixed_precision else "fp32")
    if precision == "fp16" and device.type != "cuda":
        precision = "fp32"  # as mixed_precision always was: ignored off CUDA
    return StepOptions(precision, bool(getattr(recipe, "channels_last", False)),
                       bool(getattr(recipe, "compile", False)))


def prepare_model(model: nn.Module, options: StepOptions, custom_loss: bool = False) -> nn.Module:
    """Put the model in the options' layout (in place: its parameters stay the same objects) and return what the
    training step calls: the model, or its compiled wrapper."""
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.compile and not custom_loss:
        return torch.compile(model, backend=COMPILE_BACKEND)
    return model


def prepare_input(x: torch.Tensor, device: torch.device, options: StepOptions) -> torch.Tensor:
    """A batch on the device, in the options' layout."""
    x = x.to(device, non_blocking=True)
    if options.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
