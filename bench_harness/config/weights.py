"""A model entry's ``weights:``: what the spelling means, where a file is read from, and what goes into a run id.

``weights:`` means "start from these weights" for every pruner and for the dense reference (docs/transfer.md):

- ``file:<path>`` (or a bare path): a state dict; a relative path is read from the directory the suite was loaded
  in. The file's SHA-256 is part of the run id, so a file replaced by another trains a new run, never one skipped
  as already done.
- ``torchvision:<WEIGHTS>`` (``IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V2``, ``DEFAULT``): published weights,
  pinned by their name.
- ``timm``: the pretrained weights of a ``timm:<tag>`` model (the tag names them: ``resnet50.a1_in1k``,
  ``vit_small_patch16_224.dino``, ...).
- ``pretrain:<dataset>``: the harness's own pretraining (the suite's ``pretrain:`` recipe) on another data set,
  the source of a transfer; stored once per model, data set, seed and recipe as an artifact.

Loading is in :mod:`bench_harness.running.weights`; this module is what validation and run identity need.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bench_harness.files import file_sha256

FILE, TORCHVISION, TIMM, PRETRAIN = "file", "torchvision", "timm", "pretrain"
HEADS = ("auto", "keep", "reinit")  # a model entry's head: what becomes of the pretrained classifier


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``weights:`` entry: its kind and the part after the colon ('' when none)."""

    kind: str  # FILE | TORCHVISION | TIMM | PRETRAIN
    argument: str


def parse_weights(spec: str) -> WeightsSpec:
    """The kind of a ``weights:`` entry; ValueError with the accepted spellings for a malformed one."""
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    if spec in (TORCHVISION, TIMM):
        return WeightsSpec(spec, "")
    if sep and head in (TORCHVISION, TIMM):
        return WeightsSpec(head, rest)
    if sep and head == PRETRAIN:
        if not rest.strip():
            raise ValueError("'pretrain:' needs a data set name, e.g. 'pretrain:mnist' (the suite's pretrain: "
                             "recipe trains the model on it first)")
        return WeightsSpec(PRETRAIN, rest.strip())
    path = rest if head == FILE and sep else spec
    if not path:
        raise ValueError("expected 'file:<path>', 'torchvision:<WEIGHTS>', 'timm' or 'pretrain:<dataset>'")
    return WeightsSpec(FILE, path)


def weights_file(spec: str, base_dir: str | os.PathLike = ".") -> Path:
    """The path a ``file:`` entry names (relative paths against ``base_dir``); it may not exist."""
    path = Path(os.path.expanduser(parse_weights(spec).argument))
    return path if path.is_absolute() else Path(base_dir) / path


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a weights file, computed once per (path, inode, size, mtime) in this process (a suite names the
    same file for thousands of runs)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) > 1_000:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = file_sha256(path)
    return digest
