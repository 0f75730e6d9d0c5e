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
    if sep and head == TIMM:
        raise ValueError(f"{spec!r}: write `weights: timm`; the model's name timm:<tag> names the weights (e.g. "
                         f"{{name: 'timm:resnet50.a1_in1k', weights: timm}})")
    if sep and head == TORCHVISION:
        return WeightsSpec(head, rest.strip().rsplit(".", 1)[-1])
    if sep and head == PRETRAIN:
        if not rest.strip():
            raise ValueError("'pretrain:' needs a data set name, e.g. 'pretrain:mnist' (the suite's pretrain: "
                             "recipe trains the model on it first)")
        return WeightsSpec(PRETRAIN, rest.strip())
    path = rest if head == FILE and sep else spec
    if not path:
        raise ValueError("expected 'file:<path>', 'torchvision:<WEIGHTS>', 'timm' or 'pretrain:<dataset>'")
    return WeightsSpec(FILE, path)


def canonical_weights(spec: str, model_name: str) -> str:
    """The form of a ``weights:`` entry that goes into run ids: one spelling per set of weights.

    - ``file:...`` -> ``file`` (the file's SHA-256 goes into the id beside it: one file spelled ``w.pt``,
      ``file:./w.pt`` or by its absolute path is one experiment, and the same bytes anywhere are too);
    - ``torchvision[:...]`` -> ``torchvision:<MEMBER>``, ``DEFAULT`` resolved to the member it names in the
      installed torchvision (a later release may move ``DEFAULT``: the id follows the weights, not the alias);
    - ``timm`` -> ``timm`` (the model's tag names the weights); ``pretrain:<dataset>`` as written, trimmed.
    """
    parsed = parse_weights(spec)
    if parsed.kind == FILE:
        return FILE
    if parsed.kind == TORCHVISION:
        member = parsed.argument or "DEFAULT"
        if member == "DEFAULT":
            member = torchvision_default(model_name)
        return f"{TORCHVISION}:{member}"
    if parsed.kind == PRETRAIN:
        return f"{PRETRAIN}:{parsed.argument}"
    return parsed.kind


def torchvision_default(model_name: str) -> str:
    """The weights member torchvision's ``DEFAULT`` names for a ``torchvision:<arch>`` model (imports torchvision:
    only suites that write DEFAULT pay for it)."""
    import torchvision

    arch = model_name.split(":", 1)[1] if ":" in model_name else model_name
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.name
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"torchvision has no weights for model {arch!r}") from None


def weights_file_problem(path: Path) -> str | None:
    """Why a weights file cannot be a state dict (None: it looks like one): empty, or neither a torch.save file
    (a zip archive, or the legacy pickle format) nor a safetensors file. Checked at validation, so a suite of
    thousands of runs is refused once rather than failing each run; a file of the right format with the wrong
    contents is found when a run loads it."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        size = os.fstat(fh.fileno()).st_size
    if not head:
        return "the file is empty"
    if path.suffix == ".safetensors":
        length = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        ok = len(head) > 8 and 0 < length <= size - 8 and head[8:9] == b"{"
        return None if ok else "not a safetensors file (no valid header)"
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        return None if zipfile.is_zipfile(path) else "a truncated or damaged torch.save archive"
    if head[:1] == b"\x80":  # the legacy (pre-1.6) torch.save format starts with a pickle protocol byte
        return None
    return "not a torch.save or safetensors file (save it with torch.save(model.state_dict(), path))"


def weights_file(spec: str, base_dir: str | os.PathLike = ".") -> Path:
    """The path a ``file:`` entry names (relative paths against ``base_dir``); it may not exist."""
    path = Path(os.path.expanduser(parse_weights(spec).argument))
    return path if path.is_absolute() else Path(base_dir) / path


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a weights file, computed once per (path, inode, size, mtime, ctime) in this process (a suite names the
    same file for thousands of runs)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: touch -r
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) > 1_000:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = file_sha256(path)
    return digest
