"""Data on the device: a data set held as one tensor on the run's device, batches gathered, augmented and
normalised there with batched operations (``recipe.data_on_device``; see docs/gpu.md).

On a GPU the per-image torchvision transforms of a ``DataLoader`` cost more than a small network's step; fast
CIFAR codes (airbench, hlb-CIFAR10) keep the data set on the GPU as uint8 and augment whole batches. Here:

- A data set takes part when it has a *tensor form*: a ``TensorDataset`` (used as it is), or any data set with a
  ``tensor_form()`` method returning a dict ``images`` (N, C, H, W; uint8 scaled by 1/255, or float used as it
  is), ``targets`` (N), and optionally ``mean``/``std`` (per channel, applied after the scaling),
  ``crop_padding`` (random crop of the image size from the image zero-padded by this many pixels; None: no
  crop) and ``flip`` (random horizontal flip). The built-in CIFAR and MNIST-family data sets have one. A
  ``Subset`` of such a data set (``train_subset``) shares its parent's tensors. Others (image folders) keep the
  ``DataLoader``.
- The tensors are moved to the device once per process and data set (:func:`resident`), and shared by every run
  the process executes, packed runs included.
- :class:`DeviceLoader` draws its shuffling from its own seeded generator exactly as a ``DataLoader`` with that
  generator does (the same order of examples, and the generator left in the same state), so that without
  augmentation the batches equal the loader path's, and a checkpoint that saves ``loader.generator`` resumes it.
  Crop offsets and flips are drawn from the same generator at the start of each epoch, for the whole epoch on the
  CPU (one transfer per epoch, no synchronisation per step): uniform over the ``(2p+1)^2`` offsets and the two
  flips, and bit-identical for the same seed on every device.

``data_on_device: auto`` turns it on when the device is CUDA and the data fits ``FREE_MEMORY_FRACTION`` of the
device's free memory; ``true`` turns it on on any device (the CPU too: the batched augmentation alone is faster
than per-image transforms) and fails the run when the data set has no tensor form; ``false`` keeps the loader.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from bench_harness.errors import RunFailure

FREE_MEMORY_FRACTION = 0.25  # auto: the train and test data must fit this fraction of the device's free memory
RESIDENT_KEEP = 4  # data sets a process keeps on its devices for its next runs


@dataclass(frozen=True)
class ResidentData:
    """A data set on the device: images (N, C, H, W; uint8 or float), targets (N, int64), the per-channel
    normalisation (None: none) and the augmentation its training split asks for."""

    images: torch.Tensor
    targets: torch.Tensor
    mean: torch.Tensor | None  # (1, C, 1, 1) float32, on the device
    std: torch.Tensor | None
    crop_padding: int | None
    flip: bool

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.targets.numel() * 8


def tensor_form(dataset: Dataset) -> tuple[dict[str, Any], torch.Tensor | None] | None:
    """(the tensor form of the data set under any ``Subset``, the indices the subsets select or None), or None
    when the data set has no tensor form."""
    indices = None
    while isinstance(dataset, Subset):
        chosen = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = chosen if indices is None else chosen[indices]
        dataset = dataset.dataset
    method = getattr(dataset, "tensor_form", None)
    if callable(method):
        form = method()
    elif isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and dataset.tensors[0].dim() == 4:
        form = {"images": dataset.tensors[0], "targets": dataset.tensors[1]}
    else:
        return None
    return form, indices


def form_bytes(dataset: Dataset) -> int | None:
    """Bytes the data set's tensors take on the device (None: no tensor form)."""
    found = tensor_form(dataset)
    if found is None:
        return None
    images = found[0]["images"]
    return images.numel() * images.element_size() + len(images) * 8


_RESIDENT: OrderedDict[tuple[int, str], tuple[Any, ResidentData]] = OrderedDict()


def resident(dataset: Dataset, device: torch.device) -> tuple[ResidentData, torch.Tensor | None]:
    """The data set's tensors on ``device`` (moved once per process: the runs of a sweep, packed or not, share
    them) and the indices of its subset (on the device; None: all of it). Raises RunFailure without a tensor
    form."""
    found = tensor_form(dataset)
    if found is None:
        raise RunFailure(f"data_on_device: true, but the data set {type(dataset).__name__} has no tensor form (a "
                         f"TensorDataset or a tensor_form() method): set recipe.data_on_device to auto or false")
    form, indices = found
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    key = (id(base), str(device))
    entry = _RESIDENT.get(key)
    if entry is None or entry[0]() is not base:
        entry = _RESIDENT[key] = (weakref.ref(base), _to_device(form, device))
        while len(_RESIDENT) > RESIDENT_KEEP:
            _RESIDENT.popitem(last=False)
    else:
        _RESIDENT.move_to_end(key)
    return entry[1], None if indices is None else indices.to(device)


