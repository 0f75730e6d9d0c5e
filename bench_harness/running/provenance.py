"""Where a result came from: versions, commit, device, host."""
from __future__ import annotations

import functools
import os
import socket
import subprocess
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def provenance(device: torch.device) -> dict[str, str | None]:
    from bench_harness.version import __version__

    return {
        "harness_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": device_name(device),
        "host": socket.gethostname(),
        **slurm_provenance(),
    }


def slurm_provenance() -> dict[str, str | int | None]:
    """The SLURM job a run executed in (from the job's environment; all None outside SLURM)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    return {"slurm_job_id": f"{job}_{task}" if job and task else job,
            "slurm_array_task_id": int(task) if task and task.isdigit() else None,
            "slurm_attempt": int(restarts) + 1 if restarts and restarts.isdigit() else (1 if job else None)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from bench_harness.errors import BenchError

        raise BenchError(f"device {name!r} was asked for but CUDA is not available here: set `device: auto` "
                         f"or `device: cpu` in the suite")
    return device
