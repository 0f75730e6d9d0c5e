"""The JSON Schema of a suite file, for editors (``bench validate --schema``)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import ConfigDict, Field
from typing_extensions import Annotated, Literal

from bench_harness.config.suite import GRID_KEYS, SECTIONS, SETTING_KEYS, TOP_KEYS, Count, RunSettings, Scoring
from bench_harness.contract.ablations import ABLATIONS


def suite_json_schema(registry=None) -> dict[str, Any]:
    """The JSON Schema of a suite file (every section, every registered model/data set/pruner and each pruner's
    parameters), for editors: ``bench validate --schema > suite.schema.json``. Its keys are the suite's own
    declarations (config/suite.py: TOP_KEYS, GRID_KEYS, the sections, the RunSettings fields); only the types
    that depend on the registry (names, each pruner's parameters) and on the slurm section are added here."""
    from typing import Union

    from pydantic import BaseModel, create_model

    from bench_harness.config.slurm import slurm_section_model
    from bench_harness.contract.plugins import get_registry

    registry = registry or get_registry()
    forbid = ConfigDict(extra="forbid")

    def names(kind: str):
        return Literal[tuple(sorted(registry.names(kind)))]  # type: ignore[misc]

    pruner_entries = []
    for name in sorted(registry.names("pruner")):
        cls = registry.get("pruner", name)
        pruner_entries.append(create_model(
            f"pruner_{name}", __config__=forbid, __doc__=cls.description or None,
            name=(Literal[name], ...), params=(Union[cls.Params, None], None),  # type: ignore[valid-type]
            scoring=(Union[Scoring, None], None)))
    model_entry = create_model("model_entry", __config__=forbid, name=(str, ...), params=(dict[str, Any], {}),
                               weights=(Union[str, None], None),
                               head=(Union[Literal["auto", "keep", "reinit"], None], None))
    dataset_entry = create_model("dataset_entry", __config__=forbid, name=(str, ...), params=(dict[str, Any], {}))
    seed_range = create_model("seed_range", __config__=forbid, range=(Union[int, tuple[int, int]], ...))
    grid_fields: dict[str, Any] = {
        "models": (list[Union[names("model"), str, model_entry]], ...),  # type: ignore[valid-type]
        "datasets": (list[Union[names("dataset"), dataset_entry]], ...),  # type: ignore[valid-type]
        "sparsities": (list[Annotated[float, Field(ge=0.0, lt=1.0)]], [0.0]),
        "seeds": (Union[list[Count], seed_range], [0]),
        "pruners": (list[Union[names("pruner"), Union[tuple(pruner_entries)]]], ...),  # type: ignore[valid-type]
    }
    grid = create_model("grid", __config__=forbid, **{key: grid_fields[key] for key in GRID_KEYS})
    setting_types = typing.get_type_hints(RunSettings, include_extras=True)
    setting_defaults = {f.name: f.default for f in dataclasses.fields(RunSettings)}
    fields: dict[str, Any] = {
        "name": (str, ...), "description": (str, ""), "grid": (grid, ...),
        "ablations": (list[Union[Literal[ABLATIONS], None]], [None]),  # type: ignore[valid-type]
        "slurm": (Union[slurm_section_model(), None], None),
        **SECTIONS,
        **{key: (setting_types[key], setting_defaults[key]) for key in SETTING_KEYS},
    }
    model: type[BaseModel] = create_model("suite", __config__=forbid, **{key: fields[key] for key in TOP_KEYS})
    return model.model_json_schema()
