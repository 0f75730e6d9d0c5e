"""The CIFAR ResNet-18 of the strong-lottery-ticket literature (registered as the model ``cifar_resnet18``).

The ResNet-18 that Edge-Popup and the partially frozen SLT paper (Otsuka et al., TMLR 2025) train on CIFAR: the
layout of kuangliu/pytorch-cifar — a 3x3 stem of 64 filters without max-pool, four stages of two basic blocks
(64, 128, 256, 512 filters; strides 1, 2, 2, 2), 1x1 conv + BN projection shortcuts where the shape changes, a
4x4 average pool and one linear classifier. No biases in convolutions or the classifier, as in those papers.
The weights (conv, linear) are listed in the same order as the official code's layers, so per-layer frozen
counts compare position by position. BatchNorms are affine here (as every harness model); ``slt_frozen``
fixes them at weight 1 / bias 0, which computes exactly what a non-affine BatchNorm computes.

Not the same model as ``resnet18_cifar`` (AutoSparse's, in autosparse/predictor.py), though both follow the same
layout: that one has a classifier bias, fan-out Kaiming init and its blocks in one ``layers`` sequence, as its own
official code; each reproduces its paper's network, so they stay two registered models.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from bench_harness_plugins.providers.archs.cifar_resnet import BasicBlock


class CifarResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, f_in = [], width
        for i, f_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(f_in, f_out, stride), BasicBlock(f_out, f_out, 1)))
            f_in = f_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(f_in, num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 4) at 32x32 inputs
        return self.fc(out)


def build_cifar_resnet18(num_classes, in_channels, image_size, width: int = 64):
    return CifarResNet18(num_classes, in_channels, width)
