"""Registered as the issue-27 pruners land (this module exists so that the entry point resolves)."""
from __future__ import annotations

from bench_harness import hookimpl


@hookimpl
def bench_register_pruners():
    return []
