"""Suite files: loading, validation with errors that name the file, the key and the fix, and expansion into runs.

A suite is YAML::

    name: quickstart
    grid:
      models: [lenet5]                    # or {name: resnet20, params: {...}, weights: "file:w.pt"}
      datasets: [fashion_mnist]           # or {name: ..., params: {...}}
      sparsities: [0.5, 0.9]              # fraction of prunable weights removed
      seeds: [0, 1]
      pruners: [dense, random, {name: magnitude, params: {scope: layerwise}}]   # an entry may add scoring: {...}
    recipe: {epochs: 2, lr: 0.05, ...}    # see Recipe
    scoring: {batch_size: 256, ...}       # see Scoring; a pruner entry's scoring: overrides it for that pruner
    prunable: {exclude_first: false, exclude_last: false, include: "regex", exclude: "regex"}
    pretrain: {epochs: 5}                 # the harness's pretraining, for pruners that require a pretrained
                                          # model and whose model entry names no weights:
    device: auto                          # auto | cpu | cuda | cuda:N
    data_root: data
    download: false
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError
from typing_extensions import Annotated, Literal

from bench_harness.config.weights import (
    FILE,
    HEADS,
    PRETRAIN,
    TIMM,
    TORCHVISION,
    canonical_weights,
    file_digest,
    parse_weights,
    weights_file,
    weights_file_problem,
)
from bench_harness.contract.run_info import ComponentInfo, RunInfo
from bench_harness.errors import BenchError, SuiteError, SuiteErrors, UnknownNameError, did_you_mean
from bench_harness.identity import config_hash, non_default_fields
from bench_harness.paths import absolute_path
from bench_harness.safe_yaml import YamlInputError, load_yaml_file
from bench_harness.validation import validation_problems

# Suite sections are dataclasses (hashable, frozen, used everywhere at run time) validated by pydantic: types,
# allowed values (Literal), ranges and unknown keys, with errors that name the key; `bench validate --schema`
# prints the JSON Schema built from the same declarations.
Int = Annotated[int, Strict()]  # no silent bool/float -> int
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Count = Annotated[int, Strict(), Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0.0)]
_FORBID = ConfigDict(extra="forbid")
# A run's wall-time limit in minutes: finite, at least 0.01 (0.6 s; a shorter limit fires before a run has read
# its data, and NaN or 1e-9 once escaped the run as an uncaught timeout), at most 100,000 (69 days: longer than
# any cluster's time limit; leave timeout_min out for no limit).
MIN_TIMEOUT_MIN, MAX_TIMEOUT_MIN = 0.01, 100_000.0
TimeoutMinutes = Annotated[float, Strict(), Field(ge=MIN_TIMEOUT_MIN, le=MAX_TIMEOUT_MIN, allow_inf_nan=False)]


@dataclass(frozen=True)
class Recipe:
    """How a model is trained (after pruning, or before it for pretraining)."""

    __pydantic_config__ = _FORBID

    epochs: Count = 10
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: NonNegative = 0.1
    momentum: NonNegative = 0.9
    nesterov: bool = False
    weight_decay: NonNegative = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[Count, ...] = ()  # epochs at which step schedule multiplies the lr by gamma
    gamma: NonNegative = 0.1
    warmup_epochs: Count = 0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    mixed_precision: bool = False  # autocast fp16 on CUDA; ignored on CPU
    augment: bool = True  # the data set's standard training augmentation
    train_subset: PositiveInt | None = None  # use the first n training examples
    test_subset: PositiveInt | None = None  # evaluate on the first n test examples
    eval_batch_size: PositiveInt = 512
    num_workers: Count = 0
    # the GPU-speed path (docs/gpu.md); left at their defaults, none of them is part of a run's identity
    data_on_device: Union[Literal["auto"], bool] = "auto"  # data set resident on the device, batched augmentation
    precision: Optional[Literal["fp32", "fp16", "bf16"]] = None  # None: fp16 if mixed_precision else fp32
    channels_last: bool = False  # model and batches in channels-last memory layout
    compile: bool = False  # torch.compile the model's training forward/backward
    # transfer (docs/transfer.md): the classifier (the model's last Linear layer) trains at lr; every other
    # parameter, the backbone, at lr x backbone_lr_scale, or not at all with freeze_backbone (linear probing)
    backbone_lr_scale: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 1.0
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision and self.precision not in (None, "fp16"):
            raise ValueError(f"mixed_precision: true means precision fp16, not {self.precision!r}: drop "
                             f"mixed_precision or set precision: fp16")


@dataclass(frozen=True)
class Scoring:
    """Data given to pruners for scoring or calibration."""

    __pydantic_config__ = _FORBID

    batch_size: PositiveInt = 256
    examples: PositiveInt | None = None  # number of training examples; None: 10 x num_classes (Synaptic-Flow)
    examples_per_class: PositiveInt | None = None  # instead: the first k examples of each class, unshuffled
    augment: bool = False
    shuffle: bool = True  # shuffle the training set (seeded) before taking `examples`
    seed: Count | None = None  # seed of that shuffle; None: the run's seed
    # score on the training split of this registered data set instead of the run's (a transfer's source data);
    # it must have the run's image shape and at most the run's number of classes. None: the run's data set
    dataset: str | None = None


@dataclass(frozen=True)
class PrunableSet:
    """Which weights may be pruned: conv and linear weights, then these filters (regexes match the full
    parameter name, e.g. ``layer[1-3]\\..*conv.*`` or ``(?!fc).*``)."""

    __pydantic_config__ = _FORBID

    exclude_first: bool = False
    exclude_last: bool = False
    include: str | None = None  # keep only names that fully match this regex
    exclude: str | None = None  # then drop names that fully match this regex


@dataclass(frozen=True)
class Component:
    """A model, data set or pruner with its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # models: pretrained weights (file:..., torchvision:..., timm); see weights.py
    scoring: dict[str, Any] | None = None  # pruners: overrides of the suite's scoring section
    head: str | None = None  # models with weights: auto | keep | reinit, the pretrained classifier (config.weights)

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:  # frozen: computed once (suites look components up once per run)
            h = hash((self.name, config_hash(self.params), self.weights, config_hash(self.scoring or {}),
                      self.head))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:  # str hashes differ between processes: never pickle the cache
        state = dict(self.__dict__)
        state.pop("_hash", None)
        return state


