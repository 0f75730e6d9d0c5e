"""The provider contract: what model, data set and metric plugins register (``bench_register_models``,
``bench_register_datasets``, ``bench_register_metrics``; see :mod:`bench_harness.contract.hookspecs`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bench_harness.errors import BenchError


@dataclass(frozen=True)
class ModelSpec:
    """A model provider: ``build(num_classes=, in_channels=, image_size=, **params) -> torch.nn.Module``."""

    name: str
    build: Callable[..., Any]  # build(num_classes=, in_channels=, image_size=, **params)
    description: str = ""
    prefix: bool = False  # serves "<name>:<arch>" names; build then receives arch=<arch>
    display_name: str = ""  # how figures and tables write it ("LeNet-5", "ResNet-20"); "" = the name


class DatasetNotFound(BenchError, FileNotFoundError):
    """A data set's files are missing; the message says where they are expected and how to get them."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    load: Callable[..., Any]  # load(root=, split="train"|"test", augment=bool, download=bool, **params)
    description: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # For data sets whose shape depends on parameters (a folder, the synthetic set): resolve(root=, **params)
    # returns the concrete spec; its ``load`` then receives the same parameters.
    resolve: Callable[..., DatasetSpec] | None = None
    display_name: str = ""  # how figures and tables write it ("Fashion-MNIST", "CIFAR-10"); "" = the name


@dataclass(frozen=True)
class Metric:
    """A metric registered by a plugin: ``compute(model, masks, test_loader, device) -> float``."""

    name: str
    compute: Callable[..., float]
    description: str = ""
