"""The tiny model and batches the training-service tests share (3x8x8 inputs, 4 classes)."""
from __future__ import annotations

import torch
from torch import nn


def batches(n: int = 4, seed: int = 0, classes: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 16 random 3x8x8 inputs and labels, the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, classes, (16,), generator=g)) for _ in range(n)]


def mlp(seed: int = 0) -> nn.Sequential:
    """Flatten, Linear(192, 32), ReLU, Linear(32, 4), initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 4))
