"""SLURM resources of a suite: the ``slurm:`` section, with per-pruner and per-model overrides::

    slurm:
      partition: gpu
      account: mylab
      qos: normal
      constraint: a100
      gpus: 1                 # per array task
      cpus: 8
      mem_gb: 32
      time_min: 240
      setup: ["module load cuda/12.1"]
      array_parallelism: 64   # at most this many tasks of an array run at once
      runs_per_task: 1        # pack several short runs into one array task
      runs_per_gpu: 1         # worker processes sharing a GPU inside a task (tiny models)
      signal_delay_s: 120     # USR2 this long before the time limit: checkpoint and requeue
      max_requeues: 100       # time-limit requeues of a task before it fails (preemptions never count)
      python: ~/venvs/bench/bin/python   # the interpreter jobs run (default: the submitting one)
      additional: {exclude: "node[07-09]"}  # any other sbatch option, verbatim
      pruners: {imp: {time_min: 2880}, snip: {time_min: 60}}
      models: {resnet56: {mem_gb: 64}}

A run's profile is the defaults, then its model's override, then its pruner's override. Runs with the same
profile go into the same job arrays.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from typing_extensions import Annotated

from bench_harness.config.suite import Count, RunSpec, Suite
from bench_harness.errors import SuiteError, did_you_mean
from bench_harness.validation import validation_problems


def _setup_lines(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _option_pairs(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), str(v)) for k, v in value.items()))
    return value


def _interpreter(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("expected the path (or command name) of a Python interpreter")
    return os.path.expanduser(value) if value.startswith("~/") else value


Name = Annotated[str, Strict(), Field(min_length=1)]
SetupLines = Annotated[tuple[str, ...], BeforeValidator(_setup_lines),
                       WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]
SbatchOptions = Annotated[tuple[tuple[str, str], ...], BeforeValidator(_option_pairs),
                          WithJsonSchema({"type": "object", "additionalProperties": {"type": ["string", "number"]}})]


@dataclass(frozen=True)
class Resources:
    """One run's SLURM request; validated by pydantic like every suite section (``slurm_json_schema``)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    partition: Name | None = None
    account: Name | None = None
    qos: Name | None = None
    constraint: Name | None = None
    gpus: Count = 0
    cpus: Count = 1
    mem_gb: Annotated[float, Field(gt=0)] | None = None
    time_min: Count = 60
    setup: SetupLines = ()
    array_parallelism: Count = 256
    runs_per_task: Count = 1
    runs_per_gpu: Count = 1
    signal_delay_s: Count = 90
    max_requeues: Count = 100
    python: Annotated[str, Strict(), AfterValidator(_interpreter)] | None = None  # None: the submitting one
    additional: SbatchOptions = ()  # extra sbatch options, e.g. {"gres": "gpu:a100:1"}

    def submitit_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "timeout_min": self.time_min, "cpus_per_task": self.cpus, "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s, "tasks_per_node": 1, "nodes": 1,
        }
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        if self.additional:
            params["slurm_additional_parameters"] = dict(self.additional)
        return params


FIELDS = {f.name: f for f in dataclasses.fields(Resources)}
_ADAPTER = TypeAdapter(Resources)


def _resources(path: str, key: str, values: Any, base: Resources) -> Resources:
    if not isinstance(values, dict):
        raise SuiteError(path, key, f"expected a mapping of SLURM settings, got {values!r}")
    try:
        given = _ADAPTER.validate_python(values)
    except ValidationError as exc:
        where, message = validation_problems(exc, list(FIELDS))[0]
        raise SuiteError(path, f"{key}.{where}", message) from None
    return dataclasses.replace(base, **{k: getattr(given, k) for k in values})


def slurm_section_model() -> Any:
    """The ``slurm:`` section as a pydantic model (for the suite's JSON Schema): the settings, plus
    ``models:``/``pruners:`` overrides by name."""
    import typing

    from pydantic import create_model

    hints = typing.get_type_hints(Resources, include_extras=True)
    settings = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(Resources)}
    return create_model("slurm", __config__=ConfigDict(extra="forbid"), **settings,
                        models=(dict[str, Resources], {}), pruners=(dict[str, Resources], {}))


@dataclass
class SlurmPlan:
    defaults: Resources
    pruners: dict[str, Resources] = field(default_factory=dict)
    models: dict[str, Resources] = field(default_factory=dict)
    raw_models: dict[str, dict] = field(default_factory=dict)
    raw_pruners: dict[str, dict] = field(default_factory=dict)
    path: str = ""

    def for_run(self, run: RunSpec) -> Resources:
        res = self.defaults
        if run.model.name in self.raw_models:
            res = _resources(self.path, f"slurm.models.{run.model.name}", self.raw_models[run.model.name], res)
        if run.pruner.name in self.raw_pruners:
            res = _resources(self.path, f"slurm.pruners.{run.pruner.name}", self.raw_pruners[run.pruner.name], res)
        return res

    def origin(self, run: RunSpec, key: str) -> str:
        """The suite key a run's setting comes from: ``slurm.pruners.imp.time_min``, ``slurm.models.m.mem_gb``
        or ``slurm.time_min`` (also when the setting is a default)."""
        if key in (self.raw_pruners.get(run.pruner.name) or {}):
            return f"slurm.pruners.{run.pruner.name}.{key}"
        if key in (self.raw_models.get(run.model.name) or {}):
            return f"slurm.models.{run.model.name}.{key}"
        return f"slurm.{key}"


def slurm_plan(suite: Suite) -> SlurmPlan:
    raw = dict(suite.raw.get("slurm") or {})
    models = raw.pop("models", {}) or {}
    pruners = raw.pop("pruners", {}) or {}
    defaults = _resources(suite.path, "slurm", raw, Resources())
    known_models = {r.model.name for r in suite.runs}
    known_pruners = {r.pruner.name for r in suite.runs}
    for kind, table, known in (("models", models, known_models), ("pruners", pruners, known_pruners)):
        for name, values in table.items():
            if name not in known:
                raise SuiteError(suite.path, f"slurm.{kind}.{name}", f"no run of the suite uses {name!r}."
                                 f"{did_you_mean(name, known)}")
            _resources(suite.path, f"slurm.{kind}.{name}", values, defaults)  # validate now
    return SlurmPlan(defaults, raw_models=models, raw_pruners=pruners, path=suite.path)
