"""A model entry's weights are every run's starting point, and the transfer protocol (issue 26, docs/transfer.md).

The data sets and pruners here are registered in-process by this module (``Registry(extra_plugins=...)``), as an
installed plugin's would be: two small synthetic data sets of the same image shape that differ in their classes
and in their pixel offset (so a test can tell which one a batch came from), one with more classes, one of
another image shape, and an at-init pruner that reports what it saw.
"""
from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from bench_harness import hookimpl, masking
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract.plugins import Registry
from bench_harness.contract.pruner import Pruner, PruneResult, Regime
from bench_harness.contract.specs import DatasetSpec
from bench_harness.errors import BenchError, SuiteError
from bench_harness.files import file_sha256
from bench_harness.running.runner import execute_run
from bench_harness.running.training import classifier_prefix, make_optimizer, recipe_param_groups
from bench_harness.running.weights import load_state


def _images(root, split, augment, download=False, classes=4, channels=3, size=8, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    n = 96 if split == "train" else 48
    labels = torch.arange(n) % classes
    prototypes = torch.randn(classes, channels, size, size, generator=torch.Generator().manual_seed(seed))
    x = prototypes[labels] + 0.5 * torch.randn(n, channels, size, size, generator=g) + offset
    out = TensorDataset(x, labels)
    out.targets = labels
    return out


@hookimpl
def bench_register_datasets():
    return [
        DatasetSpec("tr_source", 4, 3, 8, partial(_images, classes=4, offset=10.0, seed=1), "source"),
        DatasetSpec("tr_target", 4, 3, 8, partial(_images, classes=4, offset=0.0, seed=2), "target"),
        DatasetSpec("tr_six", 6, 3, 8, partial(_images, classes=6, offset=10.0, seed=3), "six classes"),
        DatasetSpec("tr_gray", 4, 1, 8, partial(_images, classes=4, channels=1, seed=4), "grey"),
    ]


class SeeingMagnitude(Pruner):
    """At-init global magnitude that reports the weights and the scoring batches it was given."""

    name = "tr_seeing"
    regime = Regime.AT_INIT

    def prune(self, model, sparsity, ctx):
        scores = {n: p.detach().abs() for n, p in ctx.prunable.items()}
        xs, ys = zip(*ctx.data())
        return PruneResult(masking.topk_masks(scores, 1.0 - sparsity), info={
            "weight_abs_sum": float(sum(p.detach().double().abs().sum() for p in ctx.prunable.values())),
            "pretrained": ctx.pretrained, "scoring_mean": float(torch.cat(xs).mean()),
            "scoring_labels": sorted({int(y) for y in torch.cat(ys)})})


@hookimpl
def bench_register_pruners():
    return [SeeingMagnitude]


class DropoutMLP(nn.Module):
    """Draws from the global random stream while training (dropout)."""

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32), nn.ReLU(),
                                 nn.Dropout(0.5), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


@hookimpl
def bench_register_models():
    from bench_harness.contract.specs import ModelSpec

    return [ModelSpec("tr_dropout", lambda num_classes, in_channels, image_size, **kw: DropoutMLP(
        num_classes, in_channels, image_size), "MLP with dropout")]


@pytest.fixture(scope="module")
def registry():
    import sys

    return Registry(extra_plugins=[("transfer", sys.modules[__name__])])


def _suite(text, tmp_path, registry):
    parsed = parse_suite(yaml.safe_load(text), str(tmp_path / "transfer.yaml"), base_dir=str(tmp_path))
    return validate_suite(parsed, registry).with_settings(results_root=str(tmp_path / "results"))


def _mlp_state(path, classes=4, fill=None, seed=0):
    from bench_harness_plugins.providers.archs.small import MLP

    torch.manual_seed(seed)
    model = MLP(classes, 3, 8, (32, 16))
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    torch.save(model.state_dict(), path)
    return model


MLP_ENTRY = "{name: mlp, params: {hidden: [32, 16]}"


