"""The pruner contract: what a pruner declares, what it receives, what it returns.

A pruner is a subclass of :class:`Pruner` registered by a plugin through ``bench_register_pruners``.
The core builds it with its hyperparameters (an instance of its ``Params`` dataclass), then calls
``prune(model, sparsity, ctx)`` once per run. ``sparsity`` is the target fraction of *removed* weights
over the prunable set (``ctx.prunable``); density = 1 - sparsity.

``prune`` returns either a dict ``{parameter name: bool tensor}`` covering exactly ``ctx.prunable`` or a
:class:`PruneResult` (to declare that weights were changed). ``True`` means *kept*. The core validates the
masks (names, shapes, dtype, achieved sparsity vs target within ``sparsity_tolerance``), then applies them.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from bench_harness.cache import ArtifactCache


class Regime(str, enum.Enum):
    """When in a network's life a pruner acts."""

    NONE = "none"  # no pruning (the dense reference)
    AT_INIT = "at_init"  # prune a randomly initialised network, then train
    POST_TRAINING = "post_training"  # prune a pretrained network (possibly reconstruct), little or no training
    MASK_LEARNING = "mask_learning"  # learn a mask over frozen random weights
    ITERATIVE = "iterative"  # train-prune cycles (uses ctx.train)


class Granularity(str, enum.Enum):
    UNSTRUCTURED = "unstructured"
    N_M = "n:m"


@dataclass(frozen=True)
class Requirements:
    """What a pruner needs from the run."""

    data: bool = False  # scoring/calibration batches in ctx.batches
    labels: bool = False  # the batches must carry true labels
    pretrained: bool = False  # the model must be trained before pruning


@dataclass
class NoParams:
    """A pruner without hyperparameters."""


@dataclass
class PruneResult:
    """What ``Pruner.prune`` may return instead of a plain mask dict."""

    masks: dict[str, torch.Tensor]
    weights_changed: bool = False  # e.g. post-training reconstruction wrote new weights
    weights_frozen: bool = False  # mask learning: weights must not be trained afterwards
    info: dict[str, Any] = field(default_factory=dict)  # free-form, stored as JSON in the result row


@dataclass
class PruneContext:
    """Everything a pruner receives besides the model and the target sparsity."""

    prunable: dict[str, nn.Parameter]  # name -> parameter: the masks must cover exactly these names
    device: torch.device
    generator: torch.Generator  # seeded; use it for every random draw
    seed: int = 0
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None  # scoring/calibration data
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None  # (C, H, W) of one example
    # train(model, masks=None, epochs=None, start_epoch=0): trains in place under the suite's recipe (epochs None:
    # the recipe's), the lr schedule resumed at start_epoch, pruned weights kept at zero.
    train: Callable[..., Any] | None = None
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    # The unshuffled, unaugmented-or-as-configured training set the scoring batches were drawn from, for
    # pruners that select their own subset (e.g. PX: the first k images of each class). May be None.
    dataset: Any = None

    def data(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the scoring batches (moved to ``device``); a clear error if there are none."""
        if self.batches is None:
            raise ValueError(
                "this pruner needs data but none was given: pass data=... to bench_harness.prune, "
                "or set a data set in the suite"
            )
        for x, y in self.batches():
            yield x.to(self.device), y.to(self.device)


class Pruner:
    """Base class of every pruner. Subclasses set the class attributes and implement :meth:`prune`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    regime: ClassVar[Regime] = Regime.AT_INIT
    requires: ClassVar[Requirements] = Requirements()
    granularity: ClassVar[Granularity] = Granularity.UNSTRUCTURED
    Params: ClassVar[type] = NoParams
    sparsity_tolerance: ClassVar[float] = 1e-3  # |achieved - target| allowed over the prunable set
    ignores_sparsity: ClassVar[bool] = False  # True for the dense reference: one run, no sparsity axis
    changes_weights: ClassVar[bool] = False  # declares that prune() may write weights

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def make_params(cls, values: Mapping[str, Any] | None) -> Any:
        """Build the ``Params`` dataclass from a mapping; unknown keys raise ``ValueError`` naming them."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(values) - known)
        if unknown:
            hint = f"known parameters: {', '.join(sorted(known))}" if known else "it takes no parameters"
            raise ValueError(f"pruner {cls.name!r} has no parameter {', '.join(map(repr, unknown))} ({hint})")
        return cls.Params(**values)

    @classmethod
    def param_help(cls) -> dict[str, tuple[Any, str]]:
        """name -> (default, help text) of every hyperparameter."""
        out = {}
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out[f.name] = (default, f.metadata.get("help", ""))
        return out

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> dict[str, torch.Tensor] | PruneResult:
        raise NotImplementedError


def param(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text: ``rounds: int = param(100, "number of pruning rounds")``."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def iter_batches(data: Iterable | torch.Tensor | None) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None:
    """Turn user data (a DataLoader, a list of (x, y), a tensor of inputs, or (x, y)) into a batch factory."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return lambda: iter([(data, torch.zeros(len(data), dtype=torch.long))])
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return lambda: iter([data])

    def factory():
        for item in data:
            if isinstance(item, torch.Tensor):
                yield item, torch.zeros(len(item), dtype=torch.long)
            else:
                yield item[0], item[1]

    return factory
