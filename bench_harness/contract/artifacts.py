"""Stage artifacts: named, content-checksummed tensors shared across runs, suites and processes.

An artifact is what an expensive stage produces once and many runs use: the harness's pretrained weights, an
IMP teacher's survival labels, a trained predictor. It is identified by its ``name`` and the ``config`` that
produced it (hashed into its key), and stored under ``<results root>/artifacts/<name>/<key>/``:

- ``artifact.pt``: the payload, saved with ``torch.save``; it must be made of tensors, numbers, strings and
  lists/dicts of them (a state dict qualifies), because it is loaded with ``weights_only=True``;
- ``manifest.json``: name, key, config, SHA-256 and size of ``artifact.pt``, producer (pruner/stage and host),
  time of creation.

:meth:`ArtifactStore.get` produces an artifact once: the first process takes an exclusive lock on
``<key>.lock`` (an ``fcntl`` lock held by the kernel, so a holder that crashes or is killed releases it; it
works across SLURM jobs on a shared file system that supports POSIX locks), produces and writes atomically;
every other process waits for the lock and then reads. A payload whose checksum does not match its manifest
(truncated by a crash of a file system, edited by hand) is produced again, with a warning naming the file.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bench_harness.atomic import atomic_write
from bench_harness.errors import BenchError
from bench_harness.files import file_sha256, open_regular
from bench_harness.identity import canonical_json, config_hash
from bench_harness.locks import file_lock


class ArtifactError(BenchError):
    """An artifact is damaged, cannot be stored, or cannot be loaded safely."""


class ArtifactWarning(UserWarning):
    """A stored artifact was damaged and is produced again."""


@dataclass(frozen=True)
class ArtifactRecord:
    """What a run records about an artifact it used."""

    name: str
    key: str
    sha256: str
    size: int
    produced: bool  # True: this run produced it; False: it was already there

    def as_row(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size, "produced": self.produced}


class ArtifactStore:
    """Artifacts on disk under ``root`` (normally ``<results root>/artifacts``)."""

    def __init__(self, root: str | Path, producer: str = "") -> None:
        self.root = Path(root)
        self.producer = producer
        self.used: dict[str, ArtifactRecord] = {}  # name -> record, for the run's row

    @staticmethod
    def key(name: str, config: Mapping[str, Any]) -> str:
        return config_hash({"artifact": name, "config": dict(config)})

    def folder(self, name: str, config: Mapping[str, Any]) -> Path:
        _check_name(name)
        return self.root / name / self.key(name, config)

    def exists(self, name: str, config: Mapping[str, Any]) -> bool:
        folder = self.folder(name, config)
        return (folder / "manifest.json").exists() and (folder / "artifact.pt").exists()

    def get(self, name: str, config: Mapping[str, Any], produce: Callable[[], Any]) -> Any:
        """The artifact ``name`` for ``config``: loaded if it exists, else produced once (under a lock),
        stored and returned. ``produce()`` returns the payload (tensors, numbers, strings, dicts/lists)."""
        folder = self.folder(name, config)
        if self.exists(name, config):
            try:
                return self._load(name, config, folder, produced=False)
            except ArtifactError as exc:
                warnings.warn(f"{exc}; producing it again", ArtifactWarning, stacklevel=2)
        with file_lock(folder.with_name(folder.name + ".lock")):
            if self.exists(name, config):  # produced by another process while we waited, or damaged
                try:
                    return self._load(name, config, folder, produced=False)
                except ArtifactError:
                    shutil.rmtree(folder, ignore_errors=True)
            payload = produce()
            self._write(name, config, folder, payload)
        return self._load(name, config, folder, produced=True)

    def put(self, name: str, config: Mapping[str, Any], payload: Any) -> ArtifactRecord:
        folder = self.folder(name, config)
        with file_lock(folder.with_name(folder.name + ".lock")):
            self._write(name, config, folder, payload)
        self._load(name, config, folder, produced=True)
        return self.used[name]

    def _write(self, name: str, config: Mapping[str, Any], folder: Path, payload: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        import torch  # here: planning and listing artifacts (a SLURM submission, bench artifacts) need no torch

        payload_path = folder / "artifact.pt"
        atomic_write(payload_path, lambda tmp: torch.save(payload, tmp))
        try:
            torch.load(payload_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            payload_path.unlink(missing_ok=True)
            raise ArtifactError(f"artifact {name!r} cannot be stored: its payload must be tensors, numbers, "
                                f"strings and lists/dicts of them (it is loaded with weights_only=True): "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        manifest = {"name": name, "key": folder.name, "config": json.loads(canonical_json(dict(config))),
                    "sha256": file_sha256(payload_path), "size": payload_path.stat().st_size,
                    "producer": self.producer, "host": socket.gethostname(),
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        atomic_write(folder / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))

    def _load(self, name: str, config: Mapping[str, Any], folder: Path, produced: bool) -> Any:
        manifest = read_manifest(folder)
        payload_path = folder / "artifact.pt"
        data = read_payload(payload_path)  # one read: what is checked is what is loaded
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.get("sha256"):
            raise ArtifactError(f"artifact {name!r} at {payload_path} is damaged: SHA-256 {digest[:16]}… differs "
                                f"from its manifest's {str(manifest.get('sha256'))[:16]}…")
        import torch

        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactError(f"artifact {name!r} at {payload_path} cannot be loaded with weights_only=True "
                                f"({type(exc).__name__}); delete {folder} to produce it again") from None
        self.used[name] = ArtifactRecord(name, folder.name, digest, len(data), produced)
        return payload


class MemoryArtifactStore(ArtifactStore):
    """Artifacts kept in memory (the Python API without an artifact folder): produced once per store."""

    def __init__(self, producer: str = "") -> None:
        super().__init__(Path("."), producer)
        self._memory: dict[str, Any] = {}

    def exists(self, name: str, config: Mapping[str, Any]) -> bool:
        return self.key(name, config) in self._memory

    def get(self, name: str, config: Mapping[str, Any], produce: Callable[[], Any]) -> Any:
        _check_name(name)
        key = self.key(name, config)
        produced = key not in self._memory
        if produced:
            self._memory[key] = produce()
        self.used[name] = ArtifactRecord(name, key, "", 0, produced)
        return self._memory[key]

    def put(self, name: str, config: Mapping[str, Any], payload: Any) -> ArtifactRecord:
        self._memory.pop(self.key(name, config), None)
        self.get(name, config, lambda: payload)
        return self.used[name]


MANIFEST_MAX_BYTES = 1 << 20  # a manifest is a few hundred bytes; a larger one was not written by the harness


def read_payload(path: Path) -> bytes:
    """An artifact's payload bytes; ArtifactError for anything but a regular file the harness wrote (a FIFO, a
    link to /dev/zero or a directory planted in a shared results folder is refused without blocking)."""
    try:
        with open_regular(path) as fh:
            return fh.read()
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"artifact payload {path} cannot be read ({exc}); delete {path.parent} to produce it "
                            f"again") from None


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        with open_regular(folder / "manifest.json", MANIFEST_MAX_BYTES) as fh:
            manifest = json.loads(fh.read().decode())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"artifact manifest {folder / 'manifest.json'} is missing or damaged ({exc}); delete "
                            f"{folder} to produce it again") from None


def list_artifacts(root: str | Path) -> list[dict[str, Any]]:
    """Every stored artifact's manifest plus ``path`` and ``ok`` (checksum verified)."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        folder = manifest_path.parent
        try:
            manifest = read_manifest(folder)
        except ArtifactError as exc:
            out.append({"name": folder.parent.name, "key": folder.name, "path": str(folder), "ok": False,
                        "problem": str(exc)})
            continue
        try:
            ok = hashlib.sha256(read_payload(folder / "artifact.pt")).hexdigest() == manifest.get("sha256")
        except ArtifactError:
            ok = False
        out.append({**manifest, "path": str(folder), "ok": ok,
                    "problem": None if ok else "payload missing or checksum mismatch"})
    return out


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ArtifactError(f"artifact name {name!r} must be letters, digits, '-', '_' or '.' (it names a folder)")
