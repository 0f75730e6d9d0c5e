"""The artifact plan of a run: which artifacts it needs, in the order they are produced, and which are stored.

A run may need the harness's pretrained weights (its pruner prunes a trained model, the model entry names no
``weights:`` and the suite has a ``pretrain:`` recipe; or the model entry names ``weights: pretrain:<dataset>``)
and then its pruner's stage artifacts (``Pruner.stages(params, run)``: a teacher, a trained predictor, ...). The
runner produces what is missing when a run asks for it, the SLURM executor submits one job per missing artifact
group before the runs' arrays, and ``bench artifacts`` lists what a suite plans and stores: all three read this
plan.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from bench_harness import paths
from bench_harness.config.suite import RebuiltParams, RunSpec
from bench_harness.config.weights import PRETRAIN, parse_weights
from bench_harness.contract.artifacts import ArtifactStore
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.errors import BenchError

if TYPE_CHECKING:  # the pruner contract imports torch; a plan needs none (a SLURM submission)
    from bench_harness.contract.pruner import Stage

PRETRAINING = "pretraining"  # the harness's pretrained weights (produced by pretraining the run's model)
STAGE = "stage"  # a pruner's stage artifact
PRETRAINED = "pretrained"  # the artifact name of pretrained weights


@dataclass(frozen=True)
class PlannedArtifact:
    """One artifact a run needs."""

    kind: str  # PRETRAINING or STAGE
    name: str
    config: Mapping[str, Any]
    key: str  # ArtifactStore.key(name, config): the folder under <results root>/artifacts/<name>/
    stored: bool  # found in the run's artifact store when the plan was made
    stage: Stage | None = None  # the pruner's stage (None for pretraining)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.key}"


def pretrain_key(run: RunSpec) -> dict[str, Any]:
    """Artifact config of a run's pretrained weights from the harness's pretraining: shared by every run of the
    same model, data, seed and pretraining recipe, across suites. The data is the run's own, or the source data
    set of ``weights: pretrain:<dataset>`` (a transfer: the model is built for the source's classes)."""
    source = pretrain_source(run)
    if source is not None:
        return {"model": run.model.name, "model_params": run.model.params, "dataset": source, "seed": run.seed,
                "recipe": run.pretrain, "transfer": True}
    return {"model": run.model.name, "model_params": run.model.params, "dataset": run.dataset.name,
            "dataset_params": run.dataset.params, "seed": run.seed, "recipe": run.pretrain,
            "train_subset": run.recipe.train_subset}


def pretrain_source(run: RunSpec) -> str | None:
    """The data set a transfer's backbone is pretrained on (``weights: pretrain:<dataset>``); None otherwise."""
    return parse_weights(run.model.weights).argument if run.weights_kind == PRETRAIN else None


def validated_params(run: RunSpec) -> Any:
    """A copy of the run's validated pruner parameters (a pruner may change its own copy, never the run's)."""
    if run.pruner_params is None:
        raise BenchError(f"run {run.run_id} has no validated pruner parameters: build runs with load_suite or "
                         f"validate_suite, not RunSpec(...) by hand")
    return copy.deepcopy(with_own_params(run).pruner_params)


def with_own_params(run: RunSpec) -> RunSpec:
    """The run with its pruner's own ``Params`` (a run validated from the registry's cache where it was submitted
    carries RebuiltParams until it starts: validated here, BenchError when the installed pruner reads them
    otherwise); the run itself when it has them already."""
    if not isinstance(run.pruner_params, RebuiltParams):
        return run
    own = object.__new__(RunSpec)
    own.__dict__.update(run.__dict__, pruner_params=run.pruner_params.validate(run.pruner_version))
    return own


def artifact_store(run: RunSpec, producer: str = "") -> ArtifactStore:
    return ArtifactStore(paths.artifacts_dir(run.results_root), producer=producer or f"{run.suite}/{run.run_id}")


def harness_pretrains(run: RunSpec) -> bool:
    """True when the run's starting weights come from the harness's pretraining (an artifact): on its own data
    (a pruner that prunes a trained model, no ``weights:``) or on a transfer's source (``pretrain:<dataset>``)."""
    return run.harness_pretrains


def artifact_plan(run: RunSpec, registry: Registry | None = None,
                  store: ArtifactStore | None = None) -> list[PlannedArtifact]:
    """The artifacts ``run`` needs, in production order: pretrained weights first (a stage may train from
    them), then its pruner's stages in the order the pruner declares them."""
    registry = registry or get_registry()
    store = store or artifact_store(run)
    wanted: list[tuple[str, str, Mapping[str, Any], Stage | None]] = []
    if harness_pretrains(run):
        wanted.append((PRETRAINING, PRETRAINED, pretrain_key(run), None))
    pruner_cls = registry.get("pruner", run.pruner.name)
    for stage in pruner_cls.stages(validated_params(run), run.info()):
        wanted.append((STAGE, stage.name, stage.config, stage))
    return [PlannedArtifact(kind, name, config, store.key(name, config), store.exists(name, config), stage)
            for kind, name, config, stage in wanted]


def missing(plan: list[PlannedArtifact], kind: str | None = None) -> list[PlannedArtifact]:
    """The planned artifacts not stored yet (of ``kind`` only, when given)."""
    return [a for a in plan if not a.stored and (kind is None or a.kind == kind)]
