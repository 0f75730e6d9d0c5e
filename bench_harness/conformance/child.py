"""The kit in a child process (spawn), as `bench check-plugin` runs it: a pruner that ends its process
(``os._exit``, a crash, a signal) fails the kit instead of ending the caller, a real Ctrl-C ends the child and is
re-raised, and a time limit ends a kit that takes too long. The child sends each record as it is made, so the
caller shows progress and, when the child ends early, knows which checks ran and which did not."""
from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Mapping

from bench_harness.conformance.checks import Check, NotRun, Step, check_names
from bench_harness.conformance.kit import SPARSITIES, Report, run_kit
from bench_harness.conformance.models import MODELS
from bench_harness.conformance.standins import describe, describe_params
from bench_harness.contract.plugins import get_registry
from bench_harness.processes import describe_exit, die_with_parent


def check_pruner_in_child(name: str, params: Mapping[str, Any] | None = None, timeout_s: float | None = None,
                          listener: Callable[[Any], None] | None = None) -> Report:
    """The kit's report on the registered pruner ``name`` with the hyperparameters ``params`` (over its
    ``check_params``), run in a child process; ``listener`` gets every record as it arrives. After ``timeout_s``
    seconds the child is ended and the checks it had not reached are reported as not run."""
    import multiprocessing as mp

    cls = get_registry().get("pruner", name)
    params = dict(params or {})
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    scratch = tempfile.mkdtemp(prefix="bench-check-")  # the child's temporary files: removed here, however it ends
    child = context.Process(target=_check_child, args=(name, params, sender, os.getpid(), scratch), daemon=True)
    t0 = time.monotonic()
    child.start()
    sender.close()
    report = Report(name, describe(cls) + [line for line in [describe_params(cls, params)] if line])
    step: Step | None = None
    outcome: Any = None
    try:
        while outcome is None:
            wait = None if timeout_s is None else max(0.0, t0 + timeout_s - time.monotonic())
            if not receiver.poll(wait):
                child.kill()
                report.stopped = f"the kit's time limit of {timeout_s:g} s ran out" + _during(step)
                break
            try:
                kind, payload = receiver.recv()
            except EOFError:
                break
            if kind == "event":
                report.record(payload)
                step = payload if isinstance(payload, Step) else step
                if listener is not None:
                    listener(payload)
            else:
                outcome = (kind, payload)
    except BaseException:
        child.kill()
        raise
    finally:
        child.join()
        _end_group(child.pid)  # what the pruner started (a fork, a DataLoader's workers) ends with the kit
        shutil.rmtree(scratch, ignore_errors=True)
    if outcome is not None and outcome[0] == "error":
        raise RuntimeError(f"the conformance kit failed in its child process: {outcome[1]}")
    if outcome is not None:
        report = outcome[1]
    elif not report.stopped:
        report.stopped = f"the pruner ended the checking process ({describe_exit(child.exitcode)})" + _during(step)
        _fail_current_case(report, cls, step, listener)
    if report.stopped:
        _not_reached(report, cls, listener)
    report.seconds = time.monotonic() - t0
    return report


def _during(step: Step | None) -> str:
    return f" during {step.model} sparsity={step.sparsity} ({step.text})" if step is not None else ""


def _fail_current_case(report: Report, cls, step: Step | None, listener) -> None:
    """The check the pruner was in when it ended the process fails (every case's first, when none began)."""
    if step is None:
        failed = Check("-", math.nan, check_names(cls)[0], False, "")
    else:
        seen = {c.name for c in report.checks + report.not_run if (c.model, c.sparsity) == (step.model, step.sparsity)}
        name = next(n for n in check_names(cls) if n not in seen)
        failed = Check(step.model, step.sparsity, name, False, "")
    failed.detail = (f"{report.stopped}: a pruner must return masks or raise an exception, never exit or crash its "
                     f"process")
    report.checks.append(failed)
    if listener is not None:
        listener(failed)


def _not_reached(report: Report, cls, listener) -> None:
    """Every check of an unfinished case that has no record yet: not run, because the kit stopped."""
    finished = {(c.model, c.sparsity) for c in report.cases}
    for model in MODELS:
        for sparsity in SPARSITIES:
            if (model, sparsity) in finished:
                continue
            seen = {c.name for c in report.checks + report.not_run if (c.model, c.sparsity) == (model, sparsity)}
            for name in check_names(cls):
                if name not in seen:
                    skipped = NotRun(model, sparsity, name, report.stopped)
                    report.not_run.append(skipped)
                    if listener is not None:
                        listener(skipped)


def _end_group(pgid: int | None) -> None:
    """SIGKILL every process left in the child's process group (the child itself has ended)."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _check_child(name: str, params: dict, sender, parent_pid: int, scratch: str | None = None) -> None:
    die_with_parent(parent_pid)
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # a group of its own: the caller ends every process the pruner starts (see _end_group)
    if scratch is not None:
        tempfile.tempdir = scratch  # the kit's and the pruner's temporary files, removed by the caller
    try:
        cls = get_registry().get("pruner", name)
        outcome: Any = ("done", run_kit(cls, given=params, listener=lambda event: sender.send(("event", event))))
    except Exception as exc:  # the kit itself, not the pruner (whose exceptions are checks)
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    sender.send(outcome)
    sender.close()