# -- weights are every pruner's starting point, and part of every run id -----------------------------------------
def test_an_at_init_pruner_prunes_the_weights_the_model_entry_names(tmp_path, registry):
    """Before issue 26 the weights were silently ignored for at-init pruners (a fresh random init was pruned) and
    left out of their run id."""
    _mlp_state(tmp_path / "w.pt", fill=0.01)
    suite = _suite(f"""
name: w
grid: {{models: [{MLP_ENTRY}, weights: "file:w.pt"}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [tr_seeing, magnitude]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    seeing = next(r for r in suite.runs if r.pruner.name == "tr_seeing")
    row = execute_run(seeing, registry)
    assert row["status"] == "ok", row.get("error")
    info = json.loads(row["pruner_info"])
    prunable = 8 * 8 * 3 * 32 + 32 * 16 + 16 * 4
    assert info["weight_abs_sum"] == pytest.approx(0.01 * prunable)  # the file's weights, not an init
    assert info["pretrained"] is True
    assert row["pretrained_source"] == "file:w.pt" and row["pretrained_sha256"] == file_sha256(tmp_path / "w.pt")
    for run in suite.runs:  # the weights (and the file's digest) are in every run's identity
        assert run.identity()["model_weights"] == "file"  # any spelling of the path: the digest is the file
        assert run.identity()["model_weights_sha256"] == file_sha256(tmp_path / "w.pt")


def test_runs_with_and_without_weights_have_different_ids(tmp_path, registry):
    _mlp_state(tmp_path / "w.pt")
    grid = "datasets: [tr_target], sparsities: [0.5], pruners: [magnitude, random, dense]"
    plain = _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}}}], {grid}}}\n", tmp_path, registry)
    weighted = _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'file:w.pt'}}], {grid}}}\n", tmp_path,
                      registry)
    assert not {r.run_id for r in plain.runs} & {r.run_id for r in weighted.runs}
    _mlp_state(tmp_path / "w.pt", seed=1)  # other weights in the same file: other experiments, other ids
    again = _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'file:w.pt'}}], {grid}}}\n", tmp_path,
                   registry)
    assert not {r.run_id for r in weighted.runs} & {r.run_id for r in again.runs}


def test_a_weights_file_changed_after_validation_fails_the_run(tmp_path, registry):
    _mlp_state(tmp_path / "w.pt")
    suite = _suite(f"""
name: changed
grid: {{models: [{MLP_ENTRY}, weights: "file:w.pt"}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [magnitude]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    _mlp_state(tmp_path / "w.pt", seed=5)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed" and "changed since the suite was validated" in row["error"]


def test_the_dense_reference_is_fine_tuned_from_the_weights(tmp_path, registry):
    model = _mlp_state(tmp_path / "w.pt")
    suite = _suite(f"""
name: dense
grid: {{models: [{MLP_ENTRY}, weights: "file:w.pt"}}], datasets: [tr_target], pruners: [dense]}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.01}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["pretrained_source"] == "file:w.pt"
    model.eval()
    test = _images(None, "test", False, classes=4, seed=2)
    with torch.no_grad():
        expected = float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
    assert row["top1_pretrained"] == pytest.approx(expected)  # the loaded model, before fine-tuning
    assert row["top1_before_training"] == pytest.approx(expected)  # dense: nothing pruned
    assert row["epochs_trained"] == 1


def test_weights_problems_are_named_at_validation(tmp_path, registry):
    base = "datasets: [tr_target], sparsities: [0.5], pruners: [magnitude]"
    with pytest.raises(SuiteError, match="missing.pt.*cannot be read"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'file:missing.pt'}}], {base}}}", tmp_path,
               registry)
    with pytest.raises(SuiteError, match="head.*needs weights"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, head: reinit}}], {base}}}", tmp_path, registry)
    _mlp_state(tmp_path / "w.pt")
    with pytest.raises(SuiteError, match="'sideways': write one of auto, keep, reinit"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'file:w.pt', head: sideways}}], {base}}}",
               tmp_path, registry)
    with pytest.raises(SuiteError, match="add `pretrain: {epochs: N}`"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'pretrain:tr_source'}}], {base}}}", tmp_path,
               registry)
    with pytest.raises(SuiteError, match="pretrain:nowhere"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}, weights: 'pretrain:nowhere'}}], {base}}}\n"
               f"pretrain: {{epochs: 1}}", tmp_path, registry)
    with pytest.raises(SuiteError, match="scoring.dataset"):
        _suite(f"name: a\ngrid: {{models: [{MLP_ENTRY}}}], {base}}}\nscoring: {{dataset: nowhere}}", tmp_path,
               registry)


# -- the classifier: kept when it fits, re-initialised when the classes differ or when asked ----------------------
def _mlp(classes, seed):
    from bench_harness_plugins.providers.archs.small import MLP

    torch.manual_seed(seed)
    return MLP(classes, 3, 8, (32, 16))


def test_head_auto_keeps_a_fitting_classifier_and_reinitialises_another(tmp_path):
    source = _mlp(4, seed=0).state_dict()
    same = _mlp(4, seed=1)
    assert load_state(same, source, "w", "mlp") == []
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.items())
    other = _mlp(6, seed=1)
    fresh = {k: v.clone() for k, v in other.state_dict().items()}
    head = classifier_prefix(other)
    assert load_state(other, source, "w", "mlp") == [f"{head}.weight", f"{head}.bias"]
    for k, v in other.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith(head + ".") else source[k]), k


def test_head_reinit_and_keep(tmp_path):
    source = _mlp(4, seed=0).state_dict()
    model = _mlp(4, seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    head = classifier_prefix(model)
    assert load_state(model, source, "w", "mlp", head="reinit") == [f"{head}.weight", f"{head}.bias"]
    assert torch.equal(model.state_dict()[f"{head}.weight"], fresh[f"{head}.weight"])
    with pytest.raises(BenchError, match="head: keep needs a classifier of the model's shape"):
        load_state(_mlp(6, seed=1), source, "w", "mlp", head="keep")


def test_a_backbone_without_classifier_loads_with_a_fresh_head():
    """Self-supervised checkpoints (DINO, MoCo converted) carry no classifier: it starts from its initialization
    under head: auto, and is an error under head: keep."""
    model = _mlp(4, seed=0)
    head = classifier_prefix(model)
    backbone = {k: v for k, v in _mlp(4, seed=3).state_dict().items() if not k.startswith(head + ".")}
    assert load_state(model, backbone, "w", "mlp") == [f"{head}.weight", f"{head}.bias"]
    with pytest.raises(BenchError, match="missing keys"):
        load_state(_mlp(4, seed=0), backbone, "w", "mlp", head="keep")
    with pytest.raises(BenchError, match="missing keys"):  # a missing backbone key is never a fresh head
        load_state(_mlp(4, seed=0), {k: v for k, v in backbone.items() if k != next(iter(backbone))}, "w", "mlp")


def test_a_classifier_of_other_classes_is_reported_in_the_run(tmp_path, registry):
    _mlp_state(tmp_path / "w6.pt", classes=6)
    suite = _suite(f"""
name: heads
grid: {{models: [{MLP_ENTRY}, weights: "file:w6.pt"}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [magnitude]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert "left at its initialization" in row["warnings"]
    keep = _suite(f"""
name: heads
grid: {{models: [{MLP_ENTRY}, weights: "file:w6.pt", head: keep}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [magnitude]}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    assert keep.runs[0].run_id != suite.runs[0].run_id  # head: is part of the experiment
    row = execute_run(keep.runs[0], registry)
    assert row["status"] == "failed" and "head: keep" in row["error"]


# -- scoring on another data set ---------------------------------------------------------------------------------
def test_scores_are_computed_on_the_named_data_set(tmp_path, registry):
    text = f"""
name: scoring
grid: {{models: [{MLP_ENTRY}}}], datasets: [tr_target], sparsities: [0.5], pruners: [tr_seeing]}}
recipe: {{epochs: 0}}
scoring: {{examples: 32{{extra}}}}
"""
    own = execute_run(_suite(text.replace("{extra}", ""), tmp_path, registry).runs[0], registry)
    other_suite = _suite(text.replace("{extra}", ", dataset: tr_source"), tmp_path, registry)
    other = execute_run(other_suite.runs[0], registry)
    assert own["status"] == other["status"] == "ok", (own.get("error"), other.get("error"))
    assert abs(json.loads(own["pruner_info"])["scoring_mean"]) < 1.0  # the target's images, offset 0
    assert json.loads(other["pruner_info"])["scoring_mean"] > 9.0  # the source's images, offset 10
    assert other_suite.runs[0].identity()["scoring"] == {"dataset": "tr_source", "examples": 32}


@pytest.mark.parametrize("dataset", ["tr_six", "tr_gray"])
def test_a_scoring_data_set_the_model_cannot_take_is_refused_at_validation(tmp_path, registry, dataset):
    with pytest.raises(SuiteError, match=f"scoring.dataset: '{dataset}' has .* score on a data set of the run's "
                                         f"image shape with at most its number of classes"):
        _suite(f"""
name: badscore
grid: {{models: [{MLP_ENTRY}}}], datasets: [tr_target], sparsities: [0.5], pruners: [tr_seeing]}}
scoring: {{dataset: {dataset}}}
""", tmp_path, registry)


@pytest.mark.parametrize("dataset, message", [("tr_six", "6 classes and the model's classifier 4"),
                                              ("tr_gray", "same image shape")])
def test_a_scoring_data_set_the_run_finds_unfit_fails_it_clearly(tmp_path, registry, dataset, message):
    """When the run's data set takes parameters its shape is known only to the run, which checks it."""
    suite = _suite(f"""
name: badscore
grid: {{models: [{MLP_ENTRY}}}], datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8,
        train_size: 64, test_size: 32}}}}], sparsities: [0.5], pruners: [tr_seeing]}}
recipe: {{epochs: 0}}
scoring: {{dataset: {dataset}}}
""", tmp_path, registry)
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "failed" and message in row["error"]


def test_scoring_on_the_runs_own_data_set_by_name_is_the_default_experiment(tmp_path, registry):
    text = f"""
name: own
grid: {{models: [{MLP_ENTRY}}}], datasets: [tr_target], sparsities: [0.5], pruners: [tr_seeing]}}
scoring: {{examples: 32{{extra}}}}
"""
    own = _suite(text.replace("{extra}", ", dataset: tr_target"), tmp_path, registry)
    default = _suite(text.replace("{extra}", ""), tmp_path, registry)
    assert own.runs[0].run_id == default.runs[0].run_id


# -- pretrain:<dataset>: the harness's pretraining on a source data set, then the transfer -----------------------
def test_a_backbone_pretrained_on_a_source_is_pruned_and_fine_tuned_on_the_target(tmp_path, registry):
    suite = _suite(f"""
name: transfer
grid: {{models: [{MLP_ENTRY}, weights: "pretrain:tr_six"}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [dense, tr_seeing, random]}}
pretrain: {{epochs: 1, batch_size: 32, lr: 0.01}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.01}}
""", tmp_path, registry)
    rows = {r.pruner.name: execute_run(r, registry) for r in suite.runs}
    assert all(row["status"] == "ok" for row in rows.values()), {k: v.get("error") for k, v in rows.items()}
    artifacts = [p for p in (tmp_path / "results" / "artifacts" / "pretrained").iterdir() if p.is_dir()]
    assert len(artifacts) == 1  # one backbone per model, source, seed and recipe, shared by every pruner
    shas = {row["pretrained_sha256"] for row in rows.values()}
    assert len(shas) == 1 and all(row["pretrained_source"] == "pretrain:tr_six" for row in rows.values())
    assert all("left at its initialization" in row["warnings"] for row in rows.values())  # 6 -> 4 classes
    state = torch.load(next(artifacts[0].glob("*.pt")), weights_only=True)
    assert state["net.5.weight"].shape[0] == 6  # the backbone was built for the source's classes
    seen = json.loads(rows["tr_seeing"]["pruner_info"])
    backbone = sum(float(v.double().abs().sum()) for k, v in state.items()
                   if k.endswith("weight") and v.dim() > 1 and v.shape[0] != 6)
    assert seen["weight_abs_sum"] > backbone  # the pretrained backbone (plus a fresh 4-class head)
    assert rows["dense"]["epochs_trained"] == 1  # the dense reference is the fine-tuned backbone


def test_the_same_suite_from_a_random_init_is_another_experiment(tmp_path, registry):
    common = "datasets: [tr_target], sparsities: [0.5], pruners: [tr_seeing]}\nrecipe: {epochs: 0}\n"
    transfer = _suite(f"name: t\ngrid: {{models: [{MLP_ENTRY}, weights: 'pretrain:tr_source'}}], {common}"
                      "pretrain: {epochs: 1}\n", tmp_path, registry)
    scratch = _suite(f"name: t\ngrid: {{models: [{MLP_ENTRY}}}], {common}pretrain: {{epochs: 1}}\n", tmp_path,
                     registry)
    assert transfer.runs[0].run_id != scratch.runs[0].run_id
    assert "pretrain" in transfer.runs[0].identity() and "pretrain" not in scratch.runs[0].identity()


# -- transfer recipe options -------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))


def _recipe(**kw):
    from bench_harness.config.suite import Recipe

    return Recipe(**{"lr": 0.1, **kw})


def test_the_backbone_trains_at_a_scaled_lr_or_not_at_all():
    net = _Net()
    named = dict(net.named_parameters())
    assert recipe_param_groups(named, "fc", _recipe()) == list(named.values())
    groups = recipe_param_groups(named, "fc", _recipe(backbone_lr_scale=0.1))
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.01)]
    assert groups[0]["params"] == [net.fc.weight, net.fc.bias]
    frozen = recipe_param_groups(named, "fc", _recipe(freeze_backbone=True))
    assert len(frozen) == 1 and frozen[0]["params"] == [net.fc.weight, net.fc.bias]
    optimizer = make_optimizer(net, _recipe(backbone_lr_scale=0.5))
    assert [g["base_lr"] for g in optimizer.param_groups] == [0.1, 0.05]


def test_linear_probing_leaves_the_backbone_as_it_was(tmp_path):
    from bench_harness.running.training import train

    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    train(net, loader, _recipe(epochs=1, freeze_backbone=True, weight_decay=0.0), torch.device("cpu"))
    assert torch.equal(net.body.weight, before["body.weight"]) and torch.equal(net.body.bias, before["body.bias"])
    assert not torch.equal(net.fc.weight, before["fc.weight"])


def test_packed_training_keeps_the_transfer_groups(tmp_path, registry):
    """The packed path (several runs trained as one batched computation) builds its optimizer from stacked
    parameters: the backbone of every packed run stays frozen under freeze_backbone, as it does alone."""
    from bench_harness.running.runner import execute_packed

    _mlp_state(tmp_path / "w.pt")
    suite = _suite(f"""
name: packed
grid: {{models: [{MLP_ENTRY}, weights: "file:w.pt"}}], datasets: [tr_target], sparsities: [0.5, 0.7],
        pruners: [magnitude]}}
recipe: {{epochs: 1, batch_size: 32, freeze_backbone: true, weight_decay: 0.0}}
""", tmp_path, registry)
    rows = execute_packed(list(suite.runs), registry)
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    assert all(r["packed_runs"] == 2 for r in rows)
    # trained alone (a frozen backbone, tested above), each run ends where it ended packed
    import dataclasses

    elsewhere = dataclasses.replace(suite.runs[0].settings, results_root=str(tmp_path / "alone"))
    alone = [execute_run(r.with_settings(elsewhere), registry) for r in suite.runs]
    for packed, single in zip(rows, alone):
        assert packed["top1"] == pytest.approx(single["top1"], abs=1e-6)


def test_a_missing_self_supervised_timm_backbone_names_where_to_put_it(tmp_path, monkeypatch):
    from bench_harness.running.weights import WeightsNotFound, load_pretrained

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound) as caught:
        load_pretrained(nn.Linear(2, 2), "timm:vit_small_patch16_224.dino", "timm")
    message = str(caught.value)
    assert "vit_small_patch16_224.dino" in message and str(tmp_path / "hf") in message
    assert "timm.create_model('vit_small_patch16_224.dino', pretrained=True)" in message


