"""`bench check-plugin`: a conformance kit for pruners.

It runs a pruner on tiny models (an MLP, a conv net with BatchNorm, a residual net) at two sparsities, giving it
tiny stand-ins for what it requests (:mod:`.standins`: scoring data, the core's training service with a tiny
recipe, a tiny pretraining, a real stage artifact store in a temporary folder), checks the contract
(:mod:`.checks`) and reports which checks ran, passed or failed, and which it could not run and why
(:mod:`.kit`); `bench check-plugin` runs it in a child process with progress lines and a time limit
(:mod:`.child`, :mod:`.output`).
"""
from bench_harness.conformance.checks import Check, NotRun
from bench_harness.conformance.child import check_pruner_in_child
from bench_harness.conformance.kit import Report, check_pruner, run_kit
from bench_harness.conformance.models import MODELS
from bench_harness.conformance.standins import RECIPE, kit_params

__all__ = ["MODELS", "RECIPE", "Check", "NotRun", "Report", "check_pruner", "check_pruner_in_child", "kit_params",
           "run_kit"]
