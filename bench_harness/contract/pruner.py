"""The pruner contract: what a pruner declares, what it receives, what it returns.

A pruner is a subclass of :class:`Pruner` registered by a plugin through ``bench_register_pruners``.
The core builds it with its hyperparameters (an instance of its ``Params`` dataclass), then calls
``prune(model, sparsity, ctx)`` once per run. ``sparsity`` is the target fraction of *removed* weights
over the prunable set (``ctx.prunable``); density = 1 - sparsity.

What a pruner declares (class attributes):

- ``regime``: when in a network's life it acts (:class:`Regime`); it alone says what follows from it (derived
  on every subclass, never declared twice): ``NONE`` is the dense reference (``ignores_sparsity``: one run, no
  sparsity axis), ``POST_TRAINING`` requires a pretrained model (``requires.pretrained``) and, by default, no
  training after pruning, ``MASK_LEARNING`` freezes the weights (``PruneResult.weights_frozen``: no training
  after pruning), ``DURING_TRAINING`` changes the masks while the run trains (``prune()`` returns the initial masks
  and a :class:`MaskUpdater` in ``PruneResult.updater``; the target sparsity is checked on the masks training ends
  with). A class that still declares ``ignores_sparsity`` is accepted when it agrees with its regime and
  refused (TypeError naming the fix) when it contradicts it.
- ``requires``: :class:`Requirements`: scoring/calibration data, true labels, a pretrained model (any regime may
  ask for one; ``POST_TRAINING`` always has it). Pretraining is per pruner: a run gets pretrained weights only
  when its pruner requires them (from the model entry's ``weights:`` or the suite's ``pretrain:`` recipe), never
  because the suite has a ``pretrain:`` section.
- ``granularity``: the sparsity pattern of its masks (:class:`Granularity`); a pruner whose pattern depends on
  its parameters (an ``nm`` parameter) overrides :meth:`Pruner.granularity_of`. Recorded per run (column
  ``granularity``).
- ``sparsity_kind``: :class:`SparsityKind`: ``exact`` (the mask hits the target; checked within
  ``sparsity_tolerance``), ``target`` (aims at it; off by more than the tolerance is a warning and a flag, not a
  failure) or ``learned`` (the method decides; validated for sanity only, and leaderboards, plots and paired
  comparisons bin such runs by achieved sparsity).
- ``changes_weights`` (prune may write weights), ``version`` (part of the run id when not "1"),
  ``Params`` (a dataclass of hyperparameters, fields made with :func:`param`).

What a pruner receives: the model (on the run's device; pretrained when required), the target sparsity and a
:class:`PruneContext`: the prunable weights, a seeded generator, scoring/calibration batches (``ctx.data()``),
the training loader, the training service ``ctx.trainer`` (see :mod:`bench_harness.running.trainer`: the suite's recipe,
parameter groups, a loss override, progress, NaN detection, per-epoch checkpoints resumed after preemption),
the stage artifact store ``ctx.artifacts`` (see :mod:`bench_harness.contract.artifacts`), a per-run folder
``ctx.run_dir`` for files of its own, and the harness's services ``ctx.services`` (see
:mod:`bench_harness.contract.services`): a registered model, data set or training loader built as a run builds
it (e.g. a teacher of another model or data set), and another registered pruner run as the core runs it (e.g. a
mask to start from). A plugin never needs the registry or the runner's modules.

What it returns: a dict ``{parameter name: bool tensor}`` covering exactly ``ctx.prunable`` (``True`` =
kept), or a :class:`PruneResult` that also says whether weights were changed, how the run trains
afterwards (``train_epochs``, ``train_from_epoch``) and free-form ``info``. The core validates the masks
(names, shapes, dtype, sparsity by kind) and the weights (finite), applies the masks and trains.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from bench_harness.contract.artifacts import ArtifactStore, MemoryArtifactStore
from bench_harness.contract.params import param, params_adapter, validate_params  # noqa: F401 (param: its old home)
from bench_harness.contract.run_info import RunInfo


class Regime(str, enum.Enum):
    """When in a network's life a pruner acts."""

    NONE = "none"  # no pruning (the dense reference)
    AT_INIT = "at_init"  # prune a randomly initialised network, then train
    POST_TRAINING = "post_training"  # prune a pretrained network (possibly reconstruct), little or no training
    MASK_LEARNING = "mask_learning"  # learn a mask over frozen random weights
    ITERATIVE = "iterative"  # train-prune cycles (uses ctx.train)
    # the masks change while the run trains: prune() returns the initial masks and a MaskUpdater (GMP, SET, RigL)
    DURING_TRAINING = "during_training"


