"""`bench check-plugin` on the built-in pruners of issue 27 (the others are checked beside their own tests): the
during-training ones train the kit's models with their mask updater and must resume to the same masks."""
from __future__ import annotations

import pytest

from bench_harness.conformance import check_pruner
from bench_harness.contract.plugins import get_registry


@pytest.mark.parametrize("name", ["gmp", "rigl", "set", "static_sparse", "ntksap", "ntksap_data"])
def test_the_builtin_pruner_passes_the_conformance_kit(name):
    cls = get_registry().get("pruner", name)
    checks = check_pruner(cls, sparsities=(0.5, 0.9))
    failed = [(c.name, c.detail) for c in checks if not c.passed]
    assert not failed, failed
    if name in ("gmp", "rigl", "set"):
        assert "resumes after an interruption with the same masks" in {c.name for c in checks}
