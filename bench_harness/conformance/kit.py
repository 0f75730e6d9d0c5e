"""The kit's loop over its cases (each model at each sparsity) and its report."""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bench_harness.config.suite import needs_pretrained
from bench_harness.conformance.checks import Case, CaseDone, Check, NotRun, Setting, check_case
from bench_harness.conformance.models import MODELS
from bench_harness.conformance.standins import Pretraining, describe, describe_params, kit_params
from bench_harness.contract.pruner import Pruner
from bench_harness.interrupts import watch_sigint

SPARSITIES = (0.5, 0.9)


@dataclass
class Report:
    """What the kit found: the checks that ran (passed or failed), those it could not run and why."""

    pruner: str
    standins: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    not_run: list[NotRun] = field(default_factory=list)
    cases: list[CaseDone] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""  # why the kit ended before its last case (a time limit, the pruner ended the process)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def record(self, event: Any) -> None:
        """Keep a check, a check not run or a finished case (progress steps are not kept)."""
        if isinstance(event, Check):
            self.checks.append(event)
        elif isinstance(event, NotRun):
            self.not_run.append(event)
        elif isinstance(event, CaseDone):
            self.cases.append(event)


def run_kit(cls: type[Pruner], params: Any = None, sparsities: tuple[float, ...] = SPARSITIES,
            models: tuple[str, ...] = tuple(MODELS), listener: Callable[[Any], None] | None = None,
            given: Mapping[str, Any] | None = None) -> Report:
    """Run every case of the kit on ``cls`` with ``params`` (default: its ``check_params`` over its defaults, then
    ``given``); each record (a progress step, a check, a check not run, a finished case) goes to ``listener`` as
    it is made."""
    report = Report(cls.name, describe(cls))
    if params is None:
        params = kit_params(cls, given)
        report.standins += [line for line in [describe_params(cls, given)] if line]
    t0 = time.perf_counter()

    def emit(event: Any) -> None:
        report.record(event)
        if listener is not None:
            listener(event)

    with watch_sigint(), one_thread(), tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        setting = Setting(cls, params, Path(tmp) / "artifacts", Pretraining() if needs_pretrained(cls) else None)
        for model_name in models:
            for sparsity in sparsities:
                workdir = Path(tmp) / f"{model_name}-{sparsity}"
                workdir.mkdir()
                check_case(setting, model_name, sparsity, workdir, Case(model_name, sparsity, emit))
    report.seconds = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def one_thread():
    """One intra-op thread while the kit runs: its models are tiny, and on a busy machine more threads spend
    their time waiting for each other (an AutoSparse case took 5 s with one thread, 30 s with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_pruner(cls: type[Pruner], params: Any = None, sparsities: tuple[float, ...] = SPARSITIES,
                 models: tuple[str, ...] = tuple(MODELS)) -> list[Check]:
    """The checks that ran (see :func:`run_kit`)."""
    return run_kit(cls, params, sparsities, models).checks
