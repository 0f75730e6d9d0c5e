"""AutoSparse's predictors: (θ₀, g₀) of one weight -> its predicted survival score.

Every predictor takes a float tensor of shape (N, 2) — column 0 the initial weight, column 1 its initial
gradient, raw scale — and returns (N, 1).

- ``resnet18``: the official architecture (``autos_model/autosnet.py: ResNet18``): a lift MLP
  Linear(2, 64)-BN-ReLU-Linear(64, 3072)-BN-ReLU whose output is read as a 3×32×32 image, into a CIFAR-style
  ResNet-18 (3×3 stem, no max-pool, BasicBlocks [2, 2, 2, 2], widths 64-512) with one output. GPU-sized: one
  forward per weight costs about what a CIFAR image does.
- ``mlp``: the official fully connected variant (``autosnet.py: MLP``, ``prediction_model: fc``):
  2-16-64-1024-1024-64-1 with BatchNorm and ReLU, Kaiming-normal (fan-in) linear weights.
- ``small_mlp``: a small MLP for CPU runs, 2-64-64-1 with BatchNorm and ReLU (not in the official code).

:class:`ResNet18Cifar` is also registered as the model ``resnet18_cifar`` (the official code's CIFAR ResNet-18,
``models/tinyimagenet_resnet.py``), the teacher and pruned model of the paper's setting.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("resnet18", "mlp", "small_mlp")


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 for 32×32 inputs as the official code builds it: 3×3 stem conv (stride 1) without max-pool,
    BasicBlock stages [2, 2, 2, 2] of widths 64·(1, 2, 4, 8), global average pool, linear classifier; convs
    Kaiming-normal (fan-out), BatchNorm weight 1 and bias 0."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, channels = [], width
        for i, blocks in enumerate((2, 2, 2, 2)):
            out = width * 2 ** i
            for b in range(blocks):
                layers.append(BasicBlock(channels, out, stride=2 if (i and not b) else 1))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class LiftedResNet18(nn.Module):
    """The official predictor: (θ₀, g₀) lifted to a 3×32×32 image by an MLP, regressed by a ResNet-18."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 64 * 16 * 3), nn.BatchNorm1d(64 * 16 * 3), nn.ReLU())
        self.resnet18 = ResNet18Cifar(num_classes=1)

    def forward(self, x):
        return self.resnet18(self.mlp(x).reshape(-1, 3, 32, 32))


def _mlp(widths: tuple[int, ...], kaiming: bool, double_relu_after: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-2], widths[1:-1])):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        if double_relu_after == i:
            layers.append(nn.ReLU())  # the official MLP has two ReLUs in a row here (harmless, kept)
    layers.append(nn.Linear(widths[-2], widths[-1]))
    if kaiming:
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    return nn.Sequential(*layers)


class MLPPredictor(nn.Module):
    def __init__(self, widths: tuple[int, ...], kaiming: bool = False, double_relu_after: int | None = None):
        super().__init__()
        self.model = _mlp(widths, kaiming, double_relu_after)

    def forward(self, x):
        return self.model(x)


def build_predictor(architecture: str) -> nn.Module:
    """A freshly initialised predictor (draws from torch's global RNG: seed it, or fork it, before)."""
    if architecture == "resnet18":
        return LiftedResNet18()
    if architecture == "mlp":
        return MLPPredictor((2, 16, 64, 1024, 1024, 64, 1), kaiming=True, double_relu_after=2)
    if architecture == "small_mlp":
        return MLPPredictor((2, 64, 64, 1))
    raise ValueError(f"unknown predictor architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")


@torch.no_grad()
def predict(predictor: nn.Module, theta: torch.Tensor, grad: torch.Tensor, chunk: int = 8192,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Predicted scores of the weights (θ₀, g₀), any shape, computed ``chunk`` weights at a time in eval mode;
    returned on the CPU with the shape of ``theta``."""
    predictor.eval()
    features = torch.stack([theta.detach().reshape(-1).float(), grad.detach().reshape(-1).float()], dim=1)
    out = [predictor(features[i:i + chunk].to(device)).reshape(-1).float().cpu()
           for i in range(0, features.shape[0], chunk)]
    return (torch.cat(out) if out else torch.empty(0)).view(theta.shape)
