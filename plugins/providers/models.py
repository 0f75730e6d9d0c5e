"""Built-in model plugin: CIFAR ResNets and VGGs, Conv-n, LeNet-5, MLP, and any torchvision or timm model."""
from __future__ import annotations

from functools import partial

from torch import nn

from bench_harness import ModelSpec, hookimpl
from bench_harness_plugins.providers.archs.cifar_resnet import CifarResNet
from bench_harness_plugins.providers.archs.small import MLP, VGG, ConvN, LeNet5
from bench_harness_plugins.providers.archs.wide_resnet import WideResNet


def _resnet(depth, num_classes, in_channels, image_size, width: int = 16):
    return CifarResNet(depth, num_classes, in_channels, width)


def _wide_resnet(num_classes, in_channels, image_size, depth: int = 22, width: int = 2, dropout: float = 0.3):
    return WideResNet(depth, width, num_classes, in_channels, dropout)


def _vgg(depth, num_classes, in_channels, image_size):
    return VGG(depth, num_classes, in_channels)


def _conv(depth, num_classes, in_channels, image_size):
    return ConvN(depth, num_classes, in_channels, image_size)


def _lenet5(num_classes, in_channels, image_size):
    return LeNet5(num_classes, in_channels, image_size)


def _mlp(num_classes, in_channels, image_size, hidden=(300, 100)):
    return MLP(num_classes, in_channels, image_size, tuple(hidden))


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None or last.out_features == num_classes:
        return
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes, bias=last.bias is not None))


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups, module.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def _torchvision(arch, num_classes, in_channels, image_size, weights=None, **kw):
    """torchvision.models by name; other parameters go to the model's constructor (e.g. ``dropout``). Vision
    transformers are built for the data set's image size. Pretrained weights: use the model entry's
    ``weights:`` (resolved offline by the core); ``weights`` here downloads them through torchvision."""
    import inspect

    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as exc:
        raise ValueError(f"torchvision has no model {arch!r} ({exc}); see torchvision.models.list_models()") from None
    accepts = inspect.signature(builder).parameters
    takes_image_size = "image_size" in accepts or arch.startswith(("vit_", "swin_", "maxvit"))
    if takes_image_size and arch.startswith("vit_"):
        kw.setdefault("image_size", image_size)
    try:
        if weights is None:
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kw)
        else:
            model = torchvision.models.get_model(arch, weights=weights, **kw)
            _replace_last_linear(model, num_classes)
    except ValueError as exc:
        raise ValueError(f"torchvision has no model {arch!r} ({exc}); see torchvision.models.list_models()") from None
    _replace_first_conv(model, in_channels)
    return model


def _timm(arch, num_classes, in_channels, image_size, pretrained=False, **kw):
    """timm.create_model by name, with num_classes and in_chans (and img_size where the model takes it)."""
    import timm

    if not timm.is_model(arch):  # accepts pretrained tags too: resnet18.a1_in1k
        raise ValueError(f"timm has no model {arch!r}; see timm.list_models() "
                         "(tags: timm.list_models(pretrained=True))")
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                 img_size=image_size, **kw)
    except TypeError:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kw)


@hookimpl
def bench_register_models():
    specs = [ModelSpec(f"resnet{d}", partial(_resnet, d), f"CIFAR ResNet-{d} (16/32/64 filters, 1x1 conv+BN "
                                                            f"shortcuts)", display_name=f"ResNet-{d}")
             for d in (20, 32, 44, 56, 110)]
    specs += [ModelSpec(f"vgg{d}_bn", partial(_vgg, d), f"CIFAR VGG-{d} with BatchNorm",
                        display_name=f"VGG-{d} (BN)") for d in (11, 13, 16, 19)]
    specs += [ModelSpec(f"conv{d}", partial(_conv, d), f"Conv-{d} (Frankle & Carbin 2019)", display_name=f"Conv-{d}")
              for d in (2, 4, 6)]
    specs += [
        ModelSpec("lenet5", _lenet5, "LeNet-5", display_name="LeNet-5"),
        ModelSpec("wide_resnet", _wide_resnet, "CIFAR Wide ResNet of the RigL reference (pre-activation; depth 6n+4, "
                  "width, dropout 0.3); default WRN-22-2", display_name="WRN"),
        ModelSpec("mlp", _mlp, "fully connected network, hidden=(300, 100) by default", display_name="MLP"),
        ModelSpec("torchvision", _torchvision, "any torchvision model: torchvision:<arch>", prefix=True),
        ModelSpec("timm", _timm, "any timm model: timm:<arch>", prefix=True),
    ]
    return specs
