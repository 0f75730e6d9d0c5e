"""The CIFAR Wide ResNet of the RigL reference (google-research/rigl at d39fc7d, ``rigl/cifar_resnet/resnet_model.py``
``WideResNetModel``), the network of RigL's CIFAR-10 rows (WRN-22-2).

Pre-activation: a 3x3 conv of 16 filters, then three groups of (depth - 4) / 6 blocks of 16·width, 32·width and
64·width filters (the first block of groups 2 and 3 strides 2). A block computes BN-ReLU, then conv3x3 (its stride),
BN-ReLU, dropout (0.3 in the reference), conv3x3, plus the skip: the block's input, or a 1x1 conv (its stride) of
the pre-activated input where the number of filters changes. Then BN-ReLU, global average pooling and a linear
classifier ``fc``. Convolutions have no bias. BatchNorm epsilon 1e-5 and momentum 0.1 (TF's decay 0.9).
"""
from __future__ import annotations

import torch
from torch import nn


class WideBlock(nn.Module):
    def __init__(self, f_in: int, f_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(f_in)
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False) if f_in != f_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.dropout(torch.relu(self.bn2(out)))
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int = 22, width: int = 2, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if width < 1:
            raise ValueError(f"Wide ResNet width must be >= 1, got {width}")
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        layers, f_in = [], 16
        for group, f_out in enumerate((16 * width, 32 * width, 64 * width)):
            for b in range(blocks):
                layers.append(WideBlock(f_in, f_out, 2 if group > 0 and b == 0 else 1, dropout))
                f_in = f_out
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(f_in)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
