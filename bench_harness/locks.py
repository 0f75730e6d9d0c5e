"""File locks on the results file system: one kind of lock for every executor.

Every lock of the harness — the claim on a run (local runner, its workers, SLURM array tasks alike), the results
store's lock, an artifact being produced, a data set being unpacked — is a whole-file **record lock** taken with
``fcntl``: on Linux an *open-file-description* lock (``F_OFD_SETLK``, Linux ≥ 3.15), elsewhere a classic POSIX
lock (``lockf``). Record locks of both kinds exclude each other, and the NFS client forwards them to the server's
lock manager, so they hold across the nodes of a cluster sharing a file system. ``flock`` locks are never used:
on a local file system they do not exclude record locks at all (two executors using one kind each would run the
same run twice).

A lock is held by the kernel: a holder that crashes, is killed or loses its node releases it, so a lock never
outlives its holder and nothing has to be cleaned up by hand. The lock file itself stays (it holds the holder's
host, pid and time, for people reading the folder).

Within one process a lock is re-entrant: taking a lock this process already holds (exclusively, or shared when a
shared one is asked for) succeeds at once, so code holding the results store's lock can call readers that take it
again. Threads of one process therefore do not exclude each other; the harness locks between processes.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
import stat
import struct
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from bench_harness.errors import BenchError


class LockTimeout(BenchError):
    pass


_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)


def _fcntl_lock(fh: IO, kind: str, wait: bool) -> bool:
    """Take (kind 'ex' or 'sh') or drop (kind 'un') a whole-file record lock; False when held by another."""
    if _OFD_SETLK is not None:
        ltype = {"ex": fcntl.F_WRLCK, "sh": fcntl.F_RDLCK, "un": fcntl.F_UNLCK}[kind]
        # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid}; l_pid must be 0
        request = struct.pack("hhqqi", ltype, os.SEEK_SET, 0, 0, 0)
        try:
            fcntl.fcntl(fh.fileno(), _OFD_SETLKW if wait else _OFD_SETLK, request)
            return True
        except (BlockingIOError, PermissionError):
            return False
        except OSError as exc:
            if exc.errno not in (22, 95):  # EINVAL/EOPNOTSUPP: no OFD locks here, use POSIX locks below
                raise
    op = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}[kind]
    try:
        fcntl.lockf(fh, op if wait or kind == "un" else op | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False


class _Held:
    def __init__(self, fh: IO, kind: str) -> None:
        self.fh, self.kind, self.count = fh, kind, 1


_held: dict[str, _Held] = {}
_held_guard = threading.RLock()


def _forget_in_child() -> None:
    """In a forked child: close the inherited lock files and forget them. An open-file-description lock is shared
    with every copy of its descriptor, so a child that outlived its parent (a pruner's stray grandchild) would
    otherwise keep the parent's claims; the child never held them itself."""
    global _held_guard
    for held in _held.values():
        if held.fh is not None:
            try:
                held.fh.close()  # the child's copy only: the parent's lock stays
            except OSError:
                pass
    _held.clear()
    _held_guard = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _stamp(fh: IO) -> None:
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()} {dt.datetime.now(dt.timezone.utc).isoformat()}\n")
        fh.flush()
    except OSError:  # a lock file we may only read (a shared lock in a read-only folder): no stamp
        pass


class LockWarning(UserWarning):
    """A shared lock could not be taken (a lock file this user cannot open): read without it."""


def _open(path: Path, kind: str) -> IO | None:
    """The lock file, opened for what the lock needs (never following a symbolic link, never blocking on a FIFO);
    None when a shared lock cannot even open it (another user's lock file, a read-only folder without one): the
    caller then reads without the lock, with a LockWarning. A lock path that is not a regular file is an error."""
    nofollow = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o666)
        mode = "r+"
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise BenchError(f"{path} is a symbolic link where a lock file belongs: remove it") from None
        try:
            if kind == "ex":
                raise
            fd = os.open(path, os.O_RDONLY | nofollow)
            mode = "r"
        except OSError as again:
            if kind == "ex":
                raise
            warnings.warn(LockWarning(f"cannot open the lock {path} ({again.strerror or again}): reading without "
                                      f"it, so a compaction running now could show a partial view"), stacklevel=4)
            return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BenchError(f"{path} is not a regular file (a directory, FIFO or device where a lock file belongs): "
                         f"remove it")
    return os.fdopen(fd, mode)


def acquire(path: Path, kind: str = "ex", wait: bool = True, poll_s: float = 0.2,
            timeout_s: float | None = None) -> bool:
    """Take the lock ``path`` (``kind`` 'ex' or 'sh'); re-entrant within the process. Waits unless ``wait`` is
    False (then returns False when another process holds it); raises LockTimeout after ``timeout_s``."""
    key = os.path.abspath(path)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            if held.kind == "sh" and kind == "ex":
                raise RuntimeError(f"lock {path}: this process holds it shared and asks for it exclusively "
                                   f"(release it first: upgrading could deadlock)")
            held.count += 1
            return True
        fh = _open(Path(path), kind)
        if fh is None:
            _held[key] = _Held(None, kind)
            return True
        start = time.monotonic()
        try:
            if wait and timeout_s is None:
                got = _fcntl_lock(fh, kind, wait=True)
            else:
                while not (got := _fcntl_lock(fh, kind, wait=False)):
                    if not wait:
                        break
                    if time.monotonic() - start > timeout_s:
                        raise LockTimeout(f"timed out after {timeout_s:.0f} s waiting for the lock {path}")
                    time.sleep(poll_s)
        except BaseException:
            fh.close()
            raise
        if not got:
            fh.close()
            return False
        if kind == "ex":
            _stamp(fh)
        _held[key] = _Held(fh, kind)
        return True


def held(path: Path) -> str | None:
    """'ex' or 'sh' when this process holds the lock ``path``, else None."""
    with _held_guard:
        entry = _held.get(os.path.abspath(path))
        return entry.kind if entry is not None else None


def release(path: Path) -> None:
    key = os.path.abspath(path)
    with _held_guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _held[key]
        if held.fh is not None:
            try:
                _fcntl_lock(held.fh, "un", wait=False)
            finally:
                held.fh.close()


@contextmanager
def file_lock(path: Path, poll_s: float = 0.2, timeout_s: float | None = None, shared: bool = False) -> Iterator[None]:
    """A lock on ``path`` (created if missing), waited for; exclusive unless ``shared``; released on exit or when
    the holder dies."""
    acquire(Path(path), "sh" if shared else "ex", wait=True, poll_s=poll_s, timeout_s=timeout_s)
    try:
        yield
    finally:
        release(Path(path))


class Claim:
    """A non-blocking exclusive claim on a run: ``acquired`` tells whether this process holds it. The local
    runner, its worker processes and SLURM array tasks all claim a run through this class."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self.acquired = acquire(self._path, "ex", wait=False)

    def release(self) -> None:
        if self.acquired:
            self.acquired = False
            release(self._path)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
