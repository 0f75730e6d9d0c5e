"""Caches for expensive artifacts (pretrained weights, teachers) keyed by a JSON-able config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bench_harness.atomic import atomic_write
from bench_harness.identity import config_hash


class ArtifactCache:
    """In-memory cache (used by the Python API)."""

    def __init__(self) -> None:
        self._memory: dict[str, Any] = {}

    def get_or_compute(self, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        digest = config_hash(dict(key))
        if digest not in self._memory:
            self._memory[digest] = compute()
        return self._memory[digest]


class DiskCache(ArtifactCache):
    """Artifacts saved with ``torch.save`` under ``<results root>/.cache/<hash>.pt`` (atomic write)."""

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root)

    def path(self, key: Mapping[str, Any]) -> Path:
        return self.root / f"{config_hash(dict(key))}.pt"

    def get_or_compute(self, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        path = self.path(key)
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=False)
        value = compute()
        atomic_write(path, lambda tmp: torch.save(value, tmp))
        return value