def _to_device(form: dict[str, Any], device: torch.device) -> ResidentData:
    images = torch.as_tensor(form["images"])
    if images.dim() != 4:
        raise RunFailure(f"a tensor form's images must be (N, C, H, W), not {tuple(images.shape)}")
    targets = torch.as_tensor(form["targets"]).long()
    channels = images.shape[1]

    def per_channel(values):
        if values is None:
            return None
        t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        t = t.expand(channels) if t.numel() == 1 else t
        return t.reshape(1, channels, 1, 1).to(device)

    return ResidentData(images.contiguous().to(device), targets.to(device), per_channel(form.get("mean")),
                        per_channel(form.get("std")), form.get("crop_padding"), bool(form.get("flip", False)))


def clear_resident() -> None:
    """Forget the data sets held on devices (tests; freeing device memory)."""
    _RESIDENT.clear()


class DeviceLoader:
    """Batches ``(x, y)`` of a resident data set, on its device: x float32 (normalised, augmented when
    ``augment``), y int64. Iterating draws one epoch; ``len()`` is the number of batches, as a DataLoader's."""

    def __init__(self, data: ResidentData, indices: torch.Tensor | None, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, augment: bool = False, dataset: Dataset | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.data, self.indices = data, indices
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment and (data.crop_padding is not None or data.flip)
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = dataset  # the data set it was made from (for code that looks at loader.dataset)
        self.memory_format = memory_format
        self.num_examples = len(indices) if indices is not None else len(data.targets)

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """One epoch's draws from the generator, on the CPU: (positions in the order the epoch visits them, crop
        row offsets, crop column offsets, flips); the last three per visited position, None when not drawn."""
        n, g = self.num_examples, self.generator
        if self.shuffle:
            # as torch's DataLoader with a generator: its iterator's base seed, the sampler's permutation, and the
            # permutation the sampler draws when it is exhausted (whose first 0 elements it yields)
            torch.empty((), dtype=torch.int64).random_(generator=g)
            order = torch.randperm(n, generator=g)
            torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        dy = dx = flips = None
        if self.augment:
            if self.data.crop_padding is not None:
                span = 2 * self.data.crop_padding + 1
                dy = torch.randint(span, (n,), generator=g)
                dx = torch.randint(span, (n,), generator=g)
            if self.data.flip:
                flips = torch.randint(2, (n,), generator=g).bool()
        return order, dy, dx, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.data.images.device
        order, dy, dx, flips = (None if t is None else t.to(device) for t in self.epoch_draws())
        if self.indices is not None:
            order = self.indices[order]
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            chosen = order[part]
            x = self.data.images[chosen]
            if dy is not None:
                x = random_crop(x, dy[part], dx[part], self.data.crop_padding)
            if flips is not None:
                x = torch.where(flips[part].view(-1, 1, 1, 1), x.flip(3), x)
            yield self.normalise(x), self.data.targets[chosen]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.data.mean is not None:
            x = x.sub_(self.data.mean)
        if self.data.std is not None:
            x = x.div_(self.data.std)
        return x.contiguous(memory_format=self.memory_format)


def random_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Crops of x's size from x zero-padded by ``padding``, at row/column offsets ``dy``/``dx`` in
    ``[0, 2 * padding]`` (one per image): torchvision's RandomCrop(size, padding) for a whole batch in one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def wanted(setting: str | bool, datasets: list[Dataset], device: torch.device) -> bool:
    """Whether ``recipe.data_on_device`` puts these data sets on ``device`` (see the module docstring)."""
    if setting is True:
        return True
    if setting is False or device.type != "cuda":
        return False
    sizes = [form_bytes(d) for d in datasets]
    if any(s is None for s in sizes):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return sum(sizes) <= FREE_MEMORY_FRACTION * free


def device_loaders(train_set: Dataset, test_set: Dataset, recipe, seed: int, device: torch.device,
                   ) -> tuple[DeviceLoader, DeviceLoader] | None:
    """The run's training and test loaders on the device, or None when ``recipe.data_on_device`` keeps the
    DataLoaders. Shuffling, drop_last and batch sizes are those of the loader path."""
    if not wanted(recipe.data_on_device, [train_set, test_set], device):
        return None
    fmt = torch.channels_last if getattr(recipe, "channels_last", False) else torch.contiguous_format
    data, indices = resident(train_set, device)
    train = DeviceLoader(data, indices, recipe.batch_size, True, seed, drop_last=len(train_set) > recipe.batch_size,
                         augment=recipe.augment, dataset=train_set, memory_format=fmt)
    data, indices = resident(test_set, device)
    test = DeviceLoader(data, indices, recipe.eval_batch_size, False, seed, dataset=test_set)
    return train, test