class SparsityKind(str, enum.Enum):
    """How a pruner's achieved sparsity relates to the run's target."""

    EXACT = "exact"  # the mask hits the target within ``sparsity_tolerance`` (else the run fails)
    TARGET = "target"  # aims at the target; off by more than the tolerance: a warning and a flag
    LEARNED = "learned"  # the method decides; any sparsity in [0, 1) is accepted, binned by achieved sparsity


class Granularity(str, enum.Enum):
    """The sparsity pattern of a pruner's masks."""

    UNSTRUCTURED = "unstructured"  # any weight may be removed
    N_M = "n:m"  # N kept of every M consecutive weights (of a group the pruner defines)


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
class MaskUpdate:
    """What the core passes to :meth:`MaskUpdater.update` after an optimizer step at which the updater updates."""

    step: int  # training steps so far (1-based; this step's optimizer step is done, or skipped: ``skips_step``)
    total_steps: int  # optimizer steps of the whole training after pruning (epochs x steps_per_epoch)
    steps_per_epoch: int
    model: nn.Module  # its prunable weights are masked by ``masks``
    masks: dict[str, torch.Tensor]  # the current masks (bool, True = kept), keyed like ``prunable``: do not modify
    prunable: dict[str, nn.Parameter]
    # ``needs_dense_grad``: d loss / d weight of this step's batch for every entry, pruned ones included (the
    # "dense gradient" of RigL, taken before the masks zero it); otherwise None
    grads: dict[str, torch.Tensor] | None
    optimizer: torch.optim.Optimizer
    # seeded from the run's seed and checkpointed with the training: draw every random number of an update from it
    generator: torch.Generator


class MaskUpdater:
    """Changes the masks while a run trains; what a ``Regime.DURING_TRAINING`` pruner returns in
    :attr:`PruneResult.updater` besides the initial masks.

    After every optimizer step the core keeps pruned weights at zero; after each step for which
    :meth:`is_update_step` is true it calls :meth:`update`. New masks are checked (names, shapes, dtype); the core
    then zeroes the weights of entries pruned now and resets the optimizer state (momentum, Adam moments: every
    per-parameter state tensor shaped like the weight) of every entry whose mask changed, as the RigL reference does
    for grown connections (a regrown weight starts from the value ``update`` left in it: zero unless it wrote one).
    Each update is logged in the row's ``pruner_info`` (``mask_updates``). The masks, :meth:`state_dict` and
    ``MaskUpdate.generator`` are checkpointed at every epoch end: a preempted run calls ``prune()`` again (it must
    be deterministic given ``ctx.generator``) and resumes its training with the masks and updater state it had.
    """

    needs_dense_grad: ClassVar[bool] = False  # update() needs MaskUpdate.grads (costs a copy at update steps only)
    # True: at an update step the optimizer step is skipped and the masks are updated instead, from that step's
    # gradients, as the RigL reference and JaxPruner do (``cond(update, mask_update, apply_gradients)``); False:
    # the optimizer steps, then the masks are updated
    skips_step: ClassVar[bool] = False

    def is_update_step(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        """Whether :meth:`update` is called after optimizer step ``step`` (1-based)."""
        raise NotImplementedError

    def update(self, u: MaskUpdate) -> dict[str, torch.Tensor] | None:
        """The new masks (None: unchanged); may write the weights of grown entries (e.g. an initial value)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the updater must keep across a preemption (numbers, strings, tensors, lists and dicts of them)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (called before training resumes)."""

    def info(self) -> dict[str, Any]:
        """Extra JSON for the row's ``pruner_info`` once training ends."""
        return {}


@dataclass
class PruneResult:
    """What ``Pruner.prune`` may return instead of a plain mask dict."""

    masks: dict[str, torch.Tensor]
    weights_changed: bool = False  # e.g. post-training reconstruction wrote new weights
    # Filled by the core from the regime: MASK_LEARNING freezes the weights (no training follows). A pruner need not
    # set it; a value that contradicts its regime fails the run.
    weights_frozen: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)  # free-form, stored as JSON in the result row
    # How the run trains after pruning: schedule epochs [train_from_epoch, train_epochs). train_epochs None: the
    # recipe's epochs, except for POST_TRAINING and MASK_LEARNING pruners (0: no fine-tuning). Rewinding to
    # epoch k sets train_from_epoch=k so that the lr schedule resumes at k instead of restarting.
    train_epochs: int | None = None
    train_from_epoch: int = 0
    # The basis the target sparsity is counted on: "prunable" (zeros among the prunable weights, the harness's
    # convention) or "all" (zeros among all trainable parameters, e.g. the official SNOWS target, which prunes
    # only some layers); the core validates the masks on that basis.
    sparsity_of: str = "prunable"
    # Storage of the pruned model in bits, when the method has its own format (e.g. a strong lottery ticket: one
    # bit per free weight plus the seeds). None: the core's sparse format (32 bits per non-zero parameter plus a
    # 1-bit mask over the prunable weights).
    storage_bits: int | None = None
    achieved_sparsity: float | None = None  # filled by the core (over the prunable set)
    # Regime.DURING_TRAINING: changes ``masks`` (the initial ones) while the run trains; the target sparsity is
    # checked on the masks training ends with
    updater: MaskUpdater | None = None


