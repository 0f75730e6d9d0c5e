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
    """A data set on the device: images (N, C, H+2p, W+2p; uint8 or float), zero-padded once by the random crop's
    padding p when its training split asks for a crop, targets (N, int64), the normalisation folded into one
    multiply-add per channel (None: none), and the augmentation."""

    images: torch.Tensor
    targets: torch.Tensor
    scale: torch.Tensor | None  # (1, C, 1, 1) float32 on the device: x * scale + shift = ((x / 255) - mean) / std
    shift: torch.Tensor | None
    crop_padding: int | None
    flip: bool

    @property
    def padding(self) -> int:
        return self.crop_padding or 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return c, h - 2 * self.padding, w - 2 * self.padding


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
    form = found[0]
    images, pad = form["images"], form.get("crop_padding") or 0
    n, c, h, w = images.shape
    return n * c * (h + 2 * pad) * (w + 2 * pad) * images.element_size() + n * 8


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
    check_form(form, base, indices)
    key = (id(base), str(device))
    entry = _RESIDENT.get(key)
    if entry is None or entry[0]() is not base:
        for stale in [k for k, (ref, _) in _RESIDENT.items() if ref() is None]:
            del _RESIDENT[stale]  # its data set is gone: free the device memory
        entry = _RESIDENT[key] = (weakref.ref(base), _to_device(form, device))
        while len(_RESIDENT) > RESIDENT_KEEP:
            _RESIDENT.popitem(last=False)
    else:
        _RESIDENT.move_to_end(key)
    return entry[1], None if indices is None else indices.to(device)


def check_form(form: Any, base: Dataset, indices: torch.Tensor | None) -> None:
    """RunFailure naming the problem when a data set's tensor form does not describe the data set: checked
    before anything is indexed on the device (an index out of bounds there is a device-side assert that ends
    every later run of the process on CUDA, and a wrong shape an obscure error in the model)."""
    name = type(base).__name__

    def bad(problem: str) -> RunFailure:
        return RunFailure(f"data_on_device: the tensor form of data set {name} {problem}: fix its tensor_form() or "
                          f"set recipe.data_on_device to false")

    if not isinstance(form, dict) or "images" not in form or "targets" not in form:
        raise bad("is not a dict with 'images' and 'targets'")
    images, targets = torch.as_tensor(form["images"]), torch.as_tensor(form["targets"])
    if images.dim() != 4:
        raise bad(f"has images of shape {tuple(images.shape)}, not (N, C, H, W)")
    n, channels = images.shape[0], images.shape[1]
    if targets.shape != (n,):
        raise bad(f"has targets of shape {tuple(targets.shape)} for {n} images (one label per image)")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise bad(f"has targets of dtype {targets.dtype}, not integer class indices")
    if n != len(base):
        raise bad(f"holds {n} images, and the data set {len(base)} examples")
    if indices is not None and len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < n):
        raise bad(f"holds {n} images, and a subset selects example {int(indices.max())}")
    pad = form.get("crop_padding")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise bad(f"has crop_padding {pad!r}: a number of pixels >= 0, or None for no crop")
    for key in ("mean", "std"):
        values = form.get(key)
        if values is not None and torch.as_tensor(values).numel() not in (1, channels):
            raise bad(f"has a {key} of {torch.as_tensor(values).numel()} values for {channels} channels")
    if n:
        example = base[0][0]
        if isinstance(example, torch.Tensor) and tuple(example.shape) != tuple(images.shape[1:]):
            raise bad(f"has images of shape {tuple(images.shape[1:])}, and its examples {tuple(example.shape)}")


def _to_device(form: dict[str, Any], device: torch.device) -> ResidentData:
    images = torch.as_tensor(form["images"])
    targets = torch.as_tensor(form["targets"]).long()
    channels = images.shape[1]

    def per_channel(values, default):
        t = torch.as_tensor(default if values is None else values, dtype=torch.float64).reshape(-1)
        return (t.expand(channels) if t.numel() == 1 else t).reshape(1, channels, 1, 1)

    mean, std = form.get("mean"), form.get("std")
    scale = shift = None
    if images.dtype == torch.uint8 or mean is not None or std is not None:
        unit = 1 / 255 if images.dtype == torch.uint8 else 1.0
        m, s = per_channel(mean, 0.0), per_channel(std, 1.0)
        scale, shift = (unit / s).float().to(device), (-m / s).float().to(device)
    pad = form.get("crop_padding") or 0
    images = images.contiguous().to(device)
    if pad:
        images = F.pad(images, (pad, pad, pad, pad))
    return ResidentData(images, targets.to(device), scale, shift, form.get("crop_padding"),
                        bool(form.get("flip", False)))


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
            x = crop_and_flip(self.data, chosen, None if dy is None else dy[part], None if dx is None else dx[part],
                              None if flips is None else flips[part])
            yield self.normalise(x), self.data.targets[chosen]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.data.scale is not None:
            x = x.mul_(self.data.scale).add_(self.data.shift)
        return x.contiguous(memory_format=self.memory_format)