def test_the_source_pretraining_is_a_planned_artifact_a_stage_job_produces(tmp_path, registry):
    """The SLURM executor runs pretrain_only for each planned pretraining before the arrays that need it."""
    from bench_harness.running.plan import PRETRAINING, artifact_plan, missing
    from bench_harness.running.runner import pretrain_only

    suite = _suite(f"""
name: staged
grid: {{models: [{MLP_ENTRY}, weights: "pretrain:tr_source"}}], datasets: [tr_target], sparsities: [0.5],
        pruners: [magnitude, random]}}
pretrain: {{epochs: 1, batch_size: 32}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    plans = [artifact_plan(run, registry) for run in suite.runs]
    assert all(len(missing(p, PRETRAINING)) == 1 for p in plans)
    assert len({p[0].key for p in plans}) == 1  # one backbone for both pruners
    folder = pretrain_only(suite.runs[0], registry)
    assert artifact_plan(suite.runs[1], registry)[0].stored
    row = execute_run(suite.runs[1], registry)
    assert row["status"] == "ok", row.get("error")
    assert folder.endswith(plans[0][0].key) and json.loads(row["artifacts"])["pretrained"]["key"] == plans[0][0].key


def test_a_run_ends_the_same_whether_its_backbone_was_pretrained_in_it_or_found_stored(tmp_path, registry):
    """Pretraining draws from a fork of the random streams: fine-tuning (here its dropout) draws the same numbers
    whether the run computed the backbone or another run had stored it."""
    import dataclasses

    from bench_harness.running.runner import pretrain_only

    suite = _suite("""
name: forked
grid: {models: [{name: tr_dropout, weights: "pretrain:tr_source"}], datasets: [tr_target], sparsities: [0.5],
        pruners: [magnitude]}
pretrain: {epochs: 1, batch_size: 32}
recipe: {epochs: 2, batch_size: 32}
""", tmp_path, registry)
    run = suite.runs[0]
    computed = execute_run(run, registry)  # trains the backbone inside the run
    elsewhere = run.with_settings(dataclasses.replace(run.settings, results_root=str(tmp_path / "other")))
    pretrain_only(elsewhere, registry)  # a stage job stores it first
    stored = execute_run(elsewhere, registry)
    assert computed["status"] == stored["status"] == "ok", (computed.get("error"), stored.get("error"))
    assert computed["loss"] == stored["loss"] and computed["top1"] == stored["top1"]


def test_the_leaderboard_names_the_start_and_compares_within_it(tmp_path, registry):
    """Runs from a pretrained start and from a random init are other models on the board: ranked apart, and
    paired with the controls (random, magnitude, dense) of their own start only."""
    from bench_harness.results.leaderboard import build_leaderboard
    from bench_harness.results.store import load_results

    suite = _suite(f"""
name: board
grid: {{models: [{MLP_ENTRY}, weights: "pretrain:tr_source", head: reinit}}, {MLP_ENTRY}}}],
        datasets: [tr_target], sparsities: [0.5], pruners: [dense, magnitude, random, tr_seeing]}}
