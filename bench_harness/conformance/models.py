"""The kit's tiny models and data: an MLP, a conv net with BatchNorm and a residual net over 3×8×8 inputs of 4
classes, and two seeded batches of 16 random examples."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                                 nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)) + self.shortcut(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": _MLP, "conv_bn": _ConvBN, "residual": _Residual}
INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 4
BATCHES = 2
BATCH_SIZE = 16


def data(seed: int) -> Callable[[], object]:
    """A factory of iterators over the kit's batches (the same ones for the same seed)."""
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(BATCH_SIZE, *INPUT_SHAPE, generator=g),
                torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=g)) for _ in range(BATCHES)]
    return lambda: iter(batches)
