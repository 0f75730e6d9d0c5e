"""During-training pruners (plugins/dst): schedules, one drop/grow step and GMP masks computed by hand, agreement with
JaxPruner's outputs (tests/fixtures/dst/jaxpruner.json, scripts/dst_official_fixtures.py), the updaters on a tiny
model."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import bench_harness
from bench_harness import MaskUpdate
from bench_harness_plugins.dst import pruners, schedules, sparse_ops
from bench_harness_plugins.dst.sparse_ops import drop_grow_layer, magnitude_masks

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "dst" / "jaxpruner.json").read_text())


# -- schedules (hand-computed) ------------------------------------------------------------------------------

def test_gmp_sparsity_cubic_schedule_by_hand():
    # s_t = 0.9 + (0 - 0.9)(1 - t/100)^3
    assert schedules.gmp_sparsity(0, 0.9, 0, 100) == 0.0
    assert schedules.gmp_sparsity(50, 0.9, 0, 100) == pytest.approx(0.9 - 0.9 * 0.125)  # 0.7875
    assert schedules.gmp_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert schedules.gmp_sparsity(150, 0.9, 0, 100) == pytest.approx(0.9)  # clipped after the end step
    assert schedules.gmp_sparsity(10, 0.9, 20, 100) == 0.0  # before t_0: s_i
    # s_i = 0.5, t_0 = 0, n dt = 100, t = 25: 0.9 - 0.4 * 0.75^3 = 0.73125
    assert schedules.gmp_sparsity(25, 0.9, 0, 100, initial_sparsity=0.5) == pytest.approx(0.73125)
    # t_0 = 20, end 120, t = 70: halfway
    assert schedules.gmp_sparsity(70, 0.8, 20, 120) == pytest.approx(0.8 - 0.8 * 0.125)


def test_cosine_drop_fraction_by_hand():
    assert schedules.cosine_drop_fraction(0, 0.3, 0, 100) == pytest.approx(0.3)
    assert schedules.cosine_drop_fraction(50, 0.3, 0, 100) == pytest.approx(0.15)
    assert schedules.cosine_drop_fraction(25, 0.3, 0, 100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))
    assert schedules.cosine_drop_fraction(100, 0.3, 0, 100) == pytest.approx(0.0)
    assert schedules.cosine_drop_fraction(60, 0.3, 10, 110) == pytest.approx(0.15)  # counted from begin
    assert schedules.drop_fraction_at(60, 0.3, 10, 110, "constant") == 0.3
    with pytest.raises(ValueError, match="cosine"):
        schedules.drop_fraction_at(60, 0.3, 10, 110, "linear")


def test_update_steps_every_from_begin_to_end():
    steps = [t for t in range(1, 13) if schedules.is_update_step(t, 0, 10, 3)]
    assert steps == [3, 6, 9]
    with_end = [t for t in range(1, 13) if schedules.is_update_step(t, 0, 10, 3, include_end=True)]
    assert with_end == [3, 6, 9, 10]
    assert [t for t in range(1, 30) if schedules.is_update_step(t, 5, 25, 10)] == [5, 15, 25]


def test_update_window_from_fractions():
    # RigL CIFAR-10: 97656 steps, updates until 75 %: step 73242
    assert schedules.update_window(0.0, 0.75, 97656) == (0, 73242)
    assert schedules.update_window(0.0, 0.75, 1) == (0, 1)  # a one-step training still updates once
    with pytest.raises(ValueError, match="begin"):
        schedules.update_window(0.8, 0.5, 100)


# -- one drop/grow step (hand-computed) ---------------------------------------------------------------------

W = torch.tensor([[0.5, -0.1, 0.0], [0.3, 0.0, -0.8]])
M = torch.tensor([[True, True, False], [True, False, True]])


def test_drop_grow_step_by_hand_just_dropped_may_regrow():
    # active |w|: 0.5 (0), 0.1 (1), 0.3 (3), 0.8 (5); n = 2 drops entries 1 and 3 (smallest |w|)
    # grow among {1, 2, 3, 4} by score: 1 (0.9) and 2 (0.8): entry 1 was just dropped and regrows
    grow = torch.tensor([[0.0, 0.9, 0.8], [0.1, 0.2, 0.4]])
    new, grown = drop_grow_layer(W, M, grow, 2)
    assert new.tolist() == [[True, True, True], [False, False, True]]
    assert grown.tolist() == [[False, False, True], [False, False, False]]  # only entry 2 is new
    assert int(new.sum()) == int(M.sum())


def test_drop_grow_never_regrows_kept_and_ties_by_position():
    # grow scores largest on kept entries (0, 5): they are not candidates
    grow = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    new, grown = drop_grow_layer(W, M, grow, 2)
    # candidates 1, 2, 3, 4 all tie at 0: the lower positions win (1, 2)
    assert new.tolist() == [[True, True, True], [False, False, True]]
    # ties among drop scores: equal |w| keep the lower positions, drop the last one
    w = torch.ones(6)
    m = torch.ones(6, dtype=torch.bool)
    new, _ = drop_grow_layer(w, m, torch.zeros(6), 1)
    assert new.tolist() == [True] * 6  # dropped entry 5 and regrew the best candidate: entry 5 (the only one)
    m = torch.tensor([True, True, True, True, False, False])
    new, grown = drop_grow_layer(torch.ones(6), m, torch.tensor([0, 0, 0, 0, 0, 1.0]), 1)
    assert new.tolist() == [True, True, True, False, False, True] and grown.tolist() == [False] * 5 + [True]


def test_drop_noise_breaks_ties_at_random_from_the_generator():
    w, m, grow = torch.ones(40), torch.ones(40, dtype=torch.bool), torch.zeros(40)
    m[30:] = False
    grow[30:] = 1.0  # the inactive entries grow: the new mask shows which active ones were dropped
    picks = {tuple(drop_grow_layer(w, m, grow, 5, torch.Generator().manual_seed(s), noise_std=1e-5)[0].tolist())
             for s in range(4)}
    assert len(picks) > 1  # the dropped entries differ by seed
    again = drop_grow_layer(w, m, grow, 5, torch.Generator().manual_seed(0), noise_std=1e-5)[0]
    assert tuple(again.tolist()) in picks
    assert int(again.sum()) == 30


def test_drop_count_is_rigl_floor():
    assert sparse_ops.drop_count(10, 0.25) == 2
    assert sparse_ops.drop_count(10, 0.35) == 3
    assert sparse_ops.drop_count(3, 0.3) == 0


# -- GMP masks (hand-computed) ------------------------------------------------------------------------------

A = torch.tensor([0.1, -0.8, 0.3, 0.6, -0.2, 0.5, 0.05, 0.7])
B = torch.tensor([2.0, -0.01, 1.2, 1.5, 0.03, -0.04, 0.9, 0.06])


def test_gmp_layerwise_and_global_masks_at_a_step():
    weights = {"a": A, "b": B}
    full = {"a": torch.ones(8, dtype=torch.bool), "b": torch.ones(8, dtype=torch.bool)}
    s = schedules.gmp_sparsity(5, 0.75, 0, 10)  # 0.75 - 0.75/8 = 0.65625
    assert s == pytest.approx(0.65625)
    # layer-wise, uniform: final 2 kept per layer; at s: round(0.34375 * 8) = round(2.75) = 3 per layer
    counts = pruners.gmp_counts(weights, s, 0.75, {"a": 2, "b": 2})
    assert counts == {"a": 3, "b": 3}
    masks = magnitude_masks(weights, full, counts)
    assert masks["a"].nonzero().flatten().tolist() == [1, 3, 7]  # 0.8, 0.6, 0.7
    assert masks["b"].nonzero().flatten().tolist() == [0, 2, 3]  # 2.0, 1.2, 1.5
    # global: round(0.34375 * 16) = round(5.5) = 6: 2.0 1.5 1.2 0.9 0.8 0.7
    count = pruners.gmp_counts(weights, s, 0.75, None)
    assert count == 6
    masks = magnitude_masks(weights, full, count)
    assert masks["a"].nonzero().flatten().tolist() == [1, 7]
    assert masks["b"].nonzero().flatten().tolist() == [0, 2, 3, 6]
    # at the end step: exactly the final counts
    assert pruners.gmp_counts(weights, 0.75, 0.75, {"a": 2, "b": 2}) == {"a": 2, "b": 2}


def test_gmp_masks_only_shrink():
    weights = {"a": A}
    masks = {"a": torch.tensor([True, False, True, True, True, True, True, True])}  # 0.8 (entry 1) pruned
    out = magnitude_masks(weights, masks, {"a": 3})
    assert out["a"].nonzero().flatten().tolist() == [3, 5, 7]  # 0.6, 0.5, 0.7; entry 1 stays pruned
    out = magnitude_masks(weights, masks, {"a": 8})
    assert out["a"].tolist() == masks["a"].tolist()  # asking for more than is active keeps the active ones


def test_gmp_layerwise_counts_follow_the_allocation_to_its_end():
    weights = {"a": torch.ones(100), "b": torch.ones(10)}
    final = {"a": 5, "b": 6}  # e.g. ERK: the small layer denser
    half = pruners.gmp_counts(weights, 0.45, 0.9, final)  # halfway in sparsity: each layer at half its sparsity
    assert half == {"a": round(100 * (1 - 0.95 / 2)), "b": round(10 * (1 - 0.4 / 2))}


# -- JaxPruner fixtures -------------------------------------------------------------------------------------

def test_gmp_schedule_matches_jaxpruner_one_step_later():
    # JaxPruner's update at count c (c optimizer steps done) uses progress (c + 1 - start) / (end - start); our
    # update after step t uses (t - t_0) / (t_end - t_0): JaxPruner's value at c is ours at t = c + 1.
    f = FIXTURE["polynomial"]
    for c, expected in zip(f["counts"], f["sparsity"]):
        ours = schedules.gmp_sparsity(c + 1, f["target"], f["update_start_step"], f["update_end_step"])
        assert ours == pytest.approx(expected, abs=1e-6), c
    for c, expected in zip(f["counts"], f["is_update"]):
        ours = schedules.is_update_step(c, f["update_start_step"], f["update_end_step"], f["update_freq"])
        assert ours == expected, c


def test_cosine_drop_fraction_matches_jaxpruner():
    f = FIXTURE["cosine"]
    for c, expected in zip(f["counts"], f["drop"]):
        assert schedules.cosine_drop_fraction(c, f["drop_fraction"], 0, f["update_end_step"]) == pytest.approx(
            expected, abs=1e-6), c


def test_drop_grow_matches_jaxpruner_rigl_update():
    f = FIXTURE["drop_grow"]
    shape = tuple(f["shape"])
    w = torch.tensor(f["weights"], dtype=torch.float32).view(shape)
    g = torch.tensor(f["grads"], dtype=torch.float32).view(shape)
    m = torch.tensor(f["mask"], dtype=torch.bool).view(shape)
    n = sparse_ops.drop_count(int(m.sum()), f["drop_fraction"])  # 6 of 24: JaxPruner keeps round(18) = 18 too
    new, grown = drop_grow_layer(w, m, g.abs(), n)
    expected = torch.tensor(f["rigl_new_mask"], dtype=torch.bool).view(shape)
    assert torch.equal(new, expected)
    assert grown.flatten().nonzero().flatten().tolist() == [9, 13, 35, 39]
    assert bool(new.flatten()[0]) and bool(new.flatten()[2])  # dropped (smallest |w|) and regrown (largest |g|)


def test_erk_counts_match_jaxpruner():
    # JaxPruner keeps round(N_l (1 - s_l)) per layer; the harness's layer_counts apportions the same densities to
    # integers summing to round(d N): every layer within one weight of JaxPruner's count.
    for key, case in FIXTURE["erk"].items():
        prunable = {n: nn.Parameter(torch.zeros(s)) for n, s in case["shapes"].items()}
        counts = pruners.initial_counts(prunable, 1.0 - case["sparsity"], "erk")
        for n, kept in case["kept"].items():
            assert abs(counts[n] - kept) <= 1, (key, n, counts[n], kept)
        total = sum(p.numel() for p in prunable.values())
        assert sum(counts.values()) == round((1 - case["sparsity"]) * total)


# -- the updaters on a tiny model ---------------------------------------------------------------------------

def _prunable(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, {"0.weight": model[0].weight, "2.weight": model[2].weight}


def _update(model, prunable, masks, step, total, grads=None, seed=0):
    return MaskUpdate(step=step, total_steps=total, steps_per_epoch=10, model=model, masks=masks, prunable=prunable,
                      grads=grads, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      generator=torch.Generator().manual_seed(seed))


def _context(prunable, seed=0):
    from bench_harness import PruneContext

    return PruneContext(prunable=prunable, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
                        seed=seed)


def test_static_set_rigl_share_the_initial_masks_and_allocation():
    model, prunable = _prunable()
    results = [cls(cls.Params()).prune(model, 0.75, _context(prunable))
               for cls in (pruners.StaticSparse, pruners.SET, pruners.RigL)]
    masks = [r.masks for r in results]
    counts = pruners.initial_counts(prunable, 0.25, "erk")
    for m in masks:
        assert {n: int(t.sum()) for n, t in m.items()} == counts
        for n in m:
            assert torch.equal(m[n], masks[0][n])
    assert results[0].updater is None and results[1].updater is not None
    other = pruners.SET(pruners.SET.Params()).prune(model, 0.75, _context(prunable, seed=1)).masks
    assert any(not torch.equal(other[n], masks[0][n]) for n in other)


def test_rigl_update_grows_largest_gradients_with_zero_weights():
    model, prunable = _prunable()
    rigl = pruners.RigL(pruners.RigL.make_params({"drop_fraction": 0.5, "drop_fraction_anneal": "constant",
                                                  "noise_std": 0.0}))
    result = rigl.prune(model, 0.5, _context(prunable))
    masks, updater = result.masks, result.updater
    with torch.no_grad():
        for n, p in prunable.items():
            p.mul_(masks[n])
    grads = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) for n, p in prunable.items()}
    total = 1000
    assert updater.needs_dense_grad
    assert updater.is_update_step(100, total, 10) and not updater.is_update_step(101, total, 10)
    assert not updater.is_update_step(800, total, 10)  # after 75 %
    before = {n: p.detach().clone() for n, p in prunable.items()}
    new = updater.update(_update(model, prunable, masks, 100, total, grads))
    for n, p in prunable.items():
        old, m = masks[n], new[n]
        assert int(m.sum()) == int(old.sum())  # per-layer count constant
        k = sparse_ops.drop_count(int(old.sum()), 0.5)
        expected, grown = drop_grow_layer(before[n], old, grads[n].abs(), k)
        assert torch.equal(m, expected)
        assert bool((m != old).any())
        assert torch.all(p.detach()[grown] == 0)  # grown weights start at zero


def test_set_update_is_random_regrowth_from_the_update_generator():
    model, prunable = _prunable()
    set_ = pruners.SET(pruners.SET.Params())
    result = set_.prune(model, 0.5, _context(prunable))
    a = result.updater.update(_update(model, prunable, result.masks, 100, 1000, seed=1))
    b = result.updater.update(_update(model, prunable, result.masks, 100, 1000, seed=1))
    c = result.updater.update(_update(model, prunable, result.masks, 100, 1000, seed=2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    for n in a:
        assert int(a[n].sum()) == int(result.masks[n].sum())
    # the cosine drop fraction at 100 of [0, 750]: int(n_active * 0.3 * 0.5 * (1 + cos(pi * 100 / 750)))
    f = schedules.cosine_drop_fraction(100, 0.3, 0, 750)
    assert result.updater.drop_fraction(100, 1000) == pytest.approx(f)


def test_gmp_updater_reaches_the_target_at_the_end_step():
    model, prunable = _prunable()
    gmp = pruners.GMP(pruners.GMP.make_params({"every": 10, "begin": 0.0, "end": 0.5}))
    result = gmp.prune(model, 0.8, _context(prunable))
    masks, updater = result.masks, result.updater
    assert all(bool(m.all()) for m in masks.values())  # starts dense
    total = 95  # end step round(47.5) = 48 (not a multiple of 10: updated anyway)
    steps = [t for t in range(1, total + 1) if updater.is_update_step(t, total, 10)]
    assert steps == [10, 20, 30, 40, 48]
    densities = []
    for t in steps:
        masks = updater.update(_update(model, prunable, masks, t, total))
        with torch.no_grad():
            for n, p in prunable.items():
                p.mul_(masks[n])
        densities.append(bench_harness.masking.global_density(masks))
    assert densities == sorted(densities, reverse=True)
    counts = pruners.initial_counts(prunable, 0.2, "uniform")
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert sum(counts.values()) == round(0.2 * 72)  # 6x8 + 8x3 weights


def test_gmp_global_rejects_an_allocation():
    model, prunable = _prunable()
    gmp = pruners.GMP(pruners.GMP.make_params({"scope": "global", "allocation": "erk"}))
    with pytest.raises(ValueError, match="layerwise"):
        gmp.prune(model, 0.8, _context(prunable))


def test_a_window_that_ends_before_it_begins_is_refused_at_prune():
    model, prunable = _prunable()
    for cls in (pruners.GMP, pruners.RigL):
        with pytest.raises(ValueError, match="begin"):
            cls(cls.make_params({"begin": 0.8, "end": 0.5})).prune(model, 0.8, _context(prunable))


def test_set_and_rigl_updates_replace_the_optimizer_step_gmp_does_not():
    assert pruners.RigLUpdater.skips_step and pruners.DropGrowUpdater.skips_step
    assert not pruners.GMPUpdater.skips_step
