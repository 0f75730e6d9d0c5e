"""Errors that name the problem and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class BenchError(Exception):
    """Base class: an error meant for the user, printed without a traceback by the CLI."""


class UnknownNameError(BenchError, KeyError):
    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        choices = sorted(choices)
        self.kind, self.name = kind, name
        msg = (f"unknown {kind} {name!r}.{did_you_mean(name, choices)} "
               f"Available: {', '.join(choices) or 'none'} (see `bench plugins`).")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PluginConflictError(BenchError):
    pass


class SuiteError(BenchError):
    def __init__(self, path: str, key: str, message: str):
        self.path, self.key = path, key
        self.problems: list[SuiteError] = [self]
        super().__init__(f"{path}: {key}: {message}")


class SuiteErrors(SuiteError):
    """Every problem found in one suite file (``problems``: a SuiteError each, in file order), one per line."""

    def __init__(self, problems: list[SuiteError]):
        self.path, self.key = problems[0].path, problems[0].key
        self.problems = list(problems)
        BenchError.__init__(self, f"{len(problems)} problems in {self.path}:\n"
                            + "\n".join(f"  {p}" for p in problems))

    @staticmethod
    def raise_if_any(problems: list[SuiteError]) -> None:
        """Nothing for no problem, the SuiteError itself for one, SuiteErrors for several."""
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise SuiteErrors(problems)


class InvalidMaskError(BenchError):
    pass


class RunFailure(BenchError):
    """A run failed for a reason that is not a bug of the harness (NaN loss, invalid mask...)."""


class DiskFullError(BenchError):
    """The results folder has no room left: the sweep stops (runs already stored stay)."""


class PluginEscapeError(RunFailure):
    """Plugin code raised SystemExit or KeyboardInterrupt (not a real Ctrl-C) during a run: a failed run."""
