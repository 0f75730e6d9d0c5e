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


def test_the_wide_resnet_is_the_rigl_reference_layout():
    """WRN-22-2 as RigL's WideResNetModel builds it: a 16-filter stem, 3 groups of 3 pre-activation blocks of
    32/64/128 filters, a 1x1 shortcut where the filters change (the first block of each group), 22 - 4 + 3 = 21
    convolutions and the classifier; 32x32 -> 8x8 before pooling."""
    model = build_model(get_registry().get("model", "wide_resnet"), "wide_resnet", 10, 3, 32, {})
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 9 * 2 + 3 and [n for n in convs if "shortcut" in n] == [
        "blocks.0.shortcut", "blocks.3.shortcut", "blocks.6.shortcut"]
    assert [model.blocks[i].conv2.out_channels for i in (0, 3, 6)] == [32, 64, 128]
    assert model.blocks[3].conv1.stride == (2, 2) and model.blocks[6].conv1.stride == (2, 2)
    # 3x3 convs: 16*3*9 + group 1: 16*32*9 + 32*32*9*5 + 16*32 ... counted by torch, checked against the formula
    expected = 3 * 16 * 9 + sum(f_in * f_out * 9 + f_out * f_out * 9 + (f_in * f_out if f_in != f_out else 0)
                                for f_in, f_out in [(16, 32), (32, 32), (32, 32), (32, 64), (64, 64), (64, 64),
                                                    (64, 128), (128, 128), (128, 128)]) + 128 * 10
    assert sum(p.numel() for p in prunable_parameters(model).values()) == expected
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model(get_registry().get("model", "wide_resnet"), "wide_resnet", 10, 3, 32, {"depth": 20})
