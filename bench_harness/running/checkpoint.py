"""Training checkpoints of a run, for preemption-safe resumption.

Saved atomically in the run's work folder (``<results>/<suite>/work/<run_id>/``):

- ``pruned.pt`` after pruning: the pruned model, masks, the part of the result row computed before training
  and the training plan, so a resumed run never prunes again;
- ``train.pt`` at every epoch end of the training after pruning, and ``fit-NNN.pt`` for every training a
  pruner does through the training service (see :mod:`bench_harness.running.trainer`): model and optimizer state,
  every RNG state (torch, CUDA, Python, NumPy) and the training loader's generator,

so that a resumed run computes exactly what an uninterrupted one would (bit for bit on a deterministic CPU run).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from bench_harness import paths
from bench_harness.atomic import atomic_write


def checkpoint_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    """The epoch checkpoint of the training after pruning."""
    return work_dir(results_root, suite, run_id) / "train.pt"


def pruned_path(results_root: str | Path, suite: str, run_id: str) -> Path:
    """The state right after pruning."""
    return work_dir(results_root, suite, run_id) / "pruned.pt"


def work_dir(results_root: str | Path, suite: str, run_id: str) -> Path:
    return paths.run_dir(results_root, suite, run_id)


def clear(results_root: str | Path, suite: str, run_id: str) -> None:
    """Remove a finished run's checkpoints (its artifact folder and lock stay)."""
    folder = work_dir(results_root, suite, run_id)
    if folder.is_dir():
        for f in folder.glob("*.pt"):
            f.unlink(missing_ok=True)


def rng_state(loader_generator: torch.Generator | None) -> dict[str, Any]:
    state = {"torch": torch.random.get_rng_state(), "python": random.getstate(),
             "loader": loader_generator.get_state() if loader_generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("loader") is not None and loader_generator is not None:
        loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a damaged checkpoint: start the run again
        return None
