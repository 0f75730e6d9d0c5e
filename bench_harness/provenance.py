"""Where a result came from: versions, commit, device, host."""
from __future__ import annotations

import functools
import socket
import subprocess
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
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
    from bench_harness import __version__

    return {
        "harness_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": device_name(device),
        "host": socket.gethostname(),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from bench_harness.errors import BenchError

        raise BenchError(f"device {name!r} was asked for but CUDA is not available here: set `device: auto` "
                         f"or `device: cpu` in the suite")
    return device
