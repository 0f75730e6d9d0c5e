import json

import pytest
import torch
from torch import nn

from bench_harness.config.suite import load_suite
from bench_harness.contract.ablations import reinitialize, shuffle_masks
from bench_harness.contract.masking import layer_densities
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import call_pruner, make_context
from bench_harness.errors import BenchError
from bench_harness.results.store import load_results
from tests.conftest import bench


def test_shuffle_keeps_each_layers_density_and_moves_the_mask():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.arange(100).view(10, 10) < 30, "b": torch.arange(40) < 5}
    shuffled = shuffle_masks(masks, g)
    assert layer_densities(shuffled) == layer_densities(masks)
    assert not torch.equal(shuffled["a"], masks["a"])


def test_reinit_draws_new_weights_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    model = nn.Linear(5, 5)
    before = model.weight.detach().clone()
    state = torch.random.get_rng_state()
    reinitialize(model, seed=0)
    assert not torch.equal(model.weight, before)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_invert_keeps_the_lowest_scores():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -3.0], [0.2, 2.0]]))
    cls = get_registry().get("pruner", "magnitude")
    result = call_pruner(cls, cls.Params(), model, 0.5, make_context(model), ablation="invert")
    assert result.masks["0.weight"].tolist() == [[True, False], [True, False]]


def test_invert_needs_scores():
    model = nn.Sequential(nn.Linear(2, 2))
    cls = get_registry().get("pruner", "dense")
    with pytest.raises(BenchError, match="needs a score-based pruner"):
        call_pruner(cls, cls.Params(), model, 0.5, make_context(model), ablation="invert")


@pytest.mark.integration
def test_ablations_are_part_of_identity_and_results(tmp_path):
    path = tmp_path / "abl.yaml"
    path.write_text(f"""
name: abl
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 3, image_size: 6, train_size: 96, test_size: 48}}}}]
  sparsities: [0.8]
  pruners: [dense, magnitude, imp]
ablations: [null, shuffle, reinit, invert]
recipe: {{epochs: 1, batch_size: 32}}
results_root: {tmp_path / 'results'}
""")
    suite = load_suite(path)
    combos = sorted((r.pruner.name, r.ablation or "-") for r in suite.runs)
    # dense: no ablation; imp: no invert (it has no scores)
    assert combos == sorted([("dense", "-"), ("magnitude", "-"), ("magnitude", "shuffle"), ("magnitude", "reinit"),
                             ("magnitude", "invert"), ("imp", "-"), ("imp", "shuffle"), ("imp", "reinit")])
    assert len({r.run_id for r in suite.runs}) == len(suite.runs)
    bench("run", path, "--no-progress")
    df = load_results(tmp_path / "results", ["abl"])
    assert (df.status == "ok").all() and len(df) == 8
    mag = df[df.pruner == "magnitude"].set_index(df[df.pruner == "magnitude"].ablation.fillna("-"))
    plain, shuffled = json.loads(mag.loc["-", "layer_density"]), json.loads(mag.loc["shuffle", "layer_density"])
    assert plain == pytest.approx(shuffled)
    assert "ablation" in bench("results", path).stdout
