"""Small files in each real on-disk format, read through the real loaders."""
import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from bench_harness.contract.datasets import concrete_spec, first_per_class
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.specs import DatasetNotFound


def _spec(name):
    return get_registry().get("dataset", name)


def _write_cifar(root, classes=10, n_train=20, n_test=10):
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"

    counter = iter(range(10**6))

    def batch(n):
        return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                key: [next(counter) % classes for _ in range(n)],
                b"filenames": [b"x.png"] * n}

    if classes == 10:
        for i in range(1, 6):
            pickle.dump(batch(n_train // 5), open(folder / f"data_batch_{i}", "wb"))
        pickle.dump(batch(n_test), open(folder / "test_batch", "wb"))
        pickle.dump({b"label_names": [str(i).encode() for i in range(10)]}, open(folder / "batches.meta", "wb"))
    else:
        pickle.dump(batch(n_train), open(folder / "train", "wb"))
        pickle.dump(batch(n_test), open(folder / "test", "wb"))
        pickle.dump({b"fine_label_names": [str(i).encode() for i in range(100)]}, open(folder / "meta", "wb"))


def _write_idx(folder, prefix, n, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    images = struct.pack(">IIII", 2051, n, 28, 28) + bytes((i * 7) % 256 for i in range(n * 784))
    labels = struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))
    for name, data in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as fh:
                fh.write(data)
        else:
            (folder / name).write_bytes(data)


def _write_images(folder, n, size=8):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), i * 20, dtype=np.uint8)).save(folder / f"img{i}.JPEG")


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_real_format(tmp_path, classes):
    _write_cifar(tmp_path, classes)
    spec = _spec(f"cifar{classes}")
    train = spec.load(root=tmp_path, split="train", augment=True)
    test = spec.load(root=tmp_path, split="test", augment=False)
    assert len(train) == 20 and len(test) == 10
    x, y = train[13]
    assert x.shape == (3, 32, 32) and y == 13 % classes
    subset = first_per_class(train, 1, classes)
    assert len(subset) == min(classes, 20)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_real_format(tmp_path, monkeypatch, name, folder):
    import bench_harness_plugins.providers.datasets as ds

    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    _write_idx(tmp_path / folder / "raw", "train", 30)
    _write_idx(tmp_path / folder / "raw", "t10k", 10)
    spec = _spec(name)
    train = spec.load(root=tmp_path, split="train", augment=False)
    x, y = train[13]
    assert len(train) == 30 and x.shape == (1, 28, 28) and int(y) == 3
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 5


def test_fashion_mnist_from_debian_package_layout(tmp_path, monkeypatch):
    import bench_harness_plugins.providers.datasets as ds

    debian = tmp_path / "debian"
    _write_idx(debian, "train", 20, gz=True)
    _write_idx(debian, "t10k", 10, gz=True)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", debian)
    test = _spec("fashion_mnist").load(root=tmp_path / "data", split="test", augment=False)
    assert len(test) == 10
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


def test_missing_data_says_where_and_how(tmp_path, monkeypatch):
    import bench_harness_plugins.providers.datasets as ds

    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFound, match="cifar-10-batches-py.*download: true"):
        _spec("cifar10").load(root=tmp_path, split="train", augment=False)
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        _spec("fashion_mnist").load(root=tmp_path, split="train", augment=False)
    with pytest.raises(DatasetNotFound, match="ImageFolder"):
        _spec("imagenet").load(root=tmp_path, split="train", augment=False)


def test_tiny_imagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01", "n02"):
        _write_images(base / "train" / wnid / "images", 3)
    _write_images(base / "val" / "images", 2)
    (base / "val" / "val_annotations.txt").write_text("img0.JPEG\tn02\t0\t0\t8\t8\nimg1.JPEG\tn01\t0\t0\t8\t8\n")
    spec = _spec("tiny_imagenet")
    train = spec.load(root=tmp_path, split="train", augment=True)
    val = spec.load(root=tmp_path, split="test", augment=False)
    assert len(train) == 6 and len(val) == 2
    assert val.targets == [1, 0]
    assert val[0][0].shape == (3, 8, 8)


def test_imagefolder_resolves_its_classes(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog", "eel"):
            _write_images(tmp_path / "pets" / split / c, 2)
    spec = concrete_spec(_spec("imagefolder"), "data", {"path": str(tmp_path / "pets"), "image_size": 16})
    assert spec.num_classes == 3
    train = spec.load(root="data", split="train", augment=True, path=str(tmp_path / "pets"), image_size=16)
    assert len(train) == 6 and train[0][0].shape == (3, 16, 16)


def test_synthetic_is_deterministic():
    spec = concrete_spec(_spec("synthetic"), "data", {"num_classes": 3, "image_size": 8})
    a = spec.load(root="data", split="train", augment=False)
    b = spec.load(root="data", split="train", augment=False)
    assert spec.num_classes == 3 and torch.equal(a.tensors[0], b.tensors[0]) and a[0][0].shape == (3, 8, 8)


def test_first_per_class_takes_the_first_k_grouped_by_class():
    from torch.utils.data import TensorDataset

    labels = torch.tensor([2, 0, 0, 1, 2, 1, 0])
    ds = TensorDataset(torch.arange(7), labels)
    # classes in order of first appearance (2, 0, 1), each with its first k examples in data set order
    assert first_per_class(ds, 2, 3).indices == [0, 4, 1, 2, 3, 5]
    assert first_per_class(ds, 1, 3).indices == [0, 1, 3]


def test_mnist_format_values_batches_and_bad_files(tmp_path, monkeypatch):
    import bench_harness_plugins.providers.datasets as ds

    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_idx(raw, "train", 30, gz=True)  # gzipped files are read as they are
    _write_idx(raw, "t10k", 10)
    train = _spec("fashion_mnist").load(root=tmp_path, split="train", augment=False)
    x, _ = train[2]
    pixel = (2 * 784 + 5) * 7 % 256  # image 2, row 0, column 5
    expected = (torch.tensor(pixel, dtype=torch.float32) / 255.0 - ds.FASHION_MEAN[0]) / ds.FASHION_STD[0]
    assert torch.equal(x[0, 0, 5], expected)
    batch = train.__getitems__([4, 2, 29])  # what the DataLoader asks for: a whole batch at once
    for (bx, by), i in zip(batch, [4, 2, 29]):
        ix, iy = train[i]
        assert torch.equal(bx, ix) and int(by) == int(iy) == i % 10
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated IDX file"):
        _spec("fashion_mnist").load(root=tmp_path, split="test", augment=False)


def test_a_process_loads_each_data_set_once(tmp_path, monkeypatch):
    from bench_harness.contract import datasets as core

    calls = []
    spec = _spec("synthetic")
    counting = dataclasses.replace(spec, load=lambda **kw: calls.append(kw) or spec.load(**kw))
    monkeypatch.setattr(core, "_LOADED", type(core._LOADED)())
    a = core.load_split(counting, "train", False, root=str(tmp_path), num_classes=3)
    b = core.load_split(counting, "train", False, root=str(tmp_path), num_classes=3)
    c = core.load_split(counting, "test", False, root=str(tmp_path), num_classes=3)
    assert a is b and c is not a and len(calls) == 2
    for i in range(core.LOADED_KEEP):  # older data sets are dropped beyond LOADED_KEEP
        core.load_split(counting, "train", False, root=str(tmp_path), num_classes=4 + i)
    core.load_split(counting, "train", False, root=str(tmp_path), num_classes=3)
    assert len(calls) == 2 + core.LOADED_KEEP + 1
