"""The during-training pruners end to end: a LeNet-5 suite on the synthetic data set, the core training with each
pruner's mask updater; the update log in the row's pruner_info shows the masks change at the update steps, SET and
RigL keep the target density (and every layer's count), GMP reaches the target at its end step."""
import json

import pytest
import yaml

from bench_harness.contract.plugins import Registry
from bench_harness.running.runner import execute_run
from tests.conftest import suite_from_text

# 256 training images, batch 32: 8 steps per epoch, 3 epochs = 24 optimizer steps
DATA = "{name: synthetic, params: {num_classes: 4, image_size: 28, in_channels: 1, train_size: 256, test_size: 64}}"
TOTAL = 24
SPARSITY = 0.9


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    registry = Registry()
    pruners = [
        {"name": "rigl", "params": {"every": 2, "end": 0.75}},
        {"name": "set", "params": {"every": 2, "end": 0.75, "drop_fraction_anneal": "constant"}},
        {"name": "gmp", "params": {"every": 4, "begin": 0.0, "end": 0.75}},
        {"name": "static_sparse"},
    ]
    text = yaml.safe_dump({
        "name": "dst_e2e",
        "grid": {"models": ["lenet5"], "datasets": [yaml.safe_load(DATA)], "sparsities": [SPARSITY],
                 "pruners": pruners},
        "recipe": {"epochs": 3, "batch_size": 32, "lr": 0.05},
    })
    suite = suite_from_text(text, tmp_path_factory.mktemp("dst"), registry, "dst.yaml")
    out = {}
    for run in suite.runs:
        row = execute_run(run, registry)
        assert row["status"] == "ok", row.get("error")
        out[run.pruner.name] = row
    return out


def _updates(row):
    return json.loads(row["pruner_info"])["mask_updates"]


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_dst_masks_change_at_update_steps_at_constant_density(rows, name):
    log = _updates(rows[name])
    assert [u["step"] for u in log] == list(range(2, 19, 2))  # every 2 steps until 0.75 * 24 = 18
    first = log[0]["layer_density"]
    for u in log:
        assert u["density"] == pytest.approx(1 - SPARSITY, abs=1e-3)
        assert u["layer_density"] == first  # each layer's count is constant
    assert all(u["changed"] > 0 for u in log[:-1])  # the cosine-annealed drop fraction is 0 at the end step only
    # counted on the weights: a grown weight starts at zero (RigL's grow_init) and stays zero while its gradient is
    # (e.g. the input unit is dead), so the weights can be sparser than the masks; never denser
    assert SPARSITY - 1e-3 <= rows[name]["achieved_sparsity"] < SPARSITY + 0.02


def test_rigl_last_update_at_the_end_step_changes_nothing(rows):
    assert _updates(rows["rigl"])[-1]["changed"] == 0  # cos(pi) = -1: drop fraction 0
    assert _updates(rows["set"])[-1]["changed"] > 0  # constant drop fraction


def test_gmp_prunes_gradually_to_the_target_at_the_end_step(rows):
    log = _updates(rows["gmp"])
    assert [u["step"] for u in log] == [4, 8, 12, 16, 18]
    densities = [u["density"] for u in log]
    assert densities == sorted(densities, reverse=True) and densities[0] < 1.0
    assert densities[-1] == pytest.approx(1 - SPARSITY, abs=1e-3)
    assert rows["gmp"]["achieved_sparsity"] == pytest.approx(SPARSITY, abs=1e-3)


def test_static_sparse_has_no_updates_and_the_same_initial_masks_as_rigl(rows):
    info = json.loads(rows["static_sparse"]["pruner_info"])
    assert "mask_updates" not in info or not info["mask_updates"]
    rigl = json.loads(rows["rigl"]["pruner_info"])
    assert info["layer_density"] == pytest.approx(rigl["initial_layer_density"])


def test_rigl_grows_by_the_dense_gradient_the_core_captures(tmp_path, monkeypatch):
    """At an update step the core hands RigL d loss / d w for the pruned entries too (not the masked gradient)."""
    from bench_harness_plugins.dst import pruners

    seen = []
    original = pruners.RigLUpdater.grow_scores

    def spy(self, name, weight, u):
        scores = original(self, name, weight, u)
        pruned = ~u.masks[name]
        if bool(pruned.any()):  # ERK may keep a small layer dense
            seen.append((u.step, float((scores[pruned] != 0).float().mean())))
        return scores

    monkeypatch.setattr(pruners.RigLUpdater, "grow_scores", spy)
    registry = Registry()
    text = yaml.safe_dump({
        "name": "dst_grads",
        "grid": {"models": ["lenet5"], "datasets": [yaml.safe_load(DATA)], "sparsities": [SPARSITY],
                 "pruners": [{"name": "rigl", "params": {"every": 4, "end": 0.5, "drop_fraction_anneal": "constant"}}]},
        "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    })
    row = execute_run(suite_from_text(text, tmp_path, registry, "dst.yaml").runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert len(seen) >= 3 and {s for s, _ in seen} == {4}  # 8 steps, end step 4: one update of the sparse layers
    # a masked gradient would be exactly zero on every pruned entry; the dense one is not (it is zero only where a
    # unit feeding the weight is dead: the first layers see every pixel)
    assert seen[0][1] == 1.0 and all(nonzero > 0.2 for _, nonzero in seen), seen
