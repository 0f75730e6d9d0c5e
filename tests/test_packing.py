"""Packed training (several runs as one vmap-batched computation) equals training each run alone."""
import pytest
import yaml

from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.running.runner import execute_packed, execute_run

SUITE = """
name: packed
grid:
  models: [{model}]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: {size}, train_size: 128, test_size: 128}}}}]
  sparsities: [0.9]
  seeds: [0, 1]
  pruners: [magnitude, random]
recipe: {{epochs: 2, batch_size: 32, lr: 0.05, augment: false, schedule: step, milestones: [1]}}
packing: 8
"""


def _runs(tmp_path, model, size):
    suite = validate_suite(parse_suite(yaml.safe_load(SUITE.format(model=model, size=size)), "packed.yaml"))
    return list(suite.with_settings(results_root=str(tmp_path)).runs)


@pytest.mark.parametrize("model, size", [("lenet5", 28), pytest.param("resnet20", 8, marks=pytest.mark.slow)])
def test_packed_runs_equal_runs_trained_alone(tmp_path, model, size):
    alone = [execute_run(run) for run in _runs(tmp_path / "alone", model, size)]
    runs = _runs(tmp_path / "packed", model, size)
    assert runs[0].packing == 8 and "packing" not in runs[0].identity()  # an execution setting, not identity
    packed = execute_packed(runs)
    assert all(r["status"] == "ok" for r in alone + packed), [r.get("error") for r in alone + packed]
    assert [r["packed_runs"] for r in packed] == [4] * 4
    for a, p in zip(alone, packed):
        assert a["run_id"] == p["run_id"]
        # float summation order differs (batched convolutions): 1e-7 after a step, a little more after training
        assert p["loss"] == pytest.approx(a["loss"], rel=1e-2)
        assert abs(p["top1"] - a["top1"]) <= 3 / 128
        assert p["achieved_sparsity"] == a["achieved_sparsity"] and p["params_nonzero"] == a["params_nonzero"]


def test_the_local_executor_packs_a_suite(tmp_path):
    from tests.conftest import bench

    path = tmp_path / "packed.yaml"
    path.write_text(SUITE.format(model="mlp", size=8) + f"results_root: {tmp_path / 'results'}\n")
    out = bench("run", path, "--no-progress")
    assert "4 ok, 0 failed" in out.stderr
    from bench_harness.results.store import load_results

    df = load_results(tmp_path / "results", ["packed"])
    assert (df.packed_runs == 4).all() and (df.status == "ok").all()
