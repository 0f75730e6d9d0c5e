"""Strong lottery tickets (plugins/slt/pruner.py): partially frozen networks, Edge-Popup, the random control.

The per-layer frozen counts are compared with counts produced by running the official code
(scripts/slt_official_counts.py -> tests/fixtures/slt/official_counts.json); no test needs the official code.
"""
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import bench_harness
from bench_harness.api import make_recipe
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.conformance import check_pruner
from bench_harness.contract import masking
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import call_pruner, make_context
from bench_harness.running.runner import execute_run
from bench_harness.running.trainer import Trainer
from bench_harness_plugins.slt import allocation as slt_allocation
from bench_harness_plugins.slt import pruner as pruners_slt
from bench_harness_plugins.slt.models import CifarResNet18

FIXTURE = Path(__file__).parent / "fixtures" / "slt" / "official_counts.json"
DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"


def _batches(n=3, seed=0, size=16, shape=(3, 8, 8), classes=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


class _Spy:
    """Records the search (scores, frozen states) and the weights right before and after score training."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = pruners_slt.SltFrozen.train_scores

        def spy(pruner, model, names, weights, search, ctx):
            before = [w.detach().clone() for w in weights]
            steps = original(pruner, model, names, weights, search, ctx)
            self.calls.append({"search": search, "before": before,
                               "after": [w.detach().clone() for w in weights], "names": names})
            return steps

        monkeypatch.setattr(pruners_slt.SltFrozen, "train_scores", spy)


def _prune(name="slt_frozen", sparsity=0.6, epochs=2, model=None, **params):
    model = model or _net()
    result = bench_harness.prune(model, name, sparsity, data=_batches(1), train_data=_batches(3),
                                 recipe={"epochs": epochs, "lr": 0.1, "batch_size": 16}, return_result=True,
                                 **params)
    return model, result


# -- per-layer frozen counts against the official code --------------------------------------------------------

def _shapes(model_name):
    registry = get_registry()
    from bench_harness.contract.models import build_model

    model = build_model(registry.get("model", model_name), model_name, 10, 3, 32)
    return [tuple(p.shape) for p in masking.prunable_parameters(model).values()]


def test_frozen_counts_equal_the_official_codes_on_conv6_and_cifar_resnet18():
    stored = json.loads(FIXTURE.read_text())
    shapes = {"conv6": _shapes("conv6"), "cifar_resnet18": _shapes("cifar_resnet18")}
    cases = [c for c in stored["cases"] if "error" not in c]
    assert len(cases) == 96 and {c["model"] for c in cases} == set(shapes)
    for case in cases:
        layer_shapes = shapes[case["model"]]
        assert [slt_allocation._numel(s) for s in layer_shapes] == case["numel"], case["model"]
        counts = slt_allocation.frozen_counts(case["allocation"], layer_shapes, case["p"], case["r"],
                                              case["locking_rule"])
        where = f"{case['model']} {case['allocation']} {case['locking_rule']} p={case['p']} r={case['r']}"
        assert [c[0] for c in counts] == case["pruned"], where
        assert [c[1] for c in counts] == case["kept"], where


def test_allocation_rules_by_hand():
    # EPL: 300 edges over layers of 100, 1000, 1000 -> 100 each; no overflow
    assert slt_allocation.epl_sparsities([100, 1000, 1000], 300 / 2100) == pytest.approx([0.0, 0.9, 0.9])
    # EPL with overflow: 1500 edges -> the small layer is full (100), 700 each for the others
    assert slt_allocation.epl_sparsities([100, 1000, 1000], 1500 / 2100) == pytest.approx([0.0, 0.3, 0.3])
    # ERK: density proportional to sum(shape)/numel; a dense total stays dense
    assert slt_allocation.erk_sparsities([(10, 10), (20, 10)], 1.0) == [0.0, 0.0]
    erk = slt_allocation.erk_sparsities([(100, 100), (100, 10)], 0.2)
    kept = (1 - erk[0]) * 10_000 + (1 - erk[1]) * 1000
    assert kept == pytest.approx(0.2 * 11_000) and (1 - erk[1]) / (1 - erk[0]) == pytest.approx(110 / 1000 / 0.02)
    # IGQ: overall sparsity within 1/N of the target, larger layers sparser
    igq = slt_allocation.igq_sparsities([100, 10_000], 0.3)
    assert abs(1 - ((1 - igq[0]) * 100 + (1 - igq[1]) * 10_000) / 10_100 - 0.7) < 1 / 10_100
    assert igq[1] > igq[0]


# -- the search ---------------------------------------------------------------------------------------------------

def test_frozen_entries_are_forced_and_the_density_is_exact(monkeypatch):
    spy = _Spy(monkeypatch)
    model, result = _prune(pruning_ratio=0.3, locking_ratio=0.2, allocation="epl", sparsity=0.6)
    search = spy.calls[0]["search"]
    total = sum(m.numel() for m in result.masks.values())
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert kept == total - int(total * 0.6)  # final density = 1 - s exactly (k = int(N·s) pruned)
    assert sum(int((s == -1).sum()) for s in search.states) > 0 and sum(int((s == 1).sum()) for s in search.states) > 0
    for mask, state in zip(result.masks.values(), search.states):
        assert not mask[state == -1].any()  # -1: always pruned
        assert mask[state == 1].all()  # +1: always kept
    # the returned masks are the threshold masks of the final scores (no ties here)
    search.refresh()
    for mask, hard in zip(result.masks.values(), search.masks):
        assert torch.equal(mask, hard.bool())
    frozen = result.info["frozen"]
    assert list(frozen) == list(result.masks)
    for (name, counts), state in zip(frozen.items(), search.states):
        assert counts == {"pruned": int((state == -1).sum()), "kept": int((state == 1).sum())}
    free = total - result.info["frozen_pruned"] - result.info["frozen_kept"]
    assert result.storage_bits == free + 64


def test_score_training_leaves_the_weights_bit_identical(monkeypatch):
    spy = _Spy(monkeypatch)
    model, result = _prune(pruning_ratio=0.2, locking_ratio=0.1)
    call = spy.calls[0]
    assert result.info["score_steps"] == 6
    for before, after in zip(call["before"], call["after"]):
        assert torch.equal(before, after)
    # the model holds the frozen weights with the mask applied; BN is non-affine (1/0), biases zero
    params = dict(model.named_parameters())
    for name, before in zip(call["names"], call["before"]):
        assert torch.equal(params[name].detach(), before * result.masks[name])
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_the_scores_learn_something(monkeypatch):
    spy = _Spy(monkeypatch)
    _prune(epochs=3)
    search = spy.calls[0]["search"]
    initial = pruners_slt._draw(tuple(search.scores[0].shape), "kaiming_normal", torch.Generator())
    assert search.scores[0].requires_grad and not torch.equal(search.scores[0].detach(), initial)


def test_sparsity_outside_p_and_one_minus_r_is_an_error():
    with pytest.raises(ValueError, match="pruning_ratio <= sparsity <= 1 - locking_ratio"):
        _prune(sparsity=0.2, pruning_ratio=0.3)
    with pytest.raises(ValueError, match="pruning_ratio <= sparsity <= 1 - locking_ratio"):
        _prune(sparsity=0.8, locking_ratio=0.3)
    with pytest.raises(ValueError, match="allocation"):
        _prune(allocation="uniform")


def test_s_equal_to_p_and_to_one_minus_r_are_allowed():
    _, low = _prune(sparsity=0.5, pruning_ratio=0.5, epochs=1)
    _, high = _prune(sparsity=0.5, locking_ratio=0.5, epochs=1)
    assert low.achieved_sparsity == high.achieved_sparsity == pytest.approx(0.5, abs=1e-3)


def test_edge_popup_is_layerwise_and_the_random_mask_needs_no_training(monkeypatch):
    spy = _Spy(monkeypatch)
    _, popup = _prune("edge_popup", sparsity=0.7)
    for mask in popup.masks.values():
        assert int(mask.numel() - mask.sum()) == int(mask.numel() * 0.7)
    assert popup.storage_bits == sum(m.numel() for m in popup.masks.values()) + 64
    model, rnd = _prune("slt_random_mask", sparsity=0.7, allocation="epl")
    assert len(spy.calls) == 1 and rnd.info["score_steps"] == 0 and rnd.storage_bits == 64
    assert rnd.achieved_sparsity == pytest.approx(0.7, abs=1e-3)
    # BatchNorm statistics recomputed on the masked network (not left at 0/1)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_dynamic_scaling_writes_the_layer_scale_into_the_weights(monkeypatch):
    spy = _Spy(monkeypatch)
    model, result = _prune(sparsity=0.6, dynamic_scaling=True, epochs=1)
    params = dict(model.named_parameters())
    for name, before in zip(spy.calls[0]["names"], spy.calls[0]["before"]):
        mask = result.masks[name]
        scale = 1 / float(mask.float().mean()) ** 0.5
        assert torch.allclose(params[name].detach(), before * mask * scale)


def test_ties_at_the_threshold_are_broken_in_model_order():
    scores = [torch.tensor([1.0, 1.0, 1.0, 2.0]), torch.tensor([1.0, 3.0])]
    states = [torch.zeros(4, dtype=torch.int8), torch.tensor([0, -1], dtype=torch.int8)]
    search = pruners_slt._Search(scores, states, 0.5, "global", False)
    masks = search.final_masks()  # k = 3 pruned: the -1 entry, then the last two of the four tied 1.0s
    assert masks[0].tolist() == [True, True, False, True] and masks[1].tolist() == [False, False]


# -- preemption, suites, conformance ---------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _prune_with_checkpoints(checkpoints, stop_after=None):
    model = _net()
    seen = {"n": 0}

    def on_epoch(phase, epoch, total, loss):
        seen["n"] += 1
        if seen["n"] == stop_after:
            raise _Stop()

    trainer = Trainer(_batches(3), make_recipe({"epochs": 3, "lr": 0.1, "batch_size": 16}), torch.device("cpu"),
                      checkpoint_dir=checkpoints, on_epoch=on_epoch, freeze_unoptimized=True)
    ctx = make_context(model, batches=lambda: iter(_batches(1)), trainer=trainer)
    cls = get_registry().get("pruner", "slt_frozen")
    result = call_pruner(cls, cls.make_params({"pruning_ratio": 0.2, "locking_ratio": 0.2}), model, 0.5, ctx)
    return result, trainer


def test_a_preempted_score_training_resumes_with_the_same_result(tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    plain, _ = _prune_with_checkpoints(None)
    with pytest.raises(_Stop):
        _prune_with_checkpoints(tmp_path, stop_after=2)  # preempted after the 2nd of 3 epochs
    resumed, trainer = _prune_with_checkpoints(tmp_path)
    assert trainer.history[0].resumed_from_epoch == 2 and trainer.history[0].steps == 3  # the last epoch only
    for name in plain.masks:
        assert torch.equal(plain.masks[name], resumed.masks[name])
    first, last = spy.calls[0]["search"], spy.calls[-1]["search"]
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(first.scores, last.scores))
    assert plain.info["threshold"] == resumed.info["threshold"]


def _suite(text, root):
    suite = validate_suite(parse_suite(yaml.safe_load(text), "slt.yaml"), get_registry())
    return suite.with_settings(results_root=str(root))


def test_suite_rows_carry_the_regime_and_the_model_bits(tmp_path):
    suite = _suite(f"""
name: slt_rows
grid:
  models: [mlp]
  datasets: [{DATA}]
  sparsities: [0.5]
  pruners:
    - {{name: slt_frozen, params: {{pruning_ratio: 0.2, locking_ratio: 0.3, allocation: igq}}}}
    - edge_popup
    - slt_random_mask
    - {{name: slt_frozen, params: {{pruning_ratio: 0.6}}}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.1}}
