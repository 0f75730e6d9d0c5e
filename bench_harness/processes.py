"""Child processes: how one ended, and making one die with its parent."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def describe_exit(exitcode: int | None) -> str:
    """'exit code N' or 'signal N (SIGNAME)' for a multiprocessing exit code (negative: killed by a signal)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-exitcode} ({name})"
    return f"exit code {exitcode}"


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` ends, however it ends (kill -9 included): on Linux the kernel
    sends SIGKILL (prctl PR_SET_PDEATHSIG); everywhere a daemon thread checks the parent every second and exits the
    process when it is gone (re-parented). Call it first thing in a worker process."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
