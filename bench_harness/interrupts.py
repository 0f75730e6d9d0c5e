"""Telling a real Ctrl-C from plugin code that raises KeyboardInterrupt or SystemExit.

A pruner (or a library it calls) may raise ``KeyboardInterrupt`` or call ``sys.exit()``; neither may end a sweep.
The user's Ctrl-C must. :func:`watch_sigint` installs a SIGINT handler that records that the signal really
arrived before raising ``KeyboardInterrupt`` as Python's default handler does; :func:`escape_from_plugin` then
says whether an exception is the user's (to re-raise) or the plugin's (to turn into a failed run).
"""
from __future__ import annotations

import contextlib
import signal
import threading

from bench_harness.errors import PluginEscapeError

_state = {"sigint": False}


def real_interrupt() -> bool:
    """True when a SIGINT reached this process since :func:`watch_sigint` was entered."""
    return _state["sigint"]


@contextlib.contextmanager
def watch_sigint():
    """Record a delivered SIGINT (then raise KeyboardInterrupt as usual); only in the main thread, where signals
    are delivered. Outside the main thread every KeyboardInterrupt counts as real."""
    if threading.current_thread() is not threading.main_thread():
        _state["sigint"] = True
        yield
        return

    def on_sigint(signum, frame):
        _state["sigint"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    _state["sigint"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def escape_from_plugin(exc: BaseException) -> PluginEscapeError | None:
    """The failure to record for a SystemExit, or for a KeyboardInterrupt that no SIGINT caused; None for anything
    else (a real Ctrl-C included, which the caller re-raises)."""
    if isinstance(exc, SystemExit):
        return PluginEscapeError(f"plugin code called sys.exit({exc.code!r}) (SystemExit) during the run; a pruner "
                                 f"must raise an exception instead")
    if isinstance(exc, KeyboardInterrupt) and not real_interrupt():
        return PluginEscapeError("plugin code raised KeyboardInterrupt although no Ctrl-C (SIGINT) arrived; a "
                                 "pruner must raise an ordinary exception instead")
    return None
