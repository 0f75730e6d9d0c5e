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

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError
from typing_extensions import Annotated, Literal

from bench_harness.errors import BenchError, SuiteError, UnknownNameError, did_you_mean
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

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:  # frozen: computed once (suites look components up once per run)
            h = hash((self.name, config_hash(self.params), self.weights, config_hash(self.scoring or {})))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:  # str hashes differ between processes: never pickle the cache
        state = dict(self.__dict__)
        state.pop("_hash", None)
        return state


@dataclass
class RunSpec:
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
    device: str = "auto"
    data_root: str = "data"  # absolute once the suite is loaded (see parse_suite); not part of the identity
    download: bool = False
    results_root: str = "results"  # absolute once the suite is loaded (see parse_suite); not part of the identity
    base_dir: str = "."  # where relative paths of the suite are read from (model weights `file:`): the directory
    #                      the suite was loaded in; not part of the identity
    timeout_min: float | None = None  # per-run wall-time limit (not part of the run's identity)
    packing: int = 1  # local executor: train up to this many compatible runs together (not part of the identity)
    # Filled by validation: the pruner parameters that differ from the Params dataclass defaults, the pruner's
    # version, and whether the pruner needs a pretrained model.
    pruner_defaults: dict[str, Any] | None = None
    pruner_version: str = "1"
    needs_pretrained: bool = False

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
            "pruner_params": self.pruner.params if self.pruner_defaults is None else self.pruner_defaults,
            "pruner_version": None if str(self.pruner_version) == "1" else str(self.pruner_version),
            "recipe": non_default_fields(self.recipe),
            "scoring": non_default_fields(self.scoring),
            "prunable": non_default_fields(self.prunable),
            # pretraining and pretrained weights are part of a run only when its pruner prunes a trained model
            "pretrain": self.pretrain if self.needs_pretrained and not self.model.weights else None,
            "model_weights": self.model.weights if self.needs_pretrained else None,
            "ablation": self.ablation,
        }
        return {k: v for k, v in config.items() if v not in (None, {}, [])}

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if "_run_id" in self.__dict__:  # any assignment may change the identity
            del self.__dict__["_run_id"]

    @property
    def run_id(self) -> str:
        """The hash of :meth:`identity`, cached until a field is assigned (the components, recipe, scoring and
        prunable set are frozen; replace them, never mutate their dicts in place)."""
        rid = self.__dict__.get("_run_id")
        if rid is None:
            rid = self.__dict__["_run_id"] = config_hash(self.identity())
        return rid

    def describe(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.pruner.params.items()))
        pruner = f"{self.pruner.name}({params})" if params else self.pruner.name
        ablation = f" +{self.ablation}" if self.ablation else ""
        return (f"{self.run_id}  {self.model.name:<10} {self.dataset.name:<14} {pruner:<28}{ablation} "
                f"sparsity={self.sparsity:<7g} seed={self.seed}")


@dataclass
class Suite:
    name: str
    path: str
    runs: list[RunSpec]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def results_dir(self) -> Path:
        from bench_harness import paths

        root = self.runs[0].results_root if self.runs else "results"
        return paths.suite_dir(root, self.name)


TOP_KEYS = {"name", "description", "grid", "recipe", "scoring", "prunable", "pretrain", "device", "data_root",
            "download", "results_root", "ablations", "slurm", "timeout_min", "packing"}
GRID_KEYS = {"models", "datasets", "sparsities", "seeds", "pruners"}


