"""What the cluster allows, read from SLURM itself."""
from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass

from bench_harness.errors import BenchError


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BenchError(f"`{cmd[0]}` not found: the SLURM executor needs the SLURM client commands on PATH "
                         f"(and SLURM_CONF if the cluster's configuration is not in the default place)") from None
    if out.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


@dataclass(frozen=True)
class ClusterLimits:
    max_array_size: int  # array indices must be < MaxArraySize
    max_job_count: int
    max_submit_jobs: int | None  # per-user limit from the association or QOS, None when unlimited


def read_limits() -> ClusterLimits:
    config = _run(["scontrol", "show", "config"])

    def value(name: str, default: int) -> int:
        m = re.search(rf"^{name}\s*=\s*(\d+)", config, re.MULTILINE)
        return int(m.group(1)) if m else default

    max_submit = None
    try:
        user = getpass.getuser()
        assoc = _run(["sacctmgr", "-nP", "show", "assoc", f"user={user}", "format=maxsubmit"])
        numbers = [int(x) for x in assoc.split() if x.strip().isdigit()]
        qos = _run(["sacctmgr", "-nP", "show", "qos", "format=maxsubmitpu"])
        numbers += [int(x) for x in qos.split() if x.strip().isdigit()]
        max_submit = min(numbers) if numbers else None
    except BenchError:
        pass
    return ClusterLimits(value("MaxArraySize", 1001), value("MaxJobCount", 10000), max_submit)


def sacct_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """One batched sacct call: job id (``123`` or ``123_4``) -> {state, exit_code, reason, elapsed}."""
    if not job_ids:
        return {}
    roots = sorted({j.split("_")[0] for j in job_ids})
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(roots), "--format=JobID,State,ExitCode,Reason,Elapsed"])
    states = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job, state, code, reason, elapsed = parts[:5]
        states[job] = {"state": state.split()[0], "exit_code": code, "reason": reason, "elapsed": elapsed}
    return states


def expand_array_states(states: dict[str, dict[str, str]], job_id: str) -> dict[str, str] | None:
    """State of one array task, also when sacct shows it inside a pending range like ``123_[4-9]``."""
    if job_id in states:
        return states[job_id]
    if "_" not in job_id:
        return None
    root, index = job_id.split("_", 1)
    for key, value in states.items():
        m = re.fullmatch(rf"{root}_\[(.+)\]", key)
        if not m:
            continue
        for part in m.group(1).split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            if lo.isdigit() and (int(lo) <= int(index) <= int(hi or lo)):
                return value
    return None


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *sorted(set(job_ids))])
