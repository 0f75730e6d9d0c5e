"""The data set provider contract and the data helpers the core uses (loaders, scoring subsets)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from bench_harness.contract.specs import DatasetSpec
from bench_harness.locks import file_lock


def prepare_once(root: str | Path, name: str, ready: Callable[[], bool], build: Callable[[Path], None]) -> None:
    """Prepare the data set folder ``<root>/<name>`` (download, unpack, convert) once among concurrent processes.

    When ``ready()`` is false: under a lock beside the folder (``<root>/.<name>.lock``) it is asked again (another
    process may have finished meanwhile); if still false, ``build(scratch)`` writes into a fresh temporary folder
    in ``root`` laid out as ``root`` itself (``scratch/<name>/...``, archives beside it), whose contents are then
    moved into ``root`` by atomic renames (:func:`move_into_place`). A process reading the data therefore sees
    each file, or a whole new folder, either absent or complete, and two runners never write the same temporary
    name. Nothing is written, not even the lock, when the data is ready (a read-only data folder stays usable).
    The scratch folder is removed whether ``build`` succeeds or fails."""
    if ready():
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{name}.lock"):
        if ready():
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
        try:
            build(scratch)
            move_into_place(scratch, root)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def move_into_place(source: Path, target: Path) -> None:
    """Move the tree ``source`` into ``target`` on the same file system: a folder missing in ``target`` is renamed
    there whole, a file missing there is renamed into it; what ``target`` already has is kept (someone may be
    reading it). Every step is one atomic rename."""
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if destination.is_dir():
                move_into_place(entry, destination)
            elif not os.path.lexists(destination):
                os.rename(entry, destination)
        elif not os.path.lexists(destination):
            os.replace(entry, destination)


_LOADED: OrderedDict[tuple, Dataset] = OrderedDict()
LOADED_KEEP = 3  # data sets (name, split, augmentation, parameters) a process keeps for its next runs


def load_split(spec: DatasetSpec, split: str, augment: bool, **kw: Any) -> Dataset:
    """``spec.load(...)``, loaded once per process: the runs of a sweep that a worker executes one after another
    share their data (a run's training and scoring sets are then one object, too). The last ``LOADED_KEEP``
    distinct data sets are kept. Data sets are never modified by the harness (subsets wrap them)."""
    key = (spec.name, split, bool(augment), json.dumps(kw, sort_keys=True, default=repr))
    dataset = _LOADED.get(key)
    if dataset is None:
        dataset = spec.load(split=split, augment=augment, **kw)
        _LOADED[key] = dataset
        while len(_LOADED) > LOADED_KEEP:
            _LOADED.popitem(last=False)
    else:
        _LOADED.move_to_end(key)
    return dataset


def concrete_spec(spec: DatasetSpec, root: str, params: dict[str, Any]) -> DatasetSpec:
    return spec.resolve(root=root, **params) if spec.resolve is not None else spec


def dataset_targets(dataset: Dataset) -> list[int]:
    """Labels of a data set in order, without decoding images when the data set exposes them."""
    if isinstance(dataset, Subset):
        parent = dataset_targets(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    for attr in ("targets", "labels", "tensors"):
        value = getattr(dataset, attr, None)
        if value is None:
            continue
        if attr == "tensors":
            value = value[1]
        return [int(t) for t in (value.tolist() if isinstance(value, torch.Tensor) else value)]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def first_per_class(dataset: Dataset, examples_per_class: int, num_classes: int) -> Subset:
    """The first ``k`` examples of each class in data set order, grouped by class (classes in the order of
    their first appearance) — PX's balanced scoring subset, in the official code's order."""
    chosen: dict[int, list[int]] = {}
    for i, label in enumerate(dataset_targets(dataset)):
        picked = chosen.setdefault(label, [])
        if len(picked) < examples_per_class:
            picked.append(i)
            if len(chosen) == num_classes and all(len(v) == examples_per_class for v in chosen.values()):
                break
    return Subset(dataset, [i for indices in chosen.values() for i in indices])


def head(dataset: Dataset, n: int | None) -> Dataset:
    """The first n examples (all when n is None)."""
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, list(range(n)))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)


def train_loader(train_set: Dataset, batch_size: int, seed: int, train_subset: int | None = None,
                 num_workers: int = 0) -> DataLoader:
    """A run's training loader: the first ``train_subset`` examples of ``train_set`` (all when None), shuffled by a
    generator seeded with ``seed``, the last partial batch dropped when there is more than one batch."""
    train_set = head(train_set, train_subset)
    return make_loader(train_set, batch_size, True, seed, num_workers, drop_last=len(train_set) > batch_size)


def tensor_batches(loader: DataLoader, limit: int | None) -> Callable[[], Any]:
    """A factory over the first ``limit`` batches of a loader (all when None)."""

    def factory():
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            yield batch[0], batch[1]

    return factory