def build_dataclass(cls: type, values: Any, path: str, section: str) -> Any:
    """Validate a suite section against its dataclass (pydantic: types, allowed values, unknown keys)."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise SuiteError(path, section, f"expected a mapping of settings, got {values!r}")
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        key, message = validation_problems(exc, [f.name for f in dataclasses.fields(cls)])[0]
        raise SuiteError(path, f"{section}.{key}", message) from None


def _components(path: str, key: str, items: Any, extra_keys: tuple[str, ...] = ()) -> list[Component]:
    if items is None or (isinstance(items, list) and not items):
        raise SuiteError(path, key, "must list at least one entry")
    if not isinstance(items, list):
        items = [items]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(Component(item))
        elif isinstance(item, dict) and "name" in item:
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
                raise SuiteError(path, f"{key}[{i}].weights", "expected 'file:<path>', 'torchvision:<WEIGHTS>' or "
                                 "'timm'")
            scoring = item.get("scoring")
            if scoring is not None:
                build_dataclass(Scoring, scoring, path, f"{key}[{i}].scoring")  # checked here, merged per run
            out.append(Component(str(item["name"]), dict(params), weights, dict(scoring) if scoring else None))
        else:
            raise SuiteError(path, f"{key}[{i}]", f"expected a name or {{name: ..., params: {{...}}}}, got {item!r}")
    return out


def _numbers(path: str, key: str, items: Any, kind: type, low: float, high: float) -> list:
    if items is None or (isinstance(items, list) and not items):
        raise SuiteError(path, key, "must list at least one value")
    if not isinstance(items, list):
        items = [items]
    out = []
    for i, v in enumerate(items):
        try:
            if isinstance(v, bool):
                raise ValueError
            number = kind(v)
            if kind is int and float(v) != number:
                raise ValueError
        except (TypeError, ValueError):
            raise SuiteError(path, f"{key}[{i}]", f"expected a number, got {v!r}") from None
        if not low <= number < high:
            raise SuiteError(path, f"{key}[{i}]", f"{number} is outside [{low}, {high})" + (
                "; sparsity is the fraction of weights REMOVED (density = 1 - sparsity)" if kind is float else ""))
        out.append(number)
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


def parse_suite(data: Any, path: str, base_dir: str | None = None) -> Suite:
    """Build a Suite (names not yet checked against the registry) from parsed YAML. Relative ``data_root`` and
    ``results_root`` are made absolute here, once, against ``base_dir`` (default: the current directory), so a
    run that changes directory cannot move where later runs read data or write results."""
    base_dir = os.path.abspath(base_dir if base_dir is not None else os.getcwd())
    if not isinstance(data, dict):
        raise SuiteError(path, "(top level)", "a suite file is a YAML mapping with at least `name` and `grid`")
    for key in data:
        if key not in TOP_KEYS:
            raise SuiteError(path, str(key), f"unknown key.{did_you_mean(str(key), TOP_KEYS)} "
                             f"Known keys: {', '.join(sorted(TOP_KEYS))}.")
    name = data.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SuiteError(path, "name", f"{name!r} must be letters, digits, '-' or '_' (it names a folder)")
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise SuiteError(path, "grid", "missing: a suite needs a grid with models, datasets, sparsities, pruners")
    for key in grid:
        if key not in GRID_KEYS:
            raise SuiteError(path, f"grid.{key}", f"unknown key.{did_you_mean(str(key), GRID_KEYS)} "
                             f"Known keys: {', '.join(sorted(GRID_KEYS))}.")
    models = _components(path, "grid.models", grid.get("models"), ("weights",))
    datasets = _components(path, "grid.datasets", grid.get("datasets"))
    pruners = _components(path, "grid.pruners", grid.get("pruners"), ("scoring",))
    sparsities = _numbers(path, "grid.sparsities", grid.get("sparsities", [0.0]), float, 0.0, 1.0)
    seeds = _numbers(path, "grid.seeds", _seed_list(path, grid.get("seeds", [0])), int, 0, 2**31)
    recipe = build_dataclass(Recipe, data.get("recipe"), path, "recipe")
    scoring = build_dataclass(Scoring, data.get("scoring"), path, "scoring")
    scoring_of = {p: build_dataclass(Scoring, {**(data.get("scoring") or {}), **p.scoring}, path,
                                     f"grid.pruners[{p.name}].scoring") if p.scoring else scoring for p in pruners}
    prunable = build_dataclass(PrunableSet, data.get("prunable"), path, "prunable")
    for key in ("include", "exclude"):
        pattern = getattr(prunable, key)
        if pattern is not None:
            import re

            try:
                re.compile(pattern)
            except re.error as exc:
                raise SuiteError(path, f"prunable.{key}", f"not a valid regular expression: {exc}") from None
    pretrain = build_dataclass(Recipe, data["pretrain"], path, "pretrain") if data.get("pretrain") else None
    ablations = data.get("ablations") or [None]
    if not isinstance(ablations, list):
        raise SuiteError(path, "ablations", "expected a list of ablation names")
    timeout = _timeout_minutes(path, data.get("timeout_min"))
    packing = data.get("packing", 1)
    if isinstance(packing, bool) or not isinstance(packing, int) or packing < 1:
        raise SuiteError(path, "packing", f"expected a number of runs >= 1 to train together, got {packing!r}")
    settings = dict(
        timeout_min=timeout,
        packing=packing,
        device=str(data.get("device", "auto")),
        data_root=absolute_path(str(data.get("data_root", "data")), base_dir),
        download=bool(data.get("download", False)),
        results_root=absolute_path(str(data.get("results_root", "results")), base_dir),
        base_dir=base_dir,
    )
    runs = []
    for model, dataset, pruner, seed, ablation in itertools.product(models, datasets, pruners, seeds, ablations):
        for sparsity in sparsities:
            runs.append(RunSpec(name, model, dataset, pruner, sparsity, seed, recipe, scoring_of[pruner], prunable,
                                pretrain, ablation, **settings))
    return Suite(name, path, runs, str(data.get("description", "")), data)


def load_suite(path: str | os.PathLike, registry=None) -> Suite:
    """Read, parse and validate a suite file against the plugin registry."""
    path = str(path)
    if not os.path.exists(path):
        raise BenchError(f"{path}: no such suite file (suites shipped with bench-harness are in suites/)")
    suite = parse_suite(read_suite_file(path), path, base_dir=os.getcwd())
    validate_suite(suite, registry)
    return suite


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
    from bench_harness.contract.score_pruner import ScorePruner

    return issubclass(cls, ScorePruner)


def needs_pretrained(pruner_cls: type) -> bool:
    from bench_harness.contract.pruner import Regime

    return bool(pruner_cls.requires.pretrained or pruner_cls.regime == Regime.POST_TRAINING)


def validate_suite(suite: Suite, registry=None) -> None:
    """Check names and parameters against the registry; collapse the sparsity axis of dense pruners."""
    from bench_harness.contract.plugins import get_registry

    registry = registry or get_registry()
    checked: set = set()
    kept = []
    seen_ids = set()
    pruner_defaults: dict[Component, dict[str, Any]] = {}
    for run in suite.runs:
        for kind, comp, key in (("model", run.model, "grid.models"), ("dataset", run.dataset, "grid.datasets"),
                                ("pruner", run.pruner, "grid.pruners")):
            if (kind, comp.name) in checked:
                continue
            try:
                registry.entry(kind, comp.name)
            except UnknownNameError as exc:
                raise SuiteError(suite.path, key, str(exc)) from None
            checked.add((kind, comp.name))
        pruner_cls = registry.get("pruner", run.pruner.name)
        defaults = pruner_defaults.get(run.pruner)  # validated once per grid entry, not once per run
        if defaults is None:
            try:
                params = pruner_cls.make_params(run.pruner.params)
            except (TypeError, ValueError) as exc:
                raise SuiteError(suite.path, f"grid.pruners[{run.pruner.name}].params", str(exc)) from None
            defaults = pruner_defaults[run.pruner] = non_default_fields(params)
        run.pruner_defaults = dict(defaults)
        run.pruner_version = str(pruner_cls.version)
        run.needs_pretrained = needs_pretrained(pruner_cls)
        if run.needs_pretrained and run.pretrain is None and not run.model.weights:
            raise SuiteError(suite.path, "pretrain", f"pruner {run.pruner.name!r} prunes a pretrained model, and "
                             f"model {run.model.name!r} names no weights: add `weights: ...` to the model entry "
                             f"(file:<path>, torchvision:<WEIGHTS>, timm) or a `pretrain: {{epochs: N}}` section")
        if pruner_cls.ignores_sparsity:
            run.sparsity = 0.0
        if run.ablation is not None:
            from bench_harness.contract.ablations import ABLATIONS

            if run.ablation not in ABLATIONS:
                raise SuiteError(suite.path, "ablations", f"unknown ablation {run.ablation!r}."
                                 f"{did_you_mean(run.ablation, ABLATIONS)} Known: {', '.join(ABLATIONS)}.")
            if pruner_cls.ignores_sparsity:
                continue  # the dense reference has nothing to ablate
            if run.ablation == "invert" and not _is_score_pruner(pruner_cls):
                continue  # only score-based pruners have scores to invert
        run_id = run.run_id
        if run_id in seen_ids:  # dense runs collapse over sparsities
            continue
        seen_ids.add(run_id)
        kept.append(run)
    suite.runs = kept
