"""imp (plugins/imp/pruner.py): rewinding to the initialization with any number of epochs per level, 0 included."""
import pytest
import torch
import yaml

import bench_harness
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract import masking
from bench_harness.contract.plugins import get_registry
from bench_harness.running.runner import execute_run
from bench_harness_plugins.imp.pruner import check_rewind_epoch
from tests.tiny import batches as _batches
from tests.tiny import mlp as _mlp

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}"


def test_rewind_epoch_bounds():
    for end in (0, 1, 5):
        check_rewind_epoch(0, end)  # rewinding to the initialization: any number of epochs
    check_rewind_epoch(2, 3)
    for k, end in ((1, 0), (1, 1), (3, 2)):
        with pytest.raises(ValueError, match=r"raise the epochs above .*or set rewind_epoch: 0"):
            check_rewind_epoch(k, end)
    with pytest.raises(ValueError, match=">= 0"):
        check_rewind_epoch(-1, 3)


def test_zero_epochs_and_rewind_to_init_is_iterative_magnitude_pruning_of_the_initial_weights():
    """With 0 epochs per level nothing trains: every level prunes the initial weights by global magnitude, so the
    ticket is the global magnitude mask of the initialization at the target, and the weights are unchanged."""
    model = _mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = bench_harness.prune(model, "imp", 0.5, data=_batches(1), train_data=_batches(2),
                                 recipe={"epochs": 0, "lr": 0.1, "batch_size": 16}, return_result=True,
                                 rewind_epoch=0)
    assert result.info["levels"] == 4 and result.info["rewind_epoch"] == 0  # 0.8, 0.64, 0.512, 0.5
    assert result.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
    prunable = masking.prunable_parameters(model)
    expected = masking.topk_masks({n: before[n].abs() for n in prunable}, 0.5, "global")
    for name, mask in result.masks.items():
        assert torch.equal(mask, expected[name]), name
    for n, p in model.named_parameters():  # nothing trained: the kept weights are the initial ones
        keep = result.masks.get(n, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p.detach()[keep], before[n][keep]), n


def test_a_rewind_point_past_the_epochs_is_a_clear_error():
    with pytest.raises(ValueError, match="rewind_epoch 2 must be below the 2 training epochs.*rewind_epoch: 0"):
        bench_harness.prune(_mlp(), "imp", 0.5, data=_batches(1), train_data=_batches(2),
                            recipe={"epochs": 2, "lr": 0.1, "batch_size": 16}, rewind_epoch=2)


def test_a_suite_run_with_zero_epochs_and_rewind_to_init_succeeds(tmp_path):
    registry = get_registry()
    text = f"""
name: imp_zero_epochs
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [{{name: imp, params: {{rewind_epoch: 0}}}}]}}
recipe: {{epochs: 0, batch_size: 32, lr: 0.05}}
"""
    suite = validate_suite(parse_suite(yaml.safe_load(text), "imp.yaml"), registry).with_settings(
        results_root=str(tmp_path))
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["epochs_trained"] == 0 and row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
