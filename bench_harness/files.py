"""Opening files that live in shared folders (results, work folders) without trusting what they are.

A results folder on a cluster is writable by a group, and a file in it may be a FIFO (opening it for reading
blocks forever), a symbolic link (to ``/dev/zero``, to another user's file), a directory, or huge. The harness's
own files are regular files it wrote itself, so anything else is refused before a byte is read.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from typing import BinaryIO


class NotARegularFile(ValueError):
    """The path is a symbolic link, FIFO, device or directory, not a file the harness wrote."""


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading in binary mode, refusing (NotARegularFile) anything but a regular file reached
    without following a symbolic link, or one larger than ``max_bytes``. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symbolic link
            raise NotARegularFile(f"{os.fspath(path)} is a symbolic link, not a file the harness wrote") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{os.fspath(path)} is not a regular file (mode {stat.filemode(st.st_mode)})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotARegularFile(f"{os.fspath(path)} is {st.st_size:,} bytes, more than the {max_bytes:,} expected")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