""", tmp_path)
    frozen, popup, rnd, bad = (execute_run(run) for run in suite.runs)
    for row in (frozen, popup, rnd):
        assert row["status"] == "ok", row.get("error")
        assert row["regime"] == "mask_learning" and row["epochs_trained"] == 0
        assert row["top1"] == row["top1_before_training"]
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert row["compression_ratio"] == pytest.approx(32 * row["params_total"] / row["model_bits"])
    info = json.loads(frozen["pruner_info"])
    assert frozen["model_bits"] == info["free_weights"] + 64 < popup["model_bits"] == frozen["params_prunable"] + 64
    assert rnd["model_bits"] == 64
    assert bad["status"] == "failed" and "pruning_ratio <= sparsity" in bad["error"]


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("slt_frozen", {"pruning_ratio": 0.2, "locking_ratio": 0.2,
                                                         "allocation": "epl"}),
                                         ("edge_popup", {}), ("slt_random_mask", {})])
def test_the_slt_pruners_pass_the_conformance_kit(name, params):
    cls = get_registry().get("pruner", name)
    checks = check_pruner(cls, cls.make_params(params), sparsities=(0.5,), models=("conv_bn", "residual"))
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
    if name != "slt_random_mask":
        assert "resumes after an interruption with the same masks" in {c.name for c in checks}


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["conv2", "conv4", "conv6", "resnet20", "cifar_resnet18",
                                        "torchvision:resnet18", "torchvision:resnet50"])
def test_one_score_step_on_every_model_family(model_name):
    from bench_harness.contract.models import build_model

    spec = get_registry().get("model", model_name.split(":")[0])
    torch.manual_seed(0)
    model = build_model(spec, model_name, 10, 3, 32)
    data = _batches(1, size=4, shape=(3, 32, 32), classes=10)
    result = bench_harness.prune(model, "slt_frozen", 0.7, data=data, train_data=data,
                                 recipe={"epochs": 1, "lr": 0.1, "batch_size": 4}, return_result=True,
                                 pruning_ratio=0.3, locking_ratio=0.1, allocation="erk")
    assert result.achieved_sparsity == pytest.approx(0.7, abs=1e-6 + 1 / sum(m.numel() for m in result.masks.values()))
    assert result.info["score_steps"] == 1
    assert torch.isfinite(model(data[0][0])).all()


def test_cifar_resnet18_matches_the_official_layer_sizes():
    model = CifarResNet18(10)
    sizes = [p.numel() for p in masking.prunable_parameters(model).values()]
    official = json.loads(FIXTURE.read_text())["cases"]
    assert sizes == next(c["numel"] for c in official if c["model"] == "cifar_resnet18")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# -- EPL at p = s: the truncated frozen counts reach past int(N·s) (issue 27) -----------------------------------

def test_pruned_count_is_int_n_s_within_the_frozen_bounds():
    assert pruners_slt.pruned_count(1000, 0.5, 300, 200) == 500
    assert pruners_slt.pruned_count(1000, 0.5, 501, 0) == 501  # frozen pruned reach past k: all of them, no more
    assert pruners_slt.pruned_count(1000, 0.5, 0, 501) == 499  # frozen kept reach past N - k
    assert pruners_slt.pruned_count(2261184, 0.5, 1130593, 452236) == 1130593


def test_slt_frozen_with_epl_at_p_equal_to_s_prunes_what_the_official_code_prunes():
    """Conv-6, EPL, p = 0.5, r = 0.2, s = 0.5: the official code (fixture "runs", its set_kthvalue + GetSupermask at
    s) freezes 1130593 weights as pruned, one more than int(N·s) = 1130592; its threshold is -inf and its mask
    prunes exactly the frozen-pruned weights. So does slt_frozen, and the row's achieved sparsity says so."""
    stored = json.loads(FIXTURE.read_text())
    (run,) = [c for c in stored["runs"] if c["model"] == "conv6" and c["allocation"] == "epl" and c["p"] == 0.5
              and c["r"] == 0.2 and c["sparsity"] == 0.5]
    total = sum(run["numel"])
    assert sum(run["pruned"]) == int(total * 0.5) + 1 and run["threshold"] == -float("inf")
    assert run["mask_pruned"] == run["pruned"]
    from bench_harness.contract.models import build_model

    model = build_model(get_registry().get("model", "conv6"), "conv6", 10, 3, 32)
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))]
    result = bench_harness.prune(model, "slt_frozen", 0.5, data=data, train_data=data, return_result=True,
                                 recipe={"epochs": 1, "lr": 0.1, "batch_size": 2}, pruning_ratio=0.5,
                                 locking_ratio=0.2, allocation="epl", locking_rule="sparsity_distribution")
    frozen = list(result.info["frozen"].values())
    assert [f["pruned"] for f in frozen] == run["pruned"] and [f["kept"] for f in frozen] == run["kept"]
    assert [int((~m).sum()) for m in result.masks.values()] == run["mask_pruned"]
    assert result.info["pruned"] == sum(run["mask_pruned"]) and result.info["target_pruned"] == int(total * 0.5)
    assert result.achieved_sparsity == pytest.approx(sum(run["mask_pruned"]) / total, abs=1e-12)
    assert result.info["threshold"] == -float("inf")