pretrain: {{epochs: 1, batch_size: 32}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    rows = [execute_run(r, registry) for r in suite.runs]
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    board = build_leaderboard(load_results(tmp_path / "results", ["board"]), ["board"])
    assert set(board.model) == {"mlp(hidden=[32, 16])", "mlp(hidden=[32, 16]) ← pretrain:tr_source, head reinit"}
    assert set(board.method) == {"dense", "magnitude", "random", "tr_seeing"}  # the start is the model's
    assert (board.seeds == 1).all() and len(board) == 8
    top1 = {(r.model_label, r.pruner): r.top1 for r in load_results(tmp_path / "results", ["board"])
            .assign(model_label=lambda d: d.config.str.contains("pretrain:tr_source")).itertuples()}
    for transferred, model in ((True, board.model.str.contains("←")), (False, ~board.model.str.contains("←"))):
        seeing = board[model & (board.method == "tr_seeing")].iloc[0]
        assert seeing.vs_random_diff == pytest.approx(top1[(transferred, "tr_seeing")] - top1[(transferred, "random")])
        assert seeing.vs_dense_diff == pytest.approx(top1[(transferred, "tr_seeing")] - top1[(transferred, "dense")])


def test_rows_written_before_the_recipe_was_stored_as_json_pool_with_the_new_ones(tmp_path, registry):
    """Rows of issue 25's era stored the pretraining recipe in ``config`` as its Python repr; the same experiment's
    other seeds, written now, store it as JSON. They are one experiment (same ids): the leaderboard pools them,
    reading the repr as literals only (a repr that is code is left as text and never run)."""
    from bench_harness.results.leaderboard import _legacy_recipe, build_leaderboard
    from bench_harness.results.store import load_results

    suite = _suite(f"""
name: legacy
grid: {{models: [{MLP_ENTRY}, weights: "pretrain:tr_source"}}], datasets: [tr_target], sparsities: [0.5],
        seeds: [0, 1], pruners: [magnitude]}}
pretrain: {{epochs: 1, batch_size: 32, lr: 0.05}}
recipe: {{epochs: 0}}
""", tmp_path, registry)
    rows = [execute_run(r, registry) for r in suite.runs]
    assert all(r["status"] == "ok" for r in rows)
    runs = load_results(tmp_path / "results", ["legacy"])
    old = runs.seed == 0
    runs.loc[old, "config"] = runs.loc[old, "config"].str.replace(
        '"pretrain": {"batch_size": 32, "epochs": 1, "lr": 0.05}',
        '"pretrain": "Recipe(epochs=1, batch_size=32, optimizer=\'sgd\', lr=0.05, momentum=0.9, nesterov=False, '
        'weight_decay=0.0001, schedule=\'cosine\', milestones=(), compile=False)"', regex=False)
    assert runs.loc[old, "config"].str.contains("Recipe(", regex=False).all()
    board = build_leaderboard(runs, ["legacy"])
    assert len(board) == 1 and board.seeds.iloc[0] == 2 and board.setting.iloc[0] == ""
    assert _legacy_recipe("__import__('os').system('false')") == "__import__('os').system('false')"
