"""Built-in data set plugin: CIFAR-10/100, MNIST, Fashion-MNIST, Tiny-ImageNet, ImageNet, any ImageFolder, and
a synthetic set. Files are read from ``<data_root>``; nothing is downloaded unless the suite says
``download: true``. A missing data set raises DatasetNotFound saying where the files are expected. Downloading,
unpacking and converting go through ``prepare_once``: locked per data set folder and atomic, so runners that
start together on a fresh data root prepare it once and all find it complete."""
from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from bench_harness import DatasetNotFound, DatasetSpec, hookimpl, prepare_once

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
# Debian's dataset-fashion-mnist package installs the four IDX .gz files here.
DEBIAN_FASHION_MNIST = Path(os.environ.get("BENCH_HARNESS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def _transforms(train: bool, augment: bool, size: int, mean, std, crop_padding: int | None = 4):
    from torchvision import transforms as T

    steps = []
    if train and augment:
        if crop_padding is not None:
            steps.append(T.RandomCrop(size, padding=crop_padding))
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _missing(name: str, expected: Path, how: str) -> DatasetNotFound:
    return DatasetNotFound(f"data set {name!r} not found: expected its files under {expected}. {how} "
                           f"(or set `data_root:` in the suite to where they are).")


# -- CIFAR ---------------------------------------------------------------------------------------------------
class CifarFiles(Dataset):
    """CIFAR-10/100 read from the official "python version" pickles (no checksum: any file in the format works)."""

    def __init__(self, folder: Path, files: list[str], label_key: bytes, transform, form=None) -> None:
        import pickle

        import numpy as np

        data, targets = [], []
        for name in files:
            with open(folder / name, "rb") as fh:
                entry = pickle.load(fh, encoding="bytes")
            data.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets.extend(int(t) for t in entry[label_key])
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # N, H, W, C
        self.targets = targets
        self.transform = transform
        self.form = form or {}  # normalisation and augmentation of the transform, for tensor_form()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]

    def tensor_form(self) -> dict:
        """The data set as uint8 tensors with what the transform does (data on the device: docs/gpu.md)."""
        images = torch.from_numpy(self.data).permute(0, 3, 1, 2)
        return {"images": images, "targets": torch.tensor(self.targets), **self.form}


def _cifar(classes: int, root, split, augment, download=False):
    folder_name = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    folder = Path(root) / folder_name
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    if not folder.is_dir():
        if not download:
            raise _missing(f"cifar{classes}", folder,
                           "Get the python version from https://www.cs.toronto.edu/~kriz/cifar.html and unpack "
                           "it there, or set `download: true` in the suite")
        from torchvision.datasets import CIFAR10, CIFAR100

        def fetch(scratch: Path) -> None:  # downloads the archive and unpacks it into scratch/<folder_name>
            (CIFAR10 if classes == 10 else CIFAR100)(str(scratch), train=True, download=True)

        prepare_once(root, folder_name, folder.is_dir, fetch)
    if classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        files, key = ["train" if split == "train" else "test"], b"fine_labels"
    augmented = split == "train" and augment
    form = {"mean": mean, "std": std, "crop_padding": 4 if augmented else None, "flip": augmented}
    return CifarFiles(folder, files, key, _transforms(split == "train", augment, 32, mean, std), form)


# -- MNIST family --------------------------------------------------------------------------------------------
def _debian_fashion_files() -> list[Path]:
    """The four IDX .gz files of Debian's dataset-fashion-mnist package, or [] where it is not installed."""
    files = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")) if DEBIAN_FASHION_MNIST.is_dir() else []
    return files if len(files) >= 4 else []


def _gunzip_debian_fashion(scratch: Path) -> None:
    """Unpack Debian's Fashion-MNIST files into ``scratch`` in torchvision's layout (FashionMNIST/raw/; torchvision
    does not follow symlinks). Run by prepare_once, which moves them into the data root."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in _debian_fashion_files():
        with gzip.open(f, "rb") as src, open(raw / f.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (the MNIST format: 0x00 0x00 0x08 ndim, big-endian int32 sizes, data), plain
    or .gz, as a uint8 tensor of those sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {bytes(data[:4]).hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}i", bytes(data[4:4 + 4 * ndim]))
    body = 4 + 4 * ndim
    if len(data) - body != math.prod(shape):
        raise ValueError(f"{path}: truncated IDX file ({len(data) - body} bytes of data for shape {shape}); "
                         f"delete it and fetch the data set again")
    return torch.frombuffer(data, dtype=torch.uint8, offset=body).reshape(shape)


class NormalizedImages(Dataset):
    """Grey-scale images kept as uint8 (a quarter of float32's memory), normalised per image when read:
    ``(x / 255 - mean) / std``, the same float32 operations as normalising the whole tensor at once."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: float, std: float) -> None:
        self.images, self.targets, self.mean, self.std = images, targets.long(), mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(0), self.targets[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in four tensor operations (the DataLoader calls this instead of one call per image)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[index].float().div_(255.0).sub_(self.mean).div_(self.std).unsqueeze(1)
        return list(zip(x, self.targets[index]))

    def tensor_form(self) -> dict:
        """The images as uint8 tensors and their normalisation (data on the device: docs/gpu.md)."""
        return {"images": self.images.unsqueeze(1), "targets": self.targets, "mean": (self.mean,), "std": (self.std,)}


def _idx_file(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _mnist_like(kind: str, root, split, augment, download=False):
    """MNIST-format IDX files (read directly; torchvision only downloads them), kept as uint8 tensors and
    normalised as batches are read (no augmentation)."""
    folder, mean, std = ("MNIST", MNIST_MEAN, MNIST_STD) if kind == "mnist" else ("FashionMNIST", FASHION_MEAN,
                                                                                    FASHION_STD)
    raw = Path(root) / folder / "raw"
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    def have() -> bool:
        return all(_idx_file(raw, n) for n in names)

    if not have() and kind == "fashion_mnist" and _debian_fashion_files():
        prepare_once(root, folder, have, _gunzip_debian_fashion)
    if not have() and download:
        from torchvision.datasets import MNIST, FashionMNIST

        def fetch(scratch: Path) -> None:  # downloads the four files into scratch/<folder>/raw
            (MNIST if kind == "mnist" else FashionMNIST)(str(scratch), train=split == "train", download=True)

        prepare_once(root, folder, have, fetch)
    if not have():
        how = ("On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (found automatically in "
               f"{DEBIAN_FASHION_MNIST}), or set `download: true` in the suite" if kind == "fashion_mnist"
               else "Put the four IDX files (train-images-idx3-ubyte, ...) there, or set `download: true`")
        raise _missing(kind, raw, how)
    images, labels = (read_idx(_idx_file(raw, n)) for n in names)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{raw}: {names[0]} {tuple(images.shape)} and {names[1]} {tuple(labels.shape)} do not "
                         f"form an image data set; delete them and fetch the data set again")
    return NormalizedImages(images, labels, mean[0], std[0])


# -- Tiny-ImageNet, ImageNet, ImageFolder ----------------------------------------------------------------------
class TinyImageNetVal(Dataset):
    """Tiny-ImageNet's val split: images in one folder, labels in val_annotations.txt."""

    def __init__(self, root: Path, class_to_idx: dict[str, int], transform) -> None:
        self.root, self.transform = root, transform
        self.samples = []
        with open(root / "val_annotations.txt") as fh:
            for line in fh:
                parts = line.strip().split("\t")
                if len(parts) >= 2:
                    self.samples.append((root / "images" / parts[0], class_to_idx[parts[1]]))
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        path, target = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), target


def _tiny_imagenet(root, split, augment, download=False):
    from torchvision.datasets import ImageFolder

    base = Path(root) / "tiny-imagenet-200"
    if not (base / "train").is_dir():
        raise _missing("tiny_imagenet", base, "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and "
                                              "unzip it in the data root")
    tf = _transforms(split == "train", augment, 64, IMAGENET_MEAN, IMAGENET_STD)
    train = ImageFolder(str(base / "train"), transform=tf)
    if split == "train":
        return train
    return TinyImageNetVal(base / "val", train.class_to_idx, tf)


def _imagenet_transforms(train: bool, augment: bool, size: int):
    from torchvision import transforms as T

    if train and augment:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _folder(base: Path, name: str, split: str, augment: bool, image_size: int, how: str):
    from torchvision.datasets import ImageFolder

    folder = base / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise _missing(name, folder, how)
    return ImageFolder(str(folder), transform=_imagenet_transforms(split == "train", augment, image_size))


def _imagenet(root, split, augment, download=False, image_size: int = 224):
    return _folder(Path(root) / "imagenet", "imagenet", split, augment, image_size,
                   "ImageNet cannot be downloaded automatically: place train/ and val/ in ImageFolder layout "
                   "(one folder per class) there")


def _imagefolder(root, split, augment, download=False, path: str = "", image_size: int = 224, **_):
    return _folder(Path(path), "imagefolder", split, augment, image_size,
                   "Give `params: {path: DIR}` where DIR has train/ and val/ with one subfolder per class")


def _resolve_imagefolder(root, path: str = "", image_size: int = 224, **_):
    train = Path(path) / "train"
    if not path or not train.is_dir():
        raise _missing("imagefolder", train, "Give `params: {path: DIR}` where DIR has train/ and val/ with one "
                                             "subfolder per class")
    classes = sum(1 for d in train.iterdir() if d.is_dir())
    return DatasetSpec("imagefolder", classes, 3, image_size, partial(_imagefolder, path=path, image_size=image_size),
                       "ImageFolder", IMAGENET_MEAN, IMAGENET_STD)


# -- synthetic -------------------------------------------------------------------------------------------------
def _synthetic(root, split, augment, download=False, num_classes: int = 10, image_size: int = 32,
               in_channels: int = 3, train_size: int = 512, test_size: int = 256, seed: int = 1234):
    """Gaussian images whose mean depends on the class (learnable), fixed by `seed`, identical on every call."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, in_channels, image_size, image_size, generator=g)
    n = train_size if split == "train" else test_size
    g_split = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g_split)]
    x = prototypes[labels] * 0.5 + torch.randn(n, in_channels, image_size, image_size, generator=g_split)
    out = TensorDataset(x, labels)
    out.targets = labels
    return out


def _resolve_synthetic(root, num_classes: int = 10, image_size: int = 32, in_channels: int = 3, **kw):
    load = partial(_synthetic, num_classes=num_classes, image_size=image_size, in_channels=in_channels, **kw)
    return DatasetSpec("synthetic", num_classes, in_channels, image_size, lambda **a: load(**{
        k: v for k, v in a.items() if k in ("root", "split", "augment", "download")}), "synthetic")


@hookimpl
def bench_register_datasets():
    return [
        DatasetSpec("cifar10", 10, 3, 32, partial(_cifar, 10), "CIFAR-10", CIFAR10_MEAN, CIFAR10_STD,
                    display_name="CIFAR-10"),
        DatasetSpec("cifar100", 100, 3, 32, partial(_cifar, 100), "CIFAR-100", CIFAR100_MEAN, CIFAR100_STD,
                    display_name="CIFAR-100"),
        DatasetSpec("mnist", 10, 1, 28, partial(_mnist_like, "mnist"), "MNIST", MNIST_MEAN, MNIST_STD,
                    display_name="MNIST"),
        DatasetSpec("fashion_mnist", 10, 1, 28, partial(_mnist_like, "fashion_mnist"), "Fashion-MNIST",
                    FASHION_MEAN, FASHION_STD, display_name="Fashion-MNIST"),
        DatasetSpec("tiny_imagenet", 200, 3, 64, _tiny_imagenet, "Tiny-ImageNet (64x64, 200 classes)",
                    IMAGENET_MEAN, IMAGENET_STD, display_name="Tiny-ImageNet"),
        DatasetSpec("imagenet", 1000, 3, 224, _imagenet, "ImageNet-1k in ImageFolder layout", IMAGENET_MEAN,
                    IMAGENET_STD, display_name="ImageNet-1k"),
        DatasetSpec("imagefolder", 0, 3, 224, _imagefolder, "any folder with train/ and val/ in ImageFolder layout",
                    IMAGENET_MEAN, IMAGENET_STD, resolve=_resolve_imagefolder, display_name="ImageFolder"),
        DatasetSpec("synthetic", 10, 3, 32, _synthetic, "synthetic Gaussian images (tests, smoke runs)",
                    resolve=_resolve_synthetic, display_name="synthetic"),
    ]