@dataclass(frozen=True)
class RunSettings:
    """Where and how a suite's runs execute: held once by the suite and referenced by each of its runs (a run
    travels alone to a worker process or a SLURM job), never part of a run's identity. ``data_root``,
    ``results_root`` and ``base_dir`` are absolute once the suite is loaded (see parse_suite)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_root: str = "data"
    download: bool = False  # allow downloading missing data sets
    results_root: str = "results"
    timeout_min: TimeoutMinutes | None = None  # a run's wall-time limit in minutes; None: no limit
    packing: PositiveInt = 1  # local executor: train up to this many compatible runs together
    base_dir: str = "."  # where relative paths of the suite are read from (model weights `file:`): the directory
    #                      the suite was loaded in; set when loading, not a key of the suite file


SETTING_KEYS = tuple(f.name for f in dataclasses.fields(RunSettings) if f.name != "base_dir")


SAME_PLUGIN = "install the same version of its plugin where the suite is submitted and where its jobs run"


def check_version(pruner: str, version: str, pruner_cls: Any) -> None:
    """BenchError unless the installed pruner class is the version a run's id names (a SLURM job on a machine with
    another version of the plugin would store its row under an id that says otherwise)."""
    if str(pruner_cls.version) != str(version):
        raise BenchError(f"pruner {pruner!r} installed here is version {pruner_cls.version}, the run was made with "
                         f"version {version}: {SAME_PLUGIN}")


@dataclass(frozen=True)
class RebuiltParams:
    """A run's pruner parameters in a pickle, as validated from the registry's cache where the run was made (a
    SLURM submission): ``values`` (every field) and the non-default fields its id hashed (``hashed``). The job
    validates them with the pruner itself when the run starts (:meth:`validate`, through
    ``running.plan.with_own_params``): a run the job's plugin reads otherwise fails alone, with a row saying so."""

    pruner: str
    values: dict[str, Any]
    hashed: dict[str, Any]

    def validate(self, version: str) -> Any:
        """The pruner's own ``Params`` of these values (the plugins imported); BenchError when the pruner installed
        here is not ``version`` (the run's) or reads them otherwise than where the run was made (its id would
        differ)."""
        from bench_harness.contract.plugins import get_registry

        try:
            pruner_cls = get_registry().get("pruner", self.pruner)
        except KeyError as exc:
            raise BenchError(f"pruner {self.pruner!r} is not installed here ({exc}): {SAME_PLUGIN}") from None
        check_version(self.pruner, version, pruner_cls)
        try:
            params = pruner_cls.make_params(self.values)
        except (ValueError, TypeError) as exc:
            raise BenchError(f"pruner {self.pruner!r} installed here does not accept the run's parameters ({exc}): "
                             f"{SAME_PLUGIN}") from None
        if non_default_fields(params) != self.hashed:
            raise BenchError(f"pruner {self.pruner!r} installed here reads the run's parameters as "
                             f"{non_default_fields(params)!r}, not {self.hashed!r} as where the suite was submitted: "
                             f"{SAME_PLUGIN}")
        return params


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite, built complete by :func:`validate_suite` and never changed afterwards (assigning a
    field raises). Its id hashes :meth:`identity`; its settings (where results go, the device, ...) are the
    suite's and not part of it."""

    suite: str
    model: Component
    dataset: Component
    pruner: Component
    sparsity: float
    seed: int
    recipe: Recipe
    scoring: Scoring
    prunable: PrunableSet
    pretrain: Recipe | None = None
    ablation: str | None = None
    settings: RunSettings = RunSettings()
    # Decided by validation from the registered pruner: its validated ``Params`` (built once per grid entry;
    # None: a run built by hand and never validated, which cannot execute), its version, and whether it prunes
    # a pretrained model.
    pruner_params: Any = None
    pruner_version: str = "1"
    needs_pretrained: bool = False
    # SHA-256 of a `file:` weights file, read by validation: part of the id, and checked again when the run
    # loads the file (None: no file weights, or a run built by hand)
    weights_sha256: str | None = None
    # the model entry's weights: as its run ids name them (config.weights.canonical_weights: one spelling per set
    # of weights), set by validation; None: the entry's own spelling (a run built by hand)
    weights_canonical: str | None = None
    # The pruner parameters hashed into the id, as runs were once built by hand (tests/test_identity.py): accepted
    # when equal to what the run hashes, never stored.
    pruner_defaults: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, pruner_defaults: dict[str, Any] | None) -> None:
        if pruner_defaults is not None and pruner_defaults != self._hashed_pruner_params():
            raise ValueError(f"pruner_defaults {pruner_defaults!r} differ from the run's pruner parameters "
                             f"{self._hashed_pruner_params()!r}: give the validated parameters as pruner_params=")

    def _hashed_pruner_params(self) -> dict[str, Any]:
        if self.pruner_params is None:
            return self.pruner.params
        if isinstance(self.pruner_params, RebuiltParams):  # a run in a job, its parameters not validated yet
            return self.pruner_params.hashed
        return non_default_fields(self.pruner_params)

    def identity(self) -> dict[str, Any]:
        """The canonical configuration hashed into the run id (defaults and empty values left out)."""
        config: dict[str, Any] = {
            "model": self.model.name,
            "dataset": self.dataset.name,
            "pruner": self.pruner.name,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "model_params": self.model.params,
            "dataset_params": self.dataset.params,
            "pruner_params": self._hashed_pruner_params(),
            "pruner_version": None if str(self.pruner_version) == "1" else str(self.pruner_version),
            "recipe": non_default_fields(self.recipe),
            "scoring": non_default_fields(self.scoring),
            "prunable": non_default_fields(self.prunable),
            # the harness's pretraining is part of a run when it gives the run its starting weights; weights:
            # are part of every run that names them (every pruner starts from them, docs/transfer.md)
            "pretrain": non_default_fields(self.pretrain) if self.harness_pretrains else None,
            "model_weights": self.weights_canonical or self.model.weights,
            "model_weights_sha256": self.weights_sha256,
            "model_head": self.model.head if self.model.weights and self.model.head not in (None, "auto") else None,
            "ablation": self.ablation,
        }
        # a pretraining recipe at its defaults is still a pretraining: kept as {} (as the Recipe it once was)
        return {k: v for k, v in config.items() if v not in (None, {}, []) or (k == "pretrain" and v is not None)}

    @property
    def weights_kind(self) -> str | None:
        """The kind of the model entry's ``weights:`` (config.weights: file, torchvision, timm, pretrain); None
        when it names none."""
        return parse_weights(self.model.weights).kind if self.model.weights else None

    @property
    def starts_pretrained(self) -> bool:
        """The run's model gets pretrained weights before pruning: the model entry names weights (every pruner
        starts from them) or its pruner prunes a trained model (the harness's pretraining on the run's data)."""
        return bool(self.model.weights) or self.needs_pretrained

    @property
    def harness_pretrains(self) -> bool:
        """The starting weights come from the harness's pretraining (the ``pretrain:`` recipe): on another data
        set (``weights: pretrain:<dataset>``), or on the run's own data for a pruner that prunes a trained model
        and a model entry without weights."""
        if self.model.weights:
            return self.weights_kind == PRETRAIN and self.pretrain is not None
        return self.needs_pretrained and self.pretrain is not None

    @property
    def run_id(self) -> str:
        """The hash of :meth:`identity`, computed once (the run is frozen; its components, recipe, scoring and
        prunable set are too: never mutate their dicts in place)."""
        rid = self.__dict__.get("_run_id")
        if rid is None:
            rid = self.__dict__["_run_id"] = config_hash(self.identity())
        return rid

    def __hash__(self) -> int:  # equal runs have equal ids; the parameters inside may be unhashable
        return hash(self.run_id)

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle holds (a run travels to worker processes and SLURM jobs). Parameters rebuilt from the
        plugin registry's cache (a SLURM submission validates without importing the plugins) travel as their
        values: a class made in this process cannot be pickled, and the job validates them with the pruner itself
        when the run starts, :class:`RebuiltParams`)."""
        from bench_harness.contract.params import field_values, is_rebuilt

        state = dict(self.__dict__)
        params = state.get("pruner_params")
        if is_rebuilt(params):
            state["pruner_params"] = RebuiltParams(self.pruner.name, field_values(params), self._hashed_pruner_params())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # RebuiltParams stay as they are: validated when the run starts (one run of a task that its job's plugin
        # reads otherwise fails alone, with its row), see running.plan.with_own_params
        self.__dict__.update(state)

    def with_settings(self, settings: RunSettings) -> RunSpec:
        """This run with other settings (its identity and id are unchanged)."""
        run = object.__new__(RunSpec)  # a copy of the fields and the cached id (a suite may hold 10^6 runs)
        run.__dict__.update(self.__dict__, settings=settings)
        return run

    def info(self) -> RunInfo:
        """The read-only view plugins get (``PruneContext.run``, ``Pruner.stages(params, run)``)."""
        return RunInfo(
            suite=self.suite, run_id=self.run_id,
            model=ComponentInfo(self.model.name, copy.deepcopy(self.model.params), self.model.weights),
            dataset=ComponentInfo(self.dataset.name, copy.deepcopy(self.dataset.params)),
            seed=self.seed, sparsity=self.sparsity, recipe=self.recipe, scoring=self.scoring, pretrain=self.pretrain,
            ablation=self.ablation, data_root=self.settings.data_root, download=self.settings.download)

    # the suite's settings, read through the run (a run travels alone to worker processes and SLURM jobs)
    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def data_root(self) -> str:
        return self.settings.data_root

    @property
    def download(self) -> bool:
        return self.settings.download

    @property
    def results_root(self) -> str:
        return self.settings.results_root

    @property
    def base_dir(self) -> str:
        return self.settings.base_dir

    @property
    def timeout_min(self) -> float | None:
        return self.settings.timeout_min

    @property
    def packing(self) -> int:
        return self.settings.packing

    def describe(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.pruner.params.items()))
        pruner = f"{self.pruner.name}({params})" if params else self.pruner.name
        ablation = f" +{self.ablation}" if self.ablation else ""
        start = f" from={self.model.weights}" if self.model.weights else ""
        return (f"{self.run_id}  {self.model.name:<10} {self.dataset.name:<14} {pruner:<28}{ablation} "
                f"sparsity={self.sparsity:<7g} seed={self.seed}{start}")


@dataclass(frozen=True)
class Suite:
    """A validated suite: its runs, each complete, and the settings they share (see :func:`load_suite`)."""

    name: str
    path: str
    runs: tuple[RunSpec, ...]
    settings: RunSettings = RunSettings()
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def results_root(self) -> str:
        return self.settings.results_root

    @property
    def results_dir(self) -> Path:
        from bench_harness import paths

        return paths.suite_dir(self.settings.results_root, self.name)

    def with_settings(self, **changes: Any) -> Suite:
        """A new suite whose settings, and every run's, have ``changes`` (e.g. ``results_root=...`` from the
        command line); this suite and its runs are left as they are. Run ids do not change."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(RunSettings)})
        if unknown:
            raise TypeError(f"unknown run settings {unknown}: the settings are {', '.join(SETTING_KEYS)}")
        settings = dataclasses.replace(self.settings, **changes)
        return dataclasses.replace(self, settings=settings, runs=tuple(r.with_settings(settings) for r in self.runs))


