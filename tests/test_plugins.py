from importlib import metadata

import pytest

from bench_harness.contract.plugins import PluginWarning, Registry
from bench_harness.errors import PluginConflictError, UnknownNameError
from tests.conftest import bench


class FakeDist:
    def __init__(self, name, version="9.9"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEP:
    group = "bench_harness"

    def __init__(self, name, obj, dist):
        self.name, self._obj, self.dist, self.value = name, obj, FakeDist(dist), f"{name}:module"

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def _with_fake_entry_points(monkeypatch, fakes):
    real = metadata.entry_points

    def entry_points(group=None, **kw):
        return list(real(group=group)) + fakes

    monkeypatch.setattr(metadata, "entry_points", entry_points)



def _module_registering(pruner_name):
    import types

    from bench_harness import hookimpl
    from bench_harness.contract.score_pruner import ScorePruner

    cls = type("P", (ScorePruner,), {"name": pruner_name, "score": lambda self, m, c: {}})
    mod = types.ModuleType(f"mod_{pruner_name}")
    mod.bench_register_pruners = hookimpl(lambda: [cls])
    return mod


def test_builtins_are_discovered_through_entry_points():
    reg = Registry()
    assert {"dense", "random", "magnitude"} <= set(reg.names("pruner"))
    assert {"resnet20", "vgg16_bn", "conv4", "lenet5", "mlp", "torchvision", "timm"} <= set(reg.names("model"))
    assert {"cifar10", "cifar100", "mnist", "fashion_mnist", "tiny_imagenet", "imagenet", "imagefolder",
            "synthetic"} <= set(reg.names("dataset"))
    assert reg.entry("pruner", "magnitude").distribution == "bench-harness"


def test_a_plugin_that_fails_to_import_is_a_warning(monkeypatch):
    _with_fake_entry_points(monkeypatch, [FakeEP("broken", ImportError("no module named foo"), "broken-dist")])
    with pytest.warns(PluginWarning, match="broken-dist.*no module named foo"):
        reg = Registry()
    assert "magnitude" in reg.names("pruner")
    assert reg.plugins["broken"].error


def test_a_registration_hook_that_raises_is_a_warning(monkeypatch):
    import types

    from bench_harness import hookimpl

    mod = types.ModuleType("raising")

    def bench_register_pruners():
        raise RuntimeError("boom")

    mod.bench_register_pruners = hookimpl(bench_register_pruners)
    _with_fake_entry_points(monkeypatch, [FakeEP("raising", mod, "raising-dist")])
    with pytest.warns(PluginWarning, match="raising-dist.*boom"):
        reg = Registry()
    assert "dense" in reg.names("pruner")


def test_duplicate_names_name_both_distributions(monkeypatch):
    _with_fake_entry_points(monkeypatch, [FakeEP("one", _module_registering("twin"), "dist-one"),
                                          FakeEP("two", _module_registering("twin"), "dist-two")])
    with pytest.raises(PluginConflictError) as info:
        Registry()
    assert "dist-one" in str(info.value) and "dist-two" in str(info.value) and "'twin'" in str(info.value)


def test_autoload_switch_and_allow_list(monkeypatch):
    _with_fake_entry_points(monkeypatch, [FakeEP("one", _module_registering("p_one"), "dist-one"),
                                          FakeEP("two", _module_registering("p_two"), "dist-two")])
    monkeypatch.setenv("BENCH_HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = Registry().names("pruner")
    assert "p_one" not in names and "p_two" not in names and "magnitude" in names
    monkeypatch.delenv("BENCH_HARNESS_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("BENCH_HARNESS_PLUGINS", "dist-two")
    names = Registry().names("pruner")
    assert "p_two" in names and "p_one" not in names and "magnitude" in names
    monkeypatch.delenv("BENCH_HARNESS_PLUGINS")
    monkeypatch.setenv("BENCH_HARNESS_BLOCK_PLUGINS", "one")
    names = Registry().names("pruner")
    assert "p_two" in names and "p_one" not in names


def test_unknown_names_suggest():
    with pytest.raises(UnknownNameError, match="Did you mean 'magnitude'"):
        Registry().get("pruner", "magnitdue")


@pytest.mark.integration
def test_bench_plugins_lists_builtins():
    out = bench("plugins", "-v").stdout
    assert "builtin_pruners  (bench-harness" in out
    assert "pruners: dense, magnitude, random" in out
    assert "scope = 'global'" in out


@pytest.mark.integration
def test_third_party_plugin_installed_with_pip_runs_in_a_suite(example_plugin_installed, tmp_path):
    out = bench("plugins").stdout
    assert "example  (bench-plugin-example 0.3.0" in out and "inverse_magnitude" in out
    assert bench("check-plugin", "inverse_magnitude").returncode == 0
    suite = tmp_path / "third.yaml"
    suite.write_text(f"""
name: third
grid: {{models: [mlp], datasets: [synthetic], sparsities: [0.8], pruners: [inverse_magnitude, magnitude]}}
recipe: {{epochs: 1, batch_size: 64}}
results_root: {tmp_path / 'results'}
""")
    out = bench("run", suite, "--no-progress").stdout
    assert "inverse_magnitude" in out
    from bench_harness.results.store import load_results

    df = load_results(tmp_path / "results", ["third"])
    row = df[df.pruner == "inverse_magnitude"].iloc[0]
    assert row.status == "ok" and row.pruner_distribution == "bench-plugin-example 0.3.0"
    assert row.achieved_sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_plugin_importing_a_moved_inner_module_is_told_where_to_import_from():
    from bench_harness.contract.plugins import _moved_hint

    for old in ("bench_harness.running.datasets", "bench_harness_plugins.pruners_px"):
        try:
            __import__(old)
        except ImportError as exc:
            hint = _moved_hint(exc)
        assert f"{old} is one of the harness's inner modules" in hint and "from bench_harness import" in hint
    assert _moved_hint(ModuleNotFoundError("No module named 'scipy'", name="scipy")) == ""
    assert _moved_hint(ValueError("bench_harness.x")) == ""


def test_test_only_pruners_are_not_listed_unless_asked(monkeypatch, capsys):
    """Issue 29: the list of available pruners showed the test fixtures' pruners once they were installed."""
    import types

    from bench_harness import ScorePruner, cli, hookimpl

    class Broken(ScorePruner):
        name = "fixture_always_fails"
        test_only = True

    class Fine(ScorePruner):
        name = "fixture_fine"

    mixed, only_tests = types.ModuleType("mixed"), types.ModuleType("only_tests")
    mixed.bench_register_pruners = hookimpl(lambda: [Broken, Fine])
    only_tests.bench_register_pruners = hookimpl(lambda: [type("Crash", (Broken,), {"name": "fixture_crash"})])
    registry = Registry(extra_plugins=[("mixed", mixed), ("only_tests", only_tests)])
    monkeypatch.setattr(cli, "_light_registry", lambda args: registry)
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "pruners: fixture_fine\n" in out and "fixture_always_fails" not in out and "only_tests" not in out
    import re

    hidden = re.search(r"\((\d+) test-only entries not listed: bench plugins --all\)", out)
    assert hidden and int(hidden.group(1)) >= 2  # these two, and the example package's when a test installed it
    assert cli.main(["plugins", "--all"]) == 0
    out = capsys.readouterr().out
    assert "fixture_always_fails, fixture_fine" in out and "fixture_crash" in out
    with pytest.raises(UnknownNameError) as info:
        registry.get("pruner", "fixture_fin")
    assert "fixture_fine" in str(info.value) and "fixture_always_fails" not in str(info.value)
    assert registry.get("pruner", "fixture_always_fails") is Broken  # a suite can still name it