def crop_and_flip(data: ResidentData, chosen: torch.Tensor, dy: torch.Tensor | None, dx: torch.Tensor | None,
                  flips: torch.Tensor | None) -> torch.Tensor:
    """The images ``chosen`` of the resident data, each cropped at row/column offsets ``dy``/``dx`` in
    ``[0, 2p]`` of its zero-padded copy (None: the centre, i.e. the image itself) and mirrored where ``flips``:
    torchvision's RandomCrop(size, padding=p) then RandomHorizontalFlip, for a whole batch in one gather."""
    p = data.padding
    c, h, w = data.image_shape
    if dy is None and flips is None:
        x = data.images[chosen]
        return x if not p else x[:, :, p:p + h, p:p + w]
    n, dev = len(chosen), data.images.device
    dy = torch.full((n,), p, device=dev) if dy is None else dy
    dx = torch.full((n,), p, device=dev) if dx is None else dx
    if dev.type == "cpu":
        return _crop_and_flip_grouped(data, chosen, dy, dx, flips)
    return _crop_and_flip_gather(data, chosen, dy, dx, flips)


def _crop_and_flip_gather(data: ResidentData, chosen, dy, dx, flips) -> torch.Tensor:
    """One gather of every output pixel: no host synchronisation (a GPU's way)."""
    c, h, w = data.image_shape
    n, dev = len(chosen), data.images.device
    columns = torch.arange(w, device=dev)
    if flips is not None:
        columns = torch.where(flips.view(n, 1), columns.flip(0), columns)  # (n, w) or (w,)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + columns).view(n, 1, 1, w)
    return data.images[chosen.view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]


def _crop_and_flip_grouped(data: ResidentData, chosen, dy, dx, flips) -> torch.Tensor:
    """The same result in fewer, larger copies (a CPU's way: 3x faster than the gather there): the cropped rows of
    every image in one index_select, then one slice copy per (column offset, flip) group."""
    c, h, w = data.image_shape
    n, wp = len(chosen), data.images.shape[3]
    first = (chosen.view(n, 1, 1) * c + torch.arange(c).view(1, c, 1)) * data.images.shape[2]
    rows = data.images.reshape(-1, wp).index_select(0, (first + dy.view(n, 1, 1) + torch.arange(h)).view(-1))
    rows = rows.view(n, c, h, wp)
    out = torch.empty((n, c, h, w), dtype=data.images.dtype)
    key = dx * 2 + (flips.long() if flips is not None else 0)
    for k in torch.unique(key).tolist():
        members = (key == k).nonzero().view(-1)
        part = rows.index_select(0, members)[..., k // 2:k // 2 + w]
        out.index_copy_(0, members, part.flip(3) if k % 2 else part)
    return out


def random_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Crops of x's size from x zero-padded by ``padding``, at row/column offsets ``dy``/``dx`` in
    ``[0, 2 * padding]`` (one per image)."""
    data = ResidentData(F.pad(x, (padding,) * 4), torch.zeros(len(x)), None, None, padding, False)
    return crop_and_flip(data, torch.arange(len(x), device=x.device), dy, dx, None)


def wanted(setting: str | bool, datasets: list[Dataset], device: torch.device) -> bool:
    """Whether ``recipe.data_on_device`` puts these data sets on ``device`` (see the module docstring)."""
    if setting is True:
        return True
    if setting is False or device.type != "cuda":
        return False
    sizes = [form_bytes(d) for d in datasets]
    if any(s is None for s in sizes):
        return False
    # a data set already held there (an earlier run of this process) costs nothing more: the runs of a sweep
    # then all take the same path, although the free memory shrank by what the first one moved
    needed = sum(s for d, s in zip(datasets, sizes) if not is_resident(d, device))
    if needed == 0:
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return needed <= FREE_MEMORY_FRACTION * free


def is_resident(dataset: Dataset, device: torch.device) -> bool:
    """Whether the data set (under any Subset) is held on ``device`` already."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    entry = _RESIDENT.get((id(dataset), str(device)))
    return entry is not None and entry[0]() is dataset


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