@dataclass(frozen=True)
class ParsedSuite:
    """A suite file read and checked for shape by :func:`parse_suite`; :func:`validate_suite` checks its names
    and parameters against the registered plugins and builds the runs."""

    name: str
    path: str
    settings: RunSettings
    models: tuple[Component, ...]
    datasets: tuple[Component, ...]
    pruners: tuple[Component, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    ablations: tuple[str | None, ...]
    recipe: Recipe
    scoring_of: dict[Component, Scoring]  # per pruner entry: the suite's scoring with the entry's overrides
    prunable: PrunableSet
    pretrain: Recipe | None
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


# The suite file's keys, declared once: parse_suite accepts these and the JSON Schema (config/schema.py) is built
# from the same declarations (the settings' types and defaults from RunSettings, the sections' from SECTIONS).
GRID_KEYS = ("models", "datasets", "sparsities", "seeds", "pruners")
SECTIONS: dict[str, tuple[Any, Any]] = {  # key -> (type, default)
    "recipe": (Recipe, Recipe()),
    "scoring": (Scoring, Scoring()),
    "prunable": (PrunableSet, PrunableSet()),
    "pretrain": (Recipe | None, None),
}
TOP_KEYS = ("name", "description", "grid", *SECTIONS, "ablations", "slurm", *SETTING_KEYS)


class InvalidSetting(ValueError):
    """A setting of a section (recipe, scoring, ...) that its dataclass rejects: ``key`` and ``problem``."""

    def __init__(self, key: str, problem: str, problems: list[tuple[str, str]] | None = None) -> None:
        self.key, self.problem = key, problem
        self.problems = problems or [(key, problem)]  # every (key, problem) pydantic found, the first included
        super().__init__(f"{key}: {problem}")


def checked_dataclass(cls: type, values: Mapping[str, Any]) -> Any:
    """A section's dataclass from a mapping, validated by pydantic (types, allowed values, ranges, unknown keys
    with did-you-mean); :class:`InvalidSetting` naming the first bad key (and listing them all) otherwise. Suites
    (build_dataclass) and the Python API (``make_recipe``) validate through here."""
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        problems = validation_problems(exc, [f.name for f in dataclasses.fields(cls)])
        raise InvalidSetting(*problems[0], problems) from None


def build_dataclass(cls: type, values: Any, path: str, section: str) -> Any:
    """Validate a suite section against its dataclass (pydantic: types, allowed values, unknown keys)."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise SuiteError(path, section, f"expected a mapping of settings, got {values!r}")
    try:
        return checked_dataclass(cls, values)
    except InvalidSetting as exc:
        SuiteErrors.raise_if_any([SuiteError(path, f"{section}.{key}" if key else section, problem)
                                  for key, problem in exc.problems])


def _components(path: str, key: str, items: Any, extra_keys: tuple[str, ...] = ()) -> list[Component]:
    if items is None or (isinstance(items, list) and not items):
        raise SuiteError(path, key, "must list at least one entry")
    if not isinstance(items, list):
        items = [items]
    out, problems = [], []
    for i, item in enumerate(items):
        try:
            out.append(_component(path, key, i, item, extra_keys))
        except SuiteError as exc:
            problems += exc.problems
    SuiteErrors.raise_if_any(problems)
    return out


def _component(path: str, key: str, i: int, item: Any, extra_keys: tuple[str, ...]) -> Component:
    """One entry of a grid list (a name, or a mapping with name, params, ...)."""
    if isinstance(item, str):
        return Component(item)
    if isinstance(item, dict) and "name" in item:
        allowed = {"name", "params", *extra_keys}
        extra = set(item) - allowed
        if extra:
            hint = "".join(did_you_mean(str(k), allowed) for k in sorted(map(str, extra)))
            raise SuiteError(path, f"{key}[{i}]", f"unknown keys {sorted(map(str, extra))}.{hint} An entry is a "
                             f"name or {{{', '.join(f'{k}: ...' for k in ('name', 'params', *extra_keys))}}}")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise SuiteError(path, f"{key}[{i}].params", "expected a mapping of parameter: value")
        weights = item.get("weights")
        if weights is not None and not isinstance(weights, str):
            raise SuiteError(path, f"{key}[{i}].weights", "expected 'file:<path>', 'torchvision:<WEIGHTS>', "
                             "'timm' or 'pretrain:<dataset>'")
        if weights is not None:
            try:
                parse_weights(weights)
            except ValueError as exc:
                raise SuiteError(path, f"{key}[{i}].weights", str(exc)) from None
        head = item.get("head")
        if head is not None and (head not in HEADS or not weights):
            raise SuiteError(path, f"{key}[{i}].head", f"{head!r}: write one of {', '.join(HEADS)} (what "
                             f"becomes of the pretrained classifier), next to weights: ..." if weights else
                             "head: says what becomes of a pretrained classifier: it needs weights: ...")
        scoring = item.get("scoring")
        if scoring is not None:
            build_dataclass(Scoring, scoring, path, f"{key}[{i}].scoring")  # checked here, merged per run
        return Component(str(item["name"]), dict(params), weights, dict(scoring) if scoring else None, head)
    raise SuiteError(path, f"{key}[{i}]", f"expected a name or {{name: ..., params: {{...}}}}, got {item!r}")


def _numbers(path: str, key: str, items: Any, kind: type, low: float, high: float) -> list:
    if items is None or (isinstance(items, list) and not items):
        raise SuiteError(path, key, "must list at least one value")
    if not isinstance(items, list):
        items = [items]
    out, problems = [], []
    for i, v in enumerate(items):
        try:
            if isinstance(v, bool):
                raise ValueError
            number = kind(v)
            if kind is int and float(v) != number:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(SuiteError(path, f"{key}[{i}]", f"expected a number, got {v!r}"))
            continue
        if not low <= number < high:
            problems.append(SuiteError(path, f"{key}[{i}]", f"{number} is outside [{low}, {high})" + (
                "; sparsity is the fraction of weights REMOVED (density = 1 - sparsity)" if kind is float else "")))
            continue
        out.append(number)
    SuiteErrors.raise_if_any(problems)
    return out


def _seed_list(path: str, value: Any) -> Any:
    """Seeds are a list (`[0, 1, 2]`) or a range (`{range: 3}` = [0, 1, 2], `{range: [10, 13]}` = [10, 11, 12])."""
    if isinstance(value, dict):
        if set(value) != {"range"}:
            raise SuiteError(path, "grid.seeds", f"expected a list of seeds or {{range: N}}, got {value!r}")
        bounds = value["range"]
        if isinstance(bounds, int) and not isinstance(bounds, bool) and bounds >= 1:
            return list(range(bounds))
        if (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
                and bounds[0] < bounds[1]):
            return list(range(bounds[0], bounds[1]))
        raise SuiteError(path, "grid.seeds.range", f"expected N >= 1 or [start, stop], got {bounds!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        raise SuiteError(path, "grid.seeds", f"`seeds: {value}` is ambiguous: write [{value}] for the single seed "
                         f"{value}, or {list(range(value)) if 0 < value <= 10 else '[0, 1, ...]'} / "
                         f"{{range: {value}}} for {value} seeds")
    return value


def _timeout_minutes(path: str, value: Any) -> float | None:
    """``timeout_min`` as a float (None: no limit); SuiteError with the allowed range otherwise."""
    if value is None:
        return None
    try:
        return float(TypeAdapter(TimeoutMinutes).validate_python(value))
    except ValidationError as exc:
        _, problem = validation_problems(exc, [])[0]
        raise SuiteError(path, "timeout_min", f"{problem}: write a run's wall-time limit in minutes, a finite "
                         f"number from {MIN_TIMEOUT_MIN:g} to {MAX_TIMEOUT_MIN:g} (e.g. `timeout_min: 120`), or "
                         f"leave it out for no limit") from None


def parse_suite(data: Any, path: str, base_dir: str | None = None) -> ParsedSuite:
    """Read a suite from parsed YAML (names not yet checked against the registry: :func:`validate_suite` does,
    and builds the runs). Relative ``data_root`` and ``results_root`` are made absolute here, once, against
    ``base_dir`` (default: the current directory), so a run that changes directory cannot move where later runs
    read data or write results."""
    base_dir = os.path.abspath(base_dir if base_dir is not None else os.getcwd())
    if not isinstance(data, dict):
        raise SuiteError(path, "(top level)", "a suite file is a YAML mapping with at least `name` and `grid`")
    problems: list[SuiteError] = []  # every problem of the file is reported, not only the first

    def check(fn, *args, default=None):
        try:
            return fn(*args)
        except SuiteError as exc:
            problems.extend(exc.problems)
            return default

    def fail(key: str, message: str) -> None:
        problems.append(SuiteError(path, key, message))

    for key in data:
        if key not in TOP_KEYS:
            fail(str(key), f"unknown key.{did_you_mean(str(key), TOP_KEYS)} Known keys: {', '.join(sorted(TOP_KEYS))}.")
    name = data.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        fail("name", f"{name!r} must be letters, digits, '-' or '_' (it names a folder)")
    grid = data.get("grid")
    models, datasets, pruners, sparsities, seeds = [], [], [], [], []
    if not isinstance(grid, dict):
        fail("grid", "missing: a suite needs a grid with models, datasets, sparsities, pruners")
    else:
        for key in grid:
            if key not in GRID_KEYS:
                fail(f"grid.{key}", f"unknown key.{did_you_mean(str(key), GRID_KEYS)} "
                     f"Known keys: {', '.join(sorted(GRID_KEYS))}.")
        models = check(_components, path, "grid.models", grid.get("models"), ("weights", "head"), default=[])
        datasets = check(_components, path, "grid.datasets", grid.get("datasets"), default=[])
        pruners = check(_components, path, "grid.pruners", grid.get("pruners"), ("scoring",), default=[])
        sparsities = check(_numbers, path, "grid.sparsities", grid.get("sparsities", [0.0]), float, 0.0, 1.0,
                           default=[])
        seeds = check(lambda: _numbers(path, "grid.seeds", _seed_list(path, grid.get("seeds", [0])), int, 0, 2**31),
                      default=[])
    recipe = check(build_dataclass, Recipe, data.get("recipe"), path, "recipe", default=Recipe())
    scoring = check(build_dataclass, Scoring, data.get("scoring"), path, "scoring", default=Scoring())
    scoring_of = {}
    for p in pruners:  # an entry's own scoring over the suite's (a problem of either is reported already)
        try:
            scoring_of[p] = (build_dataclass(Scoring, {**(data.get("scoring") or {}), **p.scoring}, path,
                                             f"grid.pruners[{p.name}].scoring") if p.scoring else scoring)
        except (SuiteError, TypeError):
            scoring_of[p] = scoring
    prunable = check(build_dataclass, PrunableSet, data.get("prunable"), path, "prunable", default=PrunableSet())
    for key in ("include", "exclude"):
        pattern = getattr(prunable, key)
        if pattern is not None:
            import re

            try:
                re.compile(pattern)
            except re.error as exc:
                fail(f"prunable.{key}", f"not a valid regular expression: {exc}")
    pretrain = (check(build_dataclass, Recipe, data["pretrain"], path, "pretrain", default=Recipe())
                if data.get("pretrain") else None)
    ablations = data.get("ablations") or [None]
    if not isinstance(ablations, list):
        fail("ablations", "expected a list of ablation names")
        ablations = [None]
    timeout = check(_timeout_minutes, path, data.get("timeout_min"))
    packing = data.get("packing", 1)
    if isinstance(packing, bool) or not isinstance(packing, int) or packing < 1:
        fail("packing", f"expected a number of runs >= 1 to train together, got {packing!r}")
        packing = 1
    if problems:
        raise _ParseProblems(problems, models, datasets, pruners)
    settings = RunSettings(
        device=str(data.get("device", "auto")),
        data_root=absolute_path(str(data.get("data_root", "data")), base_dir),
        download=bool(data.get("download", False)),
        results_root=absolute_path(str(data.get("results_root", "results")), base_dir),
        timeout_min=timeout,
        packing=packing,
        base_dir=base_dir,
    )
    return ParsedSuite(name, path, settings, tuple(models), tuple(datasets), tuple(pruners), tuple(sparsities),
                       tuple(seeds), tuple(ablations), recipe, scoring_of, prunable, pretrain,
                       str(data.get("description", "")), data)


class _ParseProblems(SuiteErrors):
    """The problems :func:`parse_suite` found, with the grid entries that parsed (their names are checked against
    the registry too, so that one report lists every problem of the file)."""

    def __init__(self, problems: list[SuiteError], models, datasets, pruners) -> None:
        super().__init__(problems)
        self.components = (models, datasets, pruners)

    def __str__(self) -> str:
        return str(self.problems[0]) if len(self.problems) == 1 else super().__str__()


def load_suite(path: str | os.PathLike, registry=None) -> Suite:
    """Read, parse and validate a suite file against the plugin registry; every problem of the file is
    reported at once (a SuiteError for one, SuiteErrors listing them for several)."""
    path = str(path)
    if not os.path.exists(path):
        raise BenchError(f"{path}: no such suite file (suites shipped with bench-harness are in suites/)")
    try:
        parsed = parse_suite(read_suite_file(path), path, base_dir=os.getcwd())
    except _ParseProblems as exc:
        from bench_harness.contract.plugins import get_registry

        SuiteErrors.raise_if_any(exc.problems + _name_problems(path, registry or get_registry(), *exc.components)[0])
        raise
    return validate_suite(parsed, registry)


def read_suite_file(path: str) -> Any:
    """The YAML data of a suite file; SuiteError naming the file, the line and the fix when it is not valid YAML,
    is too large, expands past a bound through aliases, nests too deep or repeats a key (see safe_yaml)."""
    try:
        return load_yaml_file(path)
    except YamlInputError as exc:
        raise SuiteError(path, f"line {exc.line}" if exc.line else "(file)", str(exc)) from None
    except yaml.YAMLError as exc:
        raise SuiteError(path, "(syntax)", f"not valid YAML: {exc}") from None


def _is_score_pruner(cls: type) -> bool:
    if getattr(cls, "lazy_params", None) is not None:  # the plugin registry's cached metadata (no import)
        return bool(cls.has_scores)
    from bench_harness.contract.score_pruner import ScorePruner

    return issubclass(cls, ScorePruner)


def needs_pretrained(pruner_cls: type) -> bool:
    return bool(pruner_cls.requires.pretrained)  # POST_TRAINING pruners have it (derived from the regime)


@dataclass(frozen=True)
class _PrunerEntry:
    """What validation decides once per pruner entry of the grid, for all of its runs."""

    params: Any  # the validated Params
    version: str
    needs_pretrained: bool
    ignores_sparsity: bool
    has_scores: bool  # a score-based pruner (the `invert` ablation applies)


def _pruner_entry(path: str, registry, pruner: Component) -> _PrunerEntry:
    pruner_cls = registry.get("pruner", pruner.name)
    try:
        params = pruner_cls.make_params(pruner.params)
    except (TypeError, ValueError) as exc:
        raise SuiteError(path, f"grid.pruners[{pruner.name}].params", str(exc)) from None
    return _PrunerEntry(params, str(pruner_cls.version), needs_pretrained(pruner_cls),
                        bool(pruner_cls.ignores_sparsity), _is_score_pruner(pruner_cls))


@dataclass(frozen=True)
class _CheckedWeights:
    """What validation decides once per model entry with weights: for all of its runs."""

    canonical: str | None  # the spelling run ids use (config.weights.canonical_weights)
    sha256: str | None  # a file's SHA-256


def _checked_weights(parsed: ParsedSuite, registry, model: Component) -> _CheckedWeights:
    """Check a model entry's weights: against the suite and the registry; its canonical form and, for a
    ``file:``, the SHA-256 (both part of its runs' ids)."""
    if not model.weights:
        return _CheckedWeights(None, None)
    path, key = parsed.path, f"grid.models[{model.name}].weights"
    spec = parse_weights(model.weights)
    if spec.kind in (TORCHVISION, TIMM) and not model.name.startswith(spec.kind + ":"):
        example = "{name: 'timm:resnet50.a1_in1k', weights: timm}" if spec.kind == TIMM else (
            "{name: 'torchvision:resnet50', weights: 'torchvision:IMAGENET1K_V1'}")
        raise SuiteError(path, key, f"{spec.kind} weights belong to a {spec.kind}:<name> model, not {model.name!r} "
                         f"(e.g. {example}); a state dict of your own is 'file:<path>'")
    try:
        canonical = canonical_weights(model.weights, model.name)
    except (ValueError, ImportError) as exc:
        raise SuiteError(path, key, str(exc)) from None
    if spec.kind == PRETRAIN:
        problem = _source_problem(parsed, registry, spec.argument)
        if problem:
            raise SuiteError(path, key, problem)
        if parsed.pretrain is None:
            raise SuiteError(path, "pretrain", f"weights {model.weights!r} pretrain the model on "
                             f"{spec.argument!r} with the suite's pretrain: recipe: add `pretrain: {{epochs: N}}`")
        return _CheckedWeights(canonical, None)
    if spec.kind != FILE:
        return _CheckedWeights(canonical, None)
    file = weights_file(model.weights, parsed.settings.base_dir)
    try:
        digest = file_digest(file)
        problem = weights_file_problem(file)
    except OSError as exc:
        raise SuiteError(path, key, f"weights file {file} cannot be read ({exc.strerror or exc}): a run id includes "
                         f"the file's SHA-256, so the file must be there when the suite is validated (a relative "
                         f"path is read from the directory the suite was loaded in, "
                         f"{parsed.settings.base_dir})") from None
    if problem:
        raise SuiteError(path, key, f"weights file {file}: {problem}")
    return _CheckedWeights(canonical, digest)


def _image_shape(registry, name: str) -> tuple[int, int, int] | None:
    """(channels, image size, classes) of a data set whose shape is fixed (None: it depends on parameters or on
    the files a run reads, e.g. a folder or the synthetic set; the run checks it when it starts). The same answer
    from the imported plugins and from the registry's cache (its ``shape``), so `bench validate` and `bench run`
    agree."""
    spec = registry.get("dataset", name)
    if hasattr(spec, "shape"):  # the registry's cache
        return tuple(spec.shape) if spec.shape else None
    if getattr(spec, "resolve", None) is not None:
        return None
    return (spec.in_channels, spec.image_size, spec.num_classes)


def _source_problem(parsed: ParsedSuite, registry, source: str) -> str | None:
    """Why ``pretrain:<source>`` cannot start the suite's runs (None: it can): unknown, or images of another
    shape than a grid data set's (the pretrained backbone would not fit the run's model)."""
    try:
        registry.entry("dataset", source)
    except UnknownNameError as exc:
        return f"pretrain:{source}: {exc}"
    shape = _image_shape(registry, source)
    if shape is None:  # decided by the files the run reads: the run checks it before it pretrains
        return None
    for dataset in parsed.datasets:
        target = _image_shape(registry, dataset.name)
        if target is not None and target[:2] != shape[:2]:
            return (f"pretrain:{source} has {shape[0]}x{shape[1]}x{shape[1]} images and {dataset.name!r} "
                    f"{target[0]}x{target[1]}x{target[1]}: a backbone pretrained on one does not fit the other's "
                    f"model; pretrain on a data set of the run's image shape")
    return None


def _scoring_data_problems(parsed: ParsedSuite, registry) -> list[SuiteError]:
    """A ``scoring.dataset`` (suite-wide or a pruner entry's) that names no registered data set, or one whose
    images differ in shape from a grid data set's or that has more classes (its labels go through the run's
    classifier)."""
    problems = []
    for pruner, scoring in parsed.scoring_of.items():
        if scoring.dataset is None:
            continue
        key = ("scoring.dataset" if not (pruner.scoring and "dataset" in pruner.scoring)
               else f"grid.pruners[{pruner.name}].scoring.dataset")
        if any(p.key == key for p in problems):
            continue
        try:
            registry.entry("dataset", scoring.dataset)
        except UnknownNameError as exc:
            problems.append(SuiteError(parsed.path, key, str(exc)))
            continue
        shape = _image_shape(registry, scoring.dataset)
        for dataset in parsed.datasets:
            target = _image_shape(registry, dataset.name)
            if shape is None or target is None or dataset.name == scoring.dataset:
                continue
            if shape[:2] != target[:2] or shape[2] > target[2]:
                problems.append(SuiteError(parsed.path, key, (
                    f"{scoring.dataset!r} has {shape[0]}x{shape[1]}x{shape[1]} images in {shape[2]} classes and "
                    f"{dataset.name!r} {target[0]}x{target[1]}x{target[1]} in {target[2]}: score on a data set of "
                    f"the run's image shape with at most its number of classes")))
                break
    return problems


def _name_problems(path: str, registry, models, datasets, pruners
                   ) -> tuple[list[SuiteError], dict[Component, _PrunerEntry]]:
    """Every grid name unknown to the registry and every pruner entry whose parameters do not validate, in file
    order; and the entries of the pruners that validated."""
    problems: list[SuiteError] = []
    entries: dict[Component, _PrunerEntry] = {}
    checked: set = set()
    for kind, components, key in (("model", models, "grid.models"), ("dataset", datasets, "grid.datasets"),
                                  ("pruner", pruners, "grid.pruners")):
        for comp in components:
            if (kind, comp.name) not in checked:
                checked.add((kind, comp.name))
                try:
                    registry.entry(kind, comp.name)
                except UnknownNameError as exc:
                    problems.append(SuiteError(path, key, str(exc)))
                    continue
            if kind == "pruner" and comp not in entries and comp.name in registry.entries["pruner"]:
                try:
                    entries[comp] = _pruner_entry(path, registry, comp)
                except SuiteError as exc:
                    problems.extend(exc.problems)
    return problems, entries


def validate_suite(parsed: ParsedSuite, registry=None) -> Suite:
    """Check names and parameters against the registry and build the suite's runs, each complete when built:
    the pruner's validated parameters (validated once per grid entry), its version, whether it needs a
    pretrained model. Dense pruners' runs collapse over the sparsity axis; ablations that do not apply to a
    pruner are left out."""
    from bench_harness.contract.ablations import ABLATIONS
    from bench_harness.contract.plugins import get_registry

    registry = registry or get_registry()
    path = parsed.path
    problems, entries = _name_problems(path, registry, parsed.models, parsed.datasets, parsed.pruners)
    for ablation in parsed.ablations:
        if ablation is not None and ablation not in ABLATIONS:
            problems.append(SuiteError(path, "ablations", f"unknown ablation {ablation!r}."
                                       f"{did_you_mean(str(ablation), ABLATIONS)} Known: {', '.join(ABLATIONS)}."))
    if parsed.pretrain is None:
        for pruner, entry in entries.items():
            for model in parsed.models:
                if entry.needs_pretrained and not model.weights:
                    problems.append(SuiteError(
                        path, "pretrain", f"pruner {pruner.name!r} prunes a pretrained model, and model "
                        f"{model.name!r} names no weights: add `weights: ...` to the model entry (file:<path>, "
                        f"torchvision:<WEIGHTS>, timm) or a `pretrain: {{epochs: N}}` section"))
    weights_of: dict[Component, _CheckedWeights] = {}
    for model in parsed.models:
        try:
            weights_of[model] = _checked_weights(parsed, registry, model)
        except SuiteError as exc:
            problems.extend(exc.problems)
    if parsed.pretrain is not None and (parsed.pretrain.freeze_backbone or parsed.pretrain.backbone_lr_scale != 1.0):
        problems.append(SuiteError(path, "pretrain", "freeze_backbone and backbone_lr_scale are for training a "
                                   "pretrained backbone; the pretrain: recipe trains a model from its initialization: "
                                   "leave them out of it (set them in recipe:)"))
    problems += _scoring_data_problems(parsed, registry)
    SuiteErrors.raise_if_any(problems)
    runs: list[RunSpec] = []
    seen_ids: set[str] = set()
    own_data: dict[Scoring, Scoring] = {}
    for model, dataset, pruner, seed, ablation in itertools.product(parsed.models, parsed.datasets, parsed.pruners,
                                                                    parsed.seeds, parsed.ablations):
        entry = entries[pruner]
        if ablation is not None:
            if entry.ignores_sparsity:
                continue  # the dense reference has nothing to ablate
            if ablation == "invert" and not entry.has_scores:
                continue  # only score-based pruners have scores to invert
        scoring = parsed.scoring_of[pruner]
        if scoring.dataset == dataset.name and not dataset.params:  # the run's own data: the default, one id
            scoring = own_data.setdefault(scoring, dataclasses.replace(scoring, dataset=None))
        for sparsity in parsed.sparsities:
            run = RunSpec(parsed.name, model, dataset, pruner, 0.0 if entry.ignores_sparsity else sparsity, seed,
                          parsed.recipe, scoring, parsed.prunable, parsed.pretrain, ablation,
                          parsed.settings, entry.params, entry.version, entry.needs_pretrained,
                          weights_sha256=weights_of[model].sha256, weights_canonical=weights_of[model].canonical)
            if run.run_id in seen_ids:  # dense runs collapse over sparsities
                continue
            seen_ids.add(run.run_id)
            runs.append(run)
    return Suite(parsed.name, path, tuple(runs), parsed.settings, parsed.description, parsed.raw)
