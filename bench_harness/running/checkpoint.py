"""Training checkpoints of a run, for preemption-safe resumption.

Saved atomically in the run's work folder (``<results>/<suite>/work/<run_id>/``):

- ``pruned.pt`` after pruning: the pruned model, masks, the part of the result row computed before training
  and the training plan, so a resumed run never prunes again;
- ``train.pt`` at every epoch end of the training after pruning, and ``fit-NNN.pt`` for every training a
  pruner does through the training service (see :mod:`bench_harness.running.trainer`): model and optimizer state,
  every RNG state (torch, CUDA, Python, NumPy) and the training loader's generator,

so that a resumed run computes exactly what an uninterrupted one would (bit for bit on a deterministic CPU run).

The work folder is shared (group-writable on a cluster), so a checkpoint is untrusted input:

- **Nothing is unpickled.** A payload is made only of tensors and plain types (dict, list, tuple, int, float,
  str, bool, None); :func:`save` raises :class:`TypeError` for anything else (NumPy scalars become Python
  scalars, the NumPy RNG state is stored as a tensor), and :func:`load` reads it with
  ``torch.load(weights_only=True)``, which cannot run code.
- **Checksummed.** A file is a header line (:data:`MAGIC`), a JSON line (format version, SHA-256 and size of
  the body), then the body: the ``torch.save`` bytes of ``{"owner": ..., "payload": ...}``.
- **Bound to its run.** The body names its owner (``<suite>/<run_id>`` for a run's checkpoints); a checkpoint
  copied from another run is foreign.

The checksum detects damage, not tampering (it is no signature): someone who can write the folder can forge a
well-formed checkpoint of wrong tensors, but not one that runs code.

A missing checkpoint loads as ``None``; a damaged, foreign, old-format or unloadable one is removed, a
:class:`CheckpointDiscarded` warning names the file and why (the runner puts it in the row's ``warnings``),
and it loads as ``None``: the caller redoes that step from its last good state.

**No link is followed.** ``work/`` and ``work/<run_id>/`` are opened with ``O_NOFOLLOW | O_DIRECTORY`` and every
file in them through that folder's descriptor: when either is a symbolic link (or not a directory), no checkpoint
is read, written, removed or cleared there (a :class:`CheckpointDiscarded` warning says so and the run goes on
without resuming). A checkpoint file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file whose
size is the one its header declares, checked before the body is read: a symbolic link (to ``/dev/zero``, to another
user's file), a FIFO or a device is discarded (the entry itself removed, never its target) without reading it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import random
import stat
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from bench_harness import paths

MAGIC = b"bench-harness checkpoint\n"
FORMAT = 1
MAX_HEADER_BYTES = 4096  # the JSON line after MAGIC is far shorter; a longer one is damage


class CheckpointDiscarded(UserWarning):
    """A checkpoint was damaged, foreign, of an old format or unloadable: removed, and its step redone."""


class _Rejected(Exception):
    """Why a checkpoint file cannot be used."""


def checkpoint_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    """The epoch checkpoint of the training after pruning."""
    return work_dir(results_root, suite, run_id) / "train.pt"


def pruned_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    """The state right after pruning."""
    return work_dir(results_root, suite, run_id) / "pruned.pt"


def work_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    return paths.run_dir(results_root, suite, run_id)


def run_owner(suite: str, run_id: str) -> str:
    """The owner stamp of a run's checkpoints."""
    return f"{suite}/{run_id}"


def clear(results_root: str | Path, suite: str, run_id: str) -> None:
    """Remove a finished run's checkpoints (its artifact folder and lock stay)."""
    clear_files(work_dir(results_root, suite, run_id), "", ".pt")


def clear_files(folder: str | Path, prefix: str, suffix: str) -> None:
    """Remove the regular files named ``<prefix>*<suffix>`` directly in ``folder``, a run's work folder. Nothing
    is removed when ``folder`` or the folder above it (``work/``) is a symbolic link or not a directory (a
    :class:`CheckpointDiscarded` warning says so); symbolic links, FIFOs and sub-folders in it are left alone."""
    try:
        with _work_folder(Path(folder)) as fd:
            for name in os.listdir(fd):
                if name.startswith(prefix) and name.endswith(suffix) and _is_regular(name, fd):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return
    except _Rejected as why:
        _warn(Path(folder), f"{why}; nothing was cleared there")


