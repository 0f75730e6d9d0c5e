"""File locks on the results file system: a run is claimed before it starts, an artifact is produced once.

``fcntl.lockf`` locks are held by the kernel (and by the NFS lock manager on a shared file system): a holder that
crashes, is killed or loses its node releases them, so a lock never outlives its holder and nothing has to be
cleaned up by hand. The lock file itself stays (it is empty but for the holder's host, pid and time, written for
people reading the folder).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench_harness.errors import BenchError


class LockTimeout(BenchError):
    pass


def _stamp(fh) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(f"{socket.gethostname()} {os.getpid()} {dt.datetime.now(dt.timezone.utc).isoformat()}\n")
    fh.flush()


@contextmanager
def file_lock(path: Path, poll_s: float = 0.2, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), waited for; released on exit or when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (BlockingIOError, PermissionError):
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise LockTimeout(f"timed out after {timeout_s:.0f} s waiting for the lock {path}") from None
                time.sleep(poll_s)
        _stamp(fh)
        yield
    finally:
        try:
            fcntl.lockf(fh, fcntl.LOCK_UN)
        finally:
            fh.close()


class Claim:
    """A non-blocking claim on a run: ``acquired`` tells whether this process holds it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+")
        try:
            fcntl.lockf(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
            _stamp(self._fh)
        except (BlockingIOError, PermissionError):
            self.acquired = False
            self._fh.close()

    def release(self) -> None:
        if self.acquired:
            try:
                fcntl.lockf(self._fh, fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self.acquired = False

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
