import pytest
import torch

from bench_harness.contract.masking import prunable_parameters
from bench_harness.contract.models import build_model
from bench_harness.contract.plugins import get_registry


def _build(name, classes=10, channels=3, size=32, **params):
    return build_model(get_registry().get("model", name), name, classes, channels, size, params)


@pytest.mark.parametrize("name, params_count", [("resnet20", 272_474), ("resnet32", 466_906), ("resnet56", 855_770)])
def test_cifar_resnets_match_the_literature(name, params_count):
    model = _build(name)
    assert sum(p.numel() for p in model.parameters()) == params_count
    names = list(prunable_parameters(model))
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight"
    shortcuts = [n for n in names if "shortcut" in n]
    assert shortcuts == ["layers.3.shortcut.0.weight", "layers.6.shortcut.0.weight"] if name == "resnet20" else \
        len(shortcuts) == 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, classes, channels, size", [
    ("vgg11_bn", 10, 3, 32), ("vgg16_bn", 100, 3, 32), ("vgg19_bn", 10, 3, 32), ("conv2", 10, 3, 32),
    ("conv4", 10, 1, 28), ("conv6", 10, 3, 32), ("lenet5", 10, 1, 28), ("lenet5", 10, 3, 32), ("mlp", 10, 1, 28),
    ("torchvision:resnet18", 10, 1, 32), ("timm:resnet18", 7, 3, 32),
])
def test_models_build_with_classes_channels_and_size(name, classes, channels, size):
    model = _build(name, classes, channels, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


def test_vgg16_bn_has_13_convs_with_bn():
    model = _build("vgg16_bn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 13 and len(bns) == 13


def test_unknown_torchvision_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="torchvision has no model 'resnet9000'"):
        _build("torchvision:resnet9000")
    with pytest.raises(ValueError, match="write 'torchvision:<arch>'"):
        _build("torchvision")