def training_plan(result: PruneResult, regime: Regime, recipe_epochs: int) -> tuple[int, int]:
    """(end epoch, start epoch) of the run's training after pruning: none for frozen weights (mask learning)."""
    if regime == Regime.MASK_LEARNING:
        return 0, 0
    end = result.train_epochs
    if end is None:
        end = 0 if regime in (Regime.POST_TRAINING, Regime.MASK_LEARNING) else recipe_epochs
    start = result.train_from_epoch
    if not 0 <= start <= max(end, start) or (end and start > end):
        raise ValueError(f"train_from_epoch {start} lies beyond train_epochs {end}")
    return int(end), int(start)


@dataclass(frozen=True)
class Stage:
    """A stage whose artifact several runs share (e.g. an IMP teacher, a trained predictor).

    ``produce(ctx)`` receives the :class:`PruneContext` of the first run that needs the artifact (its model,
    data and training service; the model is the run's freshly initialised one — copy it if the stage trains it)
    and returns the payload: tensors, numbers, strings and dicts/lists of them. It must be a module-level
    function (a SLURM stage job pickles it). ``config`` identifies the artifact: runs whose stages have equal
    names and configs share one artifact, whatever suite they belong to.
    """

    name: str
    config: Mapping[str, Any]
    produce: Callable[[PruneContext], Any]


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
    # The training service (bench_harness.running.trainer.Trainer): the suite's recipe, checkpoints, progress. None when
    # the pruner runs without training data (Python API without train_data=).
    trainer: Any = None
    train_loader: Any = None  # the run's (shuffled, augmented as the recipe says) training loader
    artifacts: ArtifactStore = field(default_factory=MemoryArtifactStore)  # stage artifacts (shared, hashed)
    run_dir: Path | None = None  # a folder of this run's own (kept with its results); None in the Python API
    # The unshuffled, unaugmented-or-as-configured training set the scoring batches were drawn from, for
    # pruners that select their own subset (e.g. PX: the first k images of each class). May be None.
    dataset: Any = None
    pretrained: bool = False  # the model holds pretrained weights
    run: RunInfo | None = None  # the suite run, read only (model/data set, seed, recipe...); None in the Python API
    model: nn.Module | None = None  # the model being pruned (stage producers copy it; prune() receives it anyway)
    # The harness's services (bench_harness.contract.services.Services): build a model, a data set or a training
    # loader as a run would, run another registered pruner. make_context always sets them.
    services: Any = None

    def data(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the scoring batches (moved to ``device``); a clear error if there are none."""
        if self.batches is None:
            raise ValueError(
                "this pruner needs data but none was given: pass data=... to bench_harness.prune, "
                "or set a data set in the suite"
            )
        for x, y in self.batches():
            yield x.to(self.device), y.to(self.device)

    def stage(self, stage: Stage) -> Any:
        """The artifact of ``stage``: loaded if stored, else produced now (once, under a lock) and stored."""
        return self.artifacts.get(stage.name, stage.config, lambda: stage.produce(self))

    def require_trainer(self, who: str) -> Any:
        if self.trainer is None:
            raise ValueError(f"{who} trains and needs the training service: run it in a suite, or call "
                             f"bench_harness.prune(..., train_data=<DataLoader>, recipe={{'epochs': N, ...}})")
        return self.trainer

    def train(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, epochs: int | None = None,
              start_epoch: int = 0):
        """Shorthand of ``ctx.trainer.fit(model, masks=masks, epochs=epochs, start_epoch=start_epoch)``."""
        return self.require_trainer("this pruner").fit(model, masks=masks, epochs=epochs, start_epoch=start_epoch)


class Pruner:
    """Base class of every pruner. Subclasses set the class attributes and implement :meth:`prune`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    regime: ClassVar[Regime] = Regime.AT_INIT
    requires: ClassVar[Requirements] = Requirements()
    granularity: ClassVar[Granularity] = Granularity.UNSTRUCTURED
    Params: ClassVar[type] = NoParams
    sparsity_kind: ClassVar[SparsityKind] = SparsityKind.EXACT
    sparsity_tolerance: ClassVar[float] = 1e-3  # |achieved - target| allowed over the prunable set
    changes_weights: ClassVar[bool] = False  # declares that prune() may write weights
    # Derived from ``regime`` on every subclass (see the module docstring), never declared:
    ignores_sparsity: ClassVar[bool] = False  # regime NONE (the dense reference): one run, no sparsity axis

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("ignores_sparsity")
        dense = cls.regime == Regime.NONE
        if declared is not None and bool(declared) != dense:
            raise TypeError(f"pruner class {cls.__qualname__}: ignores_sparsity = {declared!r} contradicts regime "
                            f"{cls.regime.value!r}; the regime decides (Regime.NONE: the dense reference, no sparsity "
                            f"axis): remove ignores_sparsity and set the regime")
        cls.ignores_sparsity = dense
        if cls.regime == Regime.POST_TRAINING and not cls.requires.pretrained:
            cls.requires = dataclasses.replace(cls.requires, pretrained=True)

    # Hyperparameters `bench check-plugin` runs the pruner with, over its defaults: a setting that keeps every
    # code path but fits the kit's tiny models and its minute on a CPU (e.g. a small predictor, fewer rounds).
    check_params: ClassVar[Mapping[str, Any]] = {}
    # A pruner that exists for tests (it fails, crashes or is bad on purpose): `bench plugins` and the lists of
    # available names leave it out (`bench plugins --all` shows it); a suite can still name it.
    test_only: ClassVar[bool] = False

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def granularity_of(cls, params: Any) -> Granularity:
        """The granularity of this pruner's masks with these parameters (default: the declared ``granularity``);
        override it when a parameter chooses the pattern."""
        return cls.granularity

    @classmethod
    def make_params(cls, values: Mapping[str, Any] | None) -> Any:
        """Build the ``Params`` dataclass from a mapping, validated by pydantic against its annotations (types,
        ``Literal`` allowed values, ``Annotated`` ranges); a bad key or value raises ``ValueError`` naming the
        parameter and what is allowed."""
        return validate_params(cls.name, cls.Params, values)

    @classmethod
    def param_help(cls) -> dict[str, tuple[Any, str]]:
        """name -> (default, help text) of every hyperparameter."""
        out = {}
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out[f.name] = (default, f.metadata.get("help", ""))
        return out

    @classmethod
    def stages(cls, params: Any, run: RunInfo) -> list[Stage]:
        """The stage artifacts a run of this pruner uses (``params``: its validated parameters, ``run``: the
        suite run, read only). The SLURM executor produces the missing ones in stage jobs before the runs' arrays
        (``--dependency=afterok``); locally they are produced by the first run that asks ``ctx.stage(...)`` for
        them. Default: none."""
        return []

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> dict[str, torch.Tensor] | PruneResult:
        raise NotImplementedError


_params_adapter = params_adapter  # the name it had here


def params_json_schema(params_cls: type) -> dict[str, Any]:
    """The JSON Schema of a pruner's ``Params`` (for editors; `bench validate --schema`)."""
    try:
        return _params_adapter(params_cls).json_schema()
    except Exception:
        return {"type": "object"}


def iter_batches(
    data: Iterable | torch.Tensor | None,
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None:
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
