"""Free space of the results folder: the sweep stops, with one line naming the folder, before a run that could
not be stored, and when a write fails with "no space left on device"."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from bench_harness.errors import DiskFullError

MIN_FREE_BYTES = 1 << 20
"""A run does not start when its results folder has less free space than this (1 MiB) ..."""
SHARD_MARGIN = 4
"""... or less than this many times the largest shard written so far by the sweep."""

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(folder: str | Path) -> int:
    """Free space available to this user on the file system of ``folder`` (its nearest existing ancestor)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_error(folder: str | Path, what: str) -> DiskFullError:
    """One line: the folder, its free space, what happened, what to do."""
    return DiskFullError(f"no space left for results in {folder} ({human(free_bytes(folder))} free): {what}; the "
                         f"runs already stored are kept — free some space and run the same command again")


def ensure_free_space(folder: str | Path, largest_shard: int = 0) -> None:
    """Raise DiskFullError unless ``folder`` has at least max(MIN_FREE_BYTES, SHARD_MARGIN x largest_shard) free."""
    needed = max(MIN_FREE_BYTES, SHARD_MARGIN * largest_shard)
    if free_bytes(folder) < needed:
        raise disk_full_error(folder, f"the sweep stops before a run it could not store (needs {human(needed)})")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError (or one it was raised from) meaning the file system or the user's quota is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.errno in DISK_FULL_ERRNOS or "No space left on device" in str(exc)
                                         or "Disk quota exceeded" in str(exc)):
            return True  # pyarrow's IO errors carry the message, not always the errno
        exc = exc.__cause__ or exc.__context__
    return False
