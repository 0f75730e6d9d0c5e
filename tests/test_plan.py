"""The artifact plan of a run (bench_harness.running.plan): what it needs, in order, and what is stored."""
import pytest
import torch
import yaml

from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract.artifacts import ArtifactStore
from bench_harness.contract.plugins import Registry
from bench_harness.running.plan import PRETRAINING, STAGE, artifact_plan, artifact_store, missing, pretrain_key
from tests import contract_plugins

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


@pytest.fixture(scope="module")
def registry():
    return Registry(extra_plugins=[("contract", contract_plugins)])


def _runs(tmp_path, registry, pretrain="pretrain: {epochs: 1}"):
    parsed = parse_suite(yaml.safe_load(f"""
name: plan
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [magnitude, pt_magnitude, teacher_scores]}}
recipe: {{epochs: 1}}
{pretrain}
"""), "plan.yaml")
    suite = validate_suite(parsed, registry).with_settings(results_root=str(tmp_path))
    return {run.pruner.name: run for run in suite.runs}


def test_a_run_plans_its_pretraining_and_its_pruners_stages(tmp_path, registry):
    runs = _runs(tmp_path, registry)
    assert artifact_plan(runs["magnitude"], registry) == []
    (pretrained,) = artifact_plan(runs["pt_magnitude"], registry)
    assert (pretrained.kind, pretrained.name, pretrained.stored, pretrained.stage) == (PRETRAINING, "pretrained",
                                                                                       False, None)
    assert pretrained.config == pretrain_key(runs["pt_magnitude"])
    assert pretrained.key == ArtifactStore.key("pretrained", pretrain_key(runs["pt_magnitude"]))
    assert pretrained.label == f"pretrained/{pretrained.key}"
    (teacher,) = artifact_plan(runs["teacher_scores"], registry)
    assert (teacher.kind, teacher.name, teacher.stored) == (STAGE, "test-teacher", False)
    assert teacher.stage is not None and teacher.stage.config == teacher.config


def test_the_plan_says_what_is_stored(tmp_path, registry):
    runs = _runs(tmp_path, registry)
    run = runs["teacher_scores"]
    (teacher,) = artifact_plan(run, registry)
    assert missing([teacher]) == [teacher] and missing([teacher], PRETRAINING) == []
    artifact_store(run).put(teacher.name, teacher.config, {"scores": torch.ones(1)})
    (again,) = artifact_plan(run, registry)
    assert again.stored and again.key == teacher.key and missing([again]) == []


def test_a_pruner_of_untrained_models_plans_no_pretraining_even_with_a_pretrain_section(tmp_path, registry):
    runs = _runs(tmp_path, registry)
    assert [a.kind for a in artifact_plan(runs["teacher_scores"], registry)] == [STAGE]