def _is_regular(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _work_folder(folder: Path):
    """A descriptor of ``folder`` (a run's work folder), opened without following a symbolic link at
    ``folder`` or at its parent (``work/``). Raises FileNotFoundError when either is missing and _Rejected when
    either is a symbolic link or not a directory."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    parent = _open_folder(str(folder.parent), flags, None)
    try:
        fd = _open_folder(folder.name, flags, parent)
    finally:
        os.close(parent)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_folder(name: str, flags: int, dir_fd: int | None) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _Rejected(f"its folder {name!r} is a symbolic link or not a directory: never followed") from None
        raise


# -- RNG states -------------------------------------------------------------------------------------------------

def rng_state(loader_generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG state (torch, CUDA, Python, NumPy, the loader's generator), in plain types and tensors."""
    state = {"torch": torch.random.get_rng_state(), "python": random.getstate(),
             "loader": loader_generator.get_state() if loader_generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = _numpy_state_to_plain(np.random.get_state())
    except ImportError:
        pass
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    """Set every RNG to ``state`` (from :func:`rng_state`)."""
    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("loader") is not None and loader_generator is not None:
        loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(_numpy_state_from_plain(state["numpy"]))


def rng_problem(state: Any, loader_generator: torch.Generator | None) -> str | None:
    """Why :func:`restore_rng` cannot take ``state`` (None: it can), found by loading each part into a scratch
    generator: nothing of this process's random state changes. ``state`` comes from an untrusted checkpoint."""
    if not isinstance(state, dict) or "torch" not in state or "python" not in state:
        return "damaged: no RNG state"
    try:
        torch.Generator().set_state(state["torch"])
        random.Random().setstate(state["python"])
        if state.get("loader") is not None and loader_generator is not None:
            torch.Generator(device=loader_generator.device).set_state(state["loader"])
        if "cuda" in state and torch.cuda.is_available():
            current = torch.cuda.get_rng_state_all()
            cuda = state["cuda"]
            if not (isinstance(cuda, (list, tuple)) and len(cuda) == len(current) and all(
                    isinstance(t, torch.Tensor) and t.dtype == c.dtype and t.shape == c.shape
                    for t, c in zip(cuda, current))):
                raise ValueError("CUDA states of another shape")
        if "numpy" in state:
            import numpy as np

            np.random.RandomState().set_state(_numpy_state_from_plain(state["numpy"]))
    except Exception as exc:  # a wrong type, size or content: the generators' own checks
        return f"damaged: its RNG state does not load ({type(exc).__name__})"
    return None


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """``np.random.get_state()`` (its key is a uint32 array) as a tensor and plain types."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return {"name": str(name), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    """The inverse of :func:`_numpy_state_to_plain`."""
    keys = state["keys"].numpy().astype("uint32")
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


# -- plain payloads ---------------------------------------------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


def to_plain(obj: Any, where: str = "payload") -> Any:
    """``obj`` as tensors and plain types only (NumPy scalars become Python scalars, an OrderedDict a dict,
    parameters plain tensors); raises TypeError naming the place of anything else (subclasses included: a
    namedtuple or an enum would not load back as itself)."""
    if _is_numpy_scalar(obj):
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj if type(obj) is torch.Tensor else obj.detach().as_subclass(torch.Tensor)
    if type(obj) in (dict, OrderedDict):
        out = {}
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"checkpoint {where}: key {k!r} of type {type(k).__name__} is not a str or int")
            out[k] = to_plain(v, f"{where}[{k!r}]")
        return out
    if type(obj) in (list, tuple):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if type(obj) is list else tuple(items)
    raise TypeError(f"checkpoint {where}: {type(obj).__module__}.{type(obj).__qualname__} is not a tensor or a "
                    f"plain type (dict, list, tuple, int, float, str, bool, None)")


def _is_numpy_scalar(obj: Any) -> bool:
    try:
        import numpy as np
    except ImportError:
        return False
    return isinstance(obj, np.generic)


# -- the file format --------------------------------------------------------------------------------------------

def encode(payload: dict[str, Any], owner: str) -> bytes:
    """The bytes of a checkpoint file: header, JSON line (format, SHA-256 and size of the body), body."""
    buffer = io.BytesIO()
    torch.save({"owner": owner, "payload": to_plain(payload)}, buffer)
    body = buffer.getvalue()
    header = {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body


def decode(data: bytes, owner: str) -> dict[str, Any]:
    """The payload of checkpoint bytes written for ``owner``; raises _Rejected saying why it cannot be used."""
    if not data.startswith(MAGIC):
        raise _Rejected(f"not in checkpoint format {FORMAT} (an old-format or unknown file)")
    line, sep, body = data[len(MAGIC):].partition(b"\n")
    if not sep:
        raise _Rejected("damaged: truncated header")
    header = _parse_header(line)
    if header.get("format") != FORMAT:
        raise _Rejected(f"format {header.get('format')!r}, this harness reads format {FORMAT}")
    if header.get("size") != len(body) or header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise _Rejected("damaged: checksum mismatch")
    content = _load_weights_only(body)
    if content.get("owner") != owner:
        raise _Rejected(f"foreign: written by {content.get('owner')!r}, not {owner!r}")
    return content["payload"]


def _parse_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        raise _Rejected("damaged: unreadable header") from None
    if not isinstance(header, dict):
        raise _Rejected("damaged: unreadable header")
    return header


def _load_weights_only(body: bytes) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a body: tensors and plain types, never code."""
    try:
        content = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _Rejected("unloadable: it holds more than tensors and plain types (refused by torch.load with "
                        "weights_only=True)") from None
    except Exception as exc:  # a body with a right checksum that torch cannot read
        raise _Rejected(f"unloadable: {type(exc).__name__}") from None
    if not isinstance(content, dict) or not isinstance(content.get("payload"), dict):
        raise _Rejected("damaged: the body is not a checkpoint")
    return content


def save(path: Path, payload: dict[str, Any], owner: str) -> None:
    """Write ``payload`` (tensors and plain types, see :func:`to_plain`) atomically as ``owner``'s checkpoint.
    Its folder (and ``work/`` above it) is created if missing; when either is a symbolic link or not a directory,
    nothing is written (a :class:`CheckpointDiscarded` warning says so: the run goes on without this checkpoint).
    The file replaces whatever entry had its name (a link is replaced, never written through)."""
    path = Path(path)
    data = encode(payload, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _work_folder(path.parent) as fd:
            _write_in(fd, path.name, data)
    except _Rejected as why:
        _warn(path, f"{why}; not written")


def _write_in(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a new temporary file in the folder ``dir_fd`` (the umask's permissions), then rename it
    to ``name``."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def load(path: Path, owner: str) -> dict[str, Any] | None:
    """The payload ``owner`` saved at ``path``; ``None`` when there is none, or when the file cannot be used:
    then it is removed (when its folder is a real one: see the module docstring) and a
    :class:`CheckpointDiscarded` warning names it and says why. Never blocks on a FIFO, never follows a link,
    never reads more than the size the file's header declares."""
    path = Path(path)
    try:
        with _work_folder(path.parent) as dir_fd:
            try:
                data = _read_checkpoint(dir_fd, path.name)
                return decode(data, owner)
            except _Rejected as why:
                return _discard_in(dir_fd, path, str(why))
            except FileNotFoundError:
                return None
            except OSError as exc:
                return _discard_in(dir_fd, path, f"unreadable: {exc}")
    except FileNotFoundError:
        return None
    except _Rejected as why:
        _warn(path, f"{why}; not read, not removed")
        return None


def _read_checkpoint(dir_fd: int, name: str) -> bytes:
    """The bytes of the regular file ``name`` in the folder ``dir_fd``; raises _Rejected for a symbolic link, a
    FIFO, a device or a file whose size is not the one its header declares (checked before reading the body)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Rejected("a symbolic link: never followed") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Rejected("not a regular file (a FIFO, a device or a folder): not read")
        head = f.read(len(MAGIC) + MAX_HEADER_BYTES)
        if not head.startswith(MAGIC):
            raise _Rejected(f"not in checkpoint format {FORMAT} (an old-format or unknown file)")
        line, sep, _ = head[len(MAGIC):].partition(b"\n")
        if not sep:
            raise _Rejected("damaged: truncated header")
        declared = _parse_header(line).get("size")
        expected = len(MAGIC) + len(line) + 1 + declared if type(declared) is int and declared >= 0 else None
        if expected != info.st_size:
            raise _Rejected(f"damaged: {info.st_size} bytes, its header declares a body of {declared!r} bytes")
        f.seek(0)
        return f.read(info.st_size)


def discard(path: Path, reason: str) -> None:
    """Remove ``path``, a checkpoint its reader found unusable after loading it (e.g. a pruned state that does
    not fit the run's model), with a :class:`CheckpointDiscarded` warning; the caller redoes its step."""
    path = Path(path)
    try:
        with _work_folder(path.parent) as dir_fd:
            _discard_in(dir_fd, path, reason)
    except (OSError, _Rejected) as exc:
        _warn(path, f"{reason}; not removed: {exc}")


def _discard_in(dir_fd: int, path: Path, reason: str) -> None:
    """Remove the unusable checkpoint ``path`` (the entry itself, in the folder ``dir_fd``) and warn."""
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        reason += f"; could not remove it: {exc}"
    _warn(path, reason)
    return None


def _warn(path: Path, reason: str) -> None:
    warnings.warn(f"checkpoint {path} discarded ({reason}); that step is redone", CheckpointDiscarded,
                  stacklevel=4)
