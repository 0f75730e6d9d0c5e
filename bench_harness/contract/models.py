"""The model provider contract (registered by plugins through ``bench_register_models``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from bench_harness.contract.specs import ModelSpec


def build_model(spec: ModelSpec, name: str, num_classes: int, in_channels: int, image_size: int,
                params: dict[str, Any] | None = None) -> nn.Module:
    # the data set gives num_classes, in_channels and image_size; a model parameter of the same name overrides it
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, **(params or {})}
    if spec.prefix:
        if ":" not in name:
            raise ValueError(f"model {name!r} needs an architecture: write '{spec.name}:<arch>', "
                             f"e.g. '{spec.name}:resnet18'")
        kwargs["arch"] = name.split(":", 1)[1]
    return spec.build(**kwargs)
