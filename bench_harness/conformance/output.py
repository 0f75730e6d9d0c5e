"""What `bench check-plugin` prints: progress lines as the checks run, then the report."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, Mapping, TextIO

from bench_harness.conformance.checks import CaseDone, Check, NotRun, Step
from bench_harness.conformance.kit import SPARSITIES, Report
from bench_harness.conformance.models import MODELS
from bench_harness.conformance.standins import describe, describe_params
from bench_harness.contract.pruner import Pruner


def check_line(c: Check) -> str:
    mark = "PASS" if c.passed else "FAIL"
    return f"{mark}  {c.model:<9} sparsity={c.sparsity:<4}  {c.name}" + (f": {c.detail}" if not c.passed else "")


def header_lines(cls: type[Pruner], given: Mapping[str, Any] | None = None) -> list[str]:
    """What the kit is about to do: its cases and the stand-ins it gives ``cls``."""
    lines = [f"check-plugin {cls.name}: {len(MODELS)} models x {len(SPARSITIES)} sparsities "
             f"({', '.join(map(str, SPARSITIES))}); stand-ins:"]
    lines += [f"  {line}" for line in describe(cls) + [describe_params(cls, given)] if line]
    return lines


def progress_printer(stream: TextIO) -> Callable[[Any], None]:
    """A listener of the kit's records that prints a line when a case starts a step, fails a check or ends."""
    t0 = time.monotonic()
    counts: Counter = Counter()

    def show(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {text}", file=stream, flush=True)

    def listen(event: Any) -> None:
        if isinstance(event, Step):
            show(f"{event.model} sparsity={event.sparsity}: {event.text}")
        elif isinstance(event, Check):
            counts[(event.model, event.sparsity, "passed" if event.passed else "failed")] += 1
            if not event.passed:
                show(check_line(event))
        elif isinstance(event, NotRun):
            counts[(event.model, event.sparsity, "not run")] += 1
        elif isinstance(event, CaseDone):
            summary = ", ".join(f"{counts[(event.model, event.sparsity, k)]} {k}" for k in ("passed", "failed",
                                                                                            "not run"))
            show(f"{event.model} sparsity={event.sparsity}: done in {event.seconds:.1f} s: {summary}")

    return listen


def report_lines(report: Report, verbose: bool = False) -> list[str]:
    """The report: failed checks (every check with ``verbose``), the checks not run grouped by reason, the
    stand-ins, and a summary line."""
    lines = [check_line(c) for c in report.checks if verbose or not c.passed]
    cases = len({(c.model, c.sparsity) for c in report.checks + report.not_run})
    groups: dict[tuple[str, str], int] = {}
    for n in report.not_run:
        if n.reason != report.stopped:
            groups[(n.name, n.reason)] = groups.get((n.name, n.reason), 0) + 1
    for (name, reason), count in groups.items():
        lines.append(f"NOT RUN  {name} ({count} of {cases} cases): {reason}")
    unreached = [n for n in report.not_run if n.reason == report.stopped]
    if unreached:
        lines.append(f"NOT RUN  {len(unreached)} checks of {len({(n.model, n.sparsity) for n in unreached})} cases "
                     f"that the kit did not finish")
    if verbose:
        lines += [f"stand-in  {line}" for line in report.standins]
    if report.stopped:
        lines.append(f"STOPPED  {report.stopped}")
    passed = len(report.checks) - len(report.failed)
    lines.append(f"{report.pruner}: {passed}/{len(report.checks)} checks passed, {len(report.not_run)} not run, "
                 f"in {report.seconds:.1f} s")
    return lines
