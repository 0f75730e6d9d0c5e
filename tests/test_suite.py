import pytest

from bench_harness.config.suite import load_suite
from bench_harness.errors import SuiteError

GOOD = """
name: demo
grid:
  models: [mlp]
  datasets: [synthetic]
  sparsities: [0.5, 0.9]
  seeds: [0, 1]
  pruners: [dense, random, {name: magnitude, params: {scope: layerwise}}]
recipe: {epochs: 1, weight_decay: 5e-4}
"""


def _write(tmp_path, text):
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


def test_expansion_collapses_the_sparsity_axis_of_dense(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD))
    # dense: 2 seeds; random and magnitude: 2 sparsities x 2 seeds each
    assert len(suite.runs) == 2 + 4 + 4
    assert sorted({r.sparsity for r in suite.runs if r.pruner.name == "dense"}) == [0.0]
    assert suite.runs[0].recipe.weight_decay == 5e-4  # YAML reads 5e-4 as a string; coerced
    assert len({r.run_id for r in suite.runs}) == len(suite.runs)


@pytest.mark.parametrize("text, key, fragment", [
    (GOOD.replace("pruners: [dense", "pruners: [dense, magnitud"), "grid.pruners", "Did you mean 'magnitude'"),
    (GOOD.replace("models: [mlp]", "models: [resnet2]"), "grid.models", "'resnet20'"),
    (GOOD.replace("datasets: [synthetic]", "datasets: [cifar_10]"), "grid.datasets", "Did you mean 'cifar10'"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {epoch: 1"), "recipe.epoch", "Did you mean 'epochs'"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {epochs: many"), "recipe.epochs", "valid integer"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {epochs: true"), "recipe.epochs", "valid integer"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {optimizer: sgdd, epochs: 1"), "recipe.optimizer",
     "use 'sgd', 'adam' or 'adamw'. Did you mean 'sgd'"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {schedule: cosin, epochs: 1"), "recipe.schedule",
     "Did you mean 'cosine'"),
    (GOOD.replace("recipe: {epochs: 1", "recipe: {batch_size: 0, epochs: 1"), "recipe.batch_size", "greater than"),
    (GOOD + "scoring: {examples: -3}\n", "scoring.examples", "greater than"),
    (GOOD.replace("seeds: [0, 1]", "seeds: 3"), "grid.seeds", "{range: 3}"),
    (GOOD.replace("seeds: [0, 1]", "seeds: {range: zero}"), "grid.seeds.range", "N >= 1"),
    (GOOD.replace("{scope: layerwise}", "{rounds: 2.5}"), "grid.pruners[magnitude].params", "valid integer"),
    (GOOD.replace("[0.5, 0.9]", "[0.5, 90]"), "grid.sparsities[1]", "fraction of weights REMOVED"),
    (GOOD.replace("grid:", "gird:"), "gird", "Did you mean 'grid'"),
    (GOOD.replace("{scope: layerwise}", "{scop: layerwise}"), "grid.pruners[magnitude].params", "scope"),
    (GOOD.replace("{scope: layerwise}", "{scope: layer}"), "grid.pruners[magnitude].params",
     "use 'global' or 'layerwise'. Did you mean 'layerwise'"),
])
def test_errors_name_the_file_the_key_and_the_fix(tmp_path, text, key, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message and key in message and fragment in message, message


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(_write(tmp_path, "name: [unclosed"))


def test_shipped_suites_validate(shipped_suites_here):
    """Every suite in suites/ validates (the `file:` weights it names provided, as its comments ask)."""
    assert shipped_suites_here
    for path in shipped_suites_here:
        assert load_suite(path).runs


def test_seed_ranges(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: {range: 3}")))
    assert sorted({r.seed for r in suite.runs}) == [0, 1, 2]
    suite = load_suite(_write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: {range: [10, 12]}")))
    assert sorted({r.seed for r in suite.runs}) == [10, 11]


def test_the_json_schema_lists_sections_allowed_values_and_pruner_parameters():
    import json

    from bench_harness.config.schema import suite_json_schema

    schema = json.loads(json.dumps(suite_json_schema()))
    defs = schema["$defs"]
    assert defs["Recipe"]["properties"]["optimizer"]["enum"] == ["sgd", "adam", "adamw"]
    assert defs["Recipe"]["additionalProperties"] is False
    assert "magnitude" in json.dumps(defs["grid"]["properties"]["pruners"])
    imp = next(v for k, v in defs.items() if k == "pruner_imp")
    assert imp["properties"]["name"]["const"] == "imp"
    assert set(schema["required"]) == {"name", "grid"}
    assert {"time_min", "max_requeues", "python", "models", "pruners"} <= set(defs["slurm"]["properties"])
    assert defs["Resources"]["additionalProperties"] is False


@pytest.mark.parametrize("slurm, key, fragment", [
    ("{cpus: two}", "slurm.cpus", "valid integer"),
    ("{partiton: gpu}", "slurm.partiton", "Did you mean 'partition'"),
    ("{mem_gb: 0}", "slurm.mem_gb", "greater than 0"),
    ("{pruners: {random: {time_min: -3}}}", "slurm.pruners.random.time_min", "greater than or equal to 0"),
    ("{python: '  '}", "slurm.python", "Python interpreter"),
])
@pytest.mark.integration
def test_validate_checks_the_slurm_section_with_the_same_schema(tmp_path, slurm, key, fragment):
    from tests.conftest import bench

    good = _write(tmp_path, GOOD + "slurm: {cpus: 2, setup: 'module load cuda', additional: {exclude: n1}}\n")
    assert bench("validate", good).returncode == 0
    bad = _write(tmp_path, GOOD + f"slurm: {slurm}\n")
    out = bench("validate", bad, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert key in out.stderr and fragment in out.stderr, out.stderr


def test_every_problem_of_the_file_is_reported_at_once(tmp_path, capsys):
    """Issue 29: a suite with two errors reported only the first."""
    from bench_harness import cli
    from bench_harness.errors import SuiteErrors

    text = (GOOD.replace("recipe: {epochs: 1", "recipe: {epoch: 1, optimizer: sgdd")  # two in one section
            .replace("pruners: [dense", "pruners: [dense, magnitud")                 # a name the registry lacks
            .replace("[0.5, 0.9]", "[0.5, 90]")                                       # a value out of range
            + "scoring: {examples: -3}\ntimeout_min: 0\n")
    path = _write(tmp_path, text)
    with pytest.raises(SuiteErrors) as info:
        load_suite(path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["grid.sparsities[1]", "recipe.optimizer", "recipe.epoch", "scoring.examples", "timeout_min",
                    "grid.pruners"], keys
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: 6 problems in {path}:\n")
    for fragment in ("recipe.epoch: unknown setting. Did you mean 'epochs'", "recipe.optimizer: 'sgdd' is not "
                     "allowed", "grid.pruners: unknown pruner 'magnitud'. Did you mean 'magnitude'",
                     "grid.sparsities[1]: 90.0 is outside", "scoring.examples", "timeout_min"):
        assert f"{path}: {fragment}" in err, err
    # names and parameters checked against the registry: every problem too
    text = GOOD.replace("models: [mlp]", "models: [mlpp]").replace("{scope: layerwise}", "{scope: layer, rounds: x}")
    with pytest.raises(SuiteErrors) as info:
        load_suite(_write(tmp_path, text))
    assert [p.key for p in info.value.problems] == ["grid.models", "grid.pruners[magnitude].params"]
    assert "rounds" in str(info.value) and "'layerwise'" in str(info.value)
