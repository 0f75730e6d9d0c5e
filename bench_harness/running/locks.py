"""Moved to :mod:`bench_harness.locks` (the ground floor: the results store, artifacts and data sets lock too)."""
from bench_harness.locks import Claim, LockTimeout, file_lock  # noqa: F401