def test_a_frozen_excess_beyond_the_tolerance_is_still_an_error(monkeypatch):
    monkeypatch.setattr(slt_allocation, "frozen_counts", lambda *a, **k: [(n, 0) for n in (432, 4608, 768, 96)])
    with pytest.raises(ValueError, match="tolerance"):  # everything frozen pruned: far from s = 0.5
        _prune(pruning_ratio=0.5, sparsity=0.5, epochs=1, model=nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)))


def test_the_suite_row_of_epl_at_p_equal_to_s_on_conv6_records_the_achieved_sparsity(tmp_path):
    stored = json.loads(FIXTURE.read_text())
    (run,) = [c for c in stored["runs"] if c["model"] == "conv6" and c["p"] == 0.5 and c["r"] == 0.2]
    suite = _suite("""
name: slt_epl_p_equal_s
grid:
  models: [conv6]
  datasets: [{name: synthetic, params: {num_classes: 10, image_size: 32, train_size: 8, test_size: 8}}]
  sparsities: [0.5]
  pruners: [{name: slt_frozen, params: {pruning_ratio: 0.5, locking_ratio: 0.2, allocation: epl}}]
recipe: {epochs: 1, batch_size: 8, lr: 0.1}
""", tmp_path)
    row = execute_run(suite.runs[0])
    assert row["status"] == "ok", row.get("error")
    total = sum(run["numel"])
    assert row["params_prunable"] == total
    assert row["achieved_sparsity"] == pytest.approx(sum(run["mask_pruned"]) / total, abs=1e-12)  # 0.5000004
    info = json.loads(row["pruner_info"])
    assert info["pruned"] == int(total * 0.5) + 1 and info["target_pruned"] == int(total * 0.5)
