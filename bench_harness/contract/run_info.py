"""What a pruner may know about the suite run it works in: a frozen, read-only view of the run.

The core gives it as ``PruneContext.run`` (None in the Python API, where there is no suite) and as the ``run``
argument of ``Pruner.stages(params, run)``. It names the run's model, data set, seed, target sparsity, the
suite's recipe, scoring and pretraining, and where data sets are read from; it carries copies, so nothing a
plugin does to it reaches the run or its identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ComponentInfo:
    """A model or data set of the run: its registered name and the parameters the suite gives it."""

    name: str
    params: dict[str, Any]  # a copy of the suite's parameters
    weights: str | None = None  # models: the model entry's pretrained weights (file:..., torchvision:..., timm)


@dataclass(frozen=True)
class RunInfo:
    """A suite run as a pruner sees it (read-only)."""

    suite: str
    run_id: str
    model: ComponentInfo
    dataset: ComponentInfo
    seed: int
    sparsity: float  # the target: fraction of the prunable weights removed
    recipe: Any  # the suite's training recipe (a frozen Recipe: epochs, lr, batch_size, ...)
    scoring: Any  # the scoring/calibration data settings (a frozen Scoring)
    pretrain: Any = None  # the suite's pretraining recipe (a frozen Recipe), None when it has none
    ablation: str | None = None  # shuffle, reinit, invert or None
    data_root: str = "data"  # where data sets are read from (absolute in a suite run)
    download: bool = False  # whether missing data sets may be downloaded
