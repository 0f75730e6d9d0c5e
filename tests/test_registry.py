"""The plugin registry read from its cache (bench_harness/contract/registry.py): rebuilt when the installed plugins
change, never used when stale or damaged, the same run ids as importing, and commands that do not import torch."""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_harness.config.suite import load_suite, parse_suite, validate_suite
from bench_harness.contract import registry as lazy
from bench_harness.contract.params import describe_params
from bench_harness.contract.plugins import Registry
from bench_harness.errors import BenchError, SuiteError
from tests.conftest import ROOT

PLUGIN = '''
from bench_harness import hookimpl, ScorePruner, param
from dataclasses import dataclass


@dataclass
class Params:
    scope: str = param("global", "where")
    rounds: int = param(1, "how often")
    tie_rule: str = param("reference", "ties")
    check_numerics: bool = param(False, "check")
    depth: int = param(3, "a parameter of this plugin")


class {cls}(ScorePruner):
    name = "{name}"
    version = "{version}"
    Params = Params

    def score(self, model, ctx):
        return {{}}


@hookimpl
def bench_register_pruners():
    return [{cls}]
'''


def _install(site: Path, dist: str, version: str, module: str, pruner: str) -> None:
    """A distribution with one plugin module, visible to importlib.metadata through ``site`` on sys.path."""
    folder = dist.replace("-", "_")  # as wheels name it: the name is what precedes the first '-'
    info = site / f"{folder}-{version}.dist-info"
    for old in site.glob(f"{folder}-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[bench_harness]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(PLUGIN.format(cls=pruner.capitalize(), name=pruner, version=version))
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _uninstall(site: Path, dist: str, module: str) -> None:
    for old in site.glob(f"{dist.replace('-', '_')}-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    (site / f"{module}.py").unlink()
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "registry.json"
    monkeypatch.setenv(lazy.CACHE_ENV, str(path))
    return path


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in ("regtest_one", "regtest_two", "regstatic_plugin", "regstatic_meta"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _notes():
    notes: list[str] = []
    return notes, notes.append


def test_the_cache_is_built_once_then_read_without_importing(cache):
    notes, note = _notes()
    first = lazy.light_registry(note)
    assert isinstance(first, Registry) and cache.is_file() and "no cache" in notes[0]
    second = lazy.light_registry(note)
    assert isinstance(second, lazy.LightRegistry) and len(notes) == 1
    for kind in lazy.KINDS:
        assert second.names(kind) == first.names(kind)
    assert {n: (p.distribution, p.version, p.module, p.registers) for n, p in second.plugins.items()} == \
        {n: (p.distribution, p.version, p.module, p.registers) for n, p in first.plugins.items()}
    meta, cls = second.get("pruner", "synflow"), first.get("pruner", "synflow")
    assert (meta.version, meta.regime.value, meta.requires.data, meta.ignores_sparsity) == \
        (cls.version, cls.regime.value, cls.requires.data, cls.ignores_sparsity)
    assert {k: repr(v[0]) for k, v in meta.param_help().items()} == \
        {k: repr(v[0]) for k, v in cls.param_help().items()}
    assert second.entry("model", "torchvision:resnet18").name == "torchvision"
    with pytest.raises(KeyError, match="Did you mean 'magnitude'"):
        second.get("pruner", "magnitud")


def test_every_builtin_pruner_is_validated_from_the_cache():
    reg = Registry()
    assert [n for n in reg.names("pruner") if describe_params(reg.get("pruner", n).Params) is None] == []


@pytest.mark.parametrize("change", ["version bump", "file edit", "new distribution", "removed distribution"])
def test_the_cache_is_rebuilt_when_the_installed_plugins_change(cache, site, change):
    _install(site, "regtest-one", "1.0", "regtest_one", "regtest")
    if change == "removed distribution":
        _install(site, "regtest-two", "1.0", "regtest_two", "regtest_extra")
    lazy.light_registry()
    before = lazy.light_registry()
    assert isinstance(before, lazy.LightRegistry) and "regtest" in before.names("pruner")
    if change == "version bump":
        _install(site, "regtest-one", "1.1", "regtest_one", "regtest")
    elif change == "file edit":
        (site / "regtest_one.py").write_text((site / "regtest_one.py").read_text().replace(
            'name = "regtest"', 'name = "regtest_renamed"'))
        sys.modules.pop("regtest_one", None)
    elif change == "new distribution":
        _install(site, "regtest-two", "1.0", "regtest_two", "regtest_extra")
    else:
        _uninstall(site, "regtest-two", "regtest_two")
    notes, note = _notes()
    rebuilt = lazy.light_registry(note)
    assert isinstance(rebuilt, Registry), "a stale cache was used"
    assert "another set of installed plugins" in notes[0]
    after = lazy.light_registry()
    assert isinstance(after, lazy.LightRegistry)
    expected = {"version bump": ("regtest", "1.1"), "file edit": ("regtest_renamed", "1.0"),
                "new distribution": ("regtest_extra", "1.0"), "removed distribution": ("regtest", "1.0")}[change]
    assert after.get("pruner", expected[0]).version == expected[1]
    if change == "removed distribution":
        assert "regtest_extra" not in after.names("pruner")
    if change == "file edit":
        assert "regtest" not in after.names("pruner")


STATIC_META = '''
from dataclasses import dataclass
from bench_harness import param


@dataclass
class Params:
    depth: int = param(3, "how deep")
    mode: str = param("a", "which way")


METADATA = {"pruners": [{"name": "regstatic", "version": "2", "regime": "{regime}", "requires": {{"data": True}},
                         "params": Params}]}
'''

STATIC_PLUGIN = '''
from bench_harness import Pruner, Requirements, hookimpl
from regstatic_meta import Params


class Regstatic(Pruner):
    name = "regstatic"
    version = "2"
    requires = Requirements(data=True)
    Params = Params


@hookimpl
def bench_register_pruners():
    return [Regstatic]
'''


def _install_static(site: Path, regime: str = "at_init") -> None:
    info = site / "regstatic-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: regstatic\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bench_harness]\nregstatic = regstatic_plugin\n\n"
                                           "[bench_harness.metadata]\nregstatic = regstatic_meta:METADATA\n")
    (site / "regstatic_meta.py").write_text(STATIC_META.replace("{regime}", regime).replace("{{", "{").replace(
        "}}", "}"))
    (site / "regstatic_plugin.py").write_text(STATIC_PLUGIN)
    importlib.invalidate_caches()


def test_a_plugin_declaring_its_metadata_statically_is_not_imported_to_build_the_cache(cache, site):
    _install_static(site)
    reg = lazy.light_registry()
    assert "regstatic_plugin" not in sys.modules, "building the cache imported a plugin with a static declaration"
    assert isinstance(reg, lazy.LightRegistry) and isinstance(lazy.light_registry(), lazy.LightRegistry)
    meta = reg.get("pruner", "regstatic")
    assert (meta.version, meta.requires.data, meta.lazy_params) == ("2", True, True)
    assert reg.entry("pruner", "regstatic").distribution == "regstatic"
    full = Registry()  # imports it: what a run sees
    assert "regstatic_plugin" in sys.modules

    def outcome(registry, params):
        data = {"name": "p", "grid": {"models": ["lenet5"], "datasets": ["fashion_mnist"], "sparsities": [0.5],
                                      "pruners": [{"name": "regstatic", "params": params}]}}
        try:
            return [r.run_id for r in validate_suite(parse_suite(data, "p.yaml"), registry).runs]
        except SuiteError as exc:
            return str(exc)

    for params in ({"depth": 5}, {}, {"depth": "x"}, {"dept": 1}):
        assert outcome(reg, params) == outcome(full, params)


def test_a_broken_static_declaration_is_a_warning_and_the_plugin_is_imported(cache, site):
    _install_static(site, regime="sometimes")
    with pytest.warns(UserWarning, match="static metadata .* cannot be used .*regime 'sometimes'"):
        reg = lazy.light_registry()
    assert isinstance(reg, Registry) and "regstatic" in reg.names("pruner")


def test_the_declared_vocabulary_is_the_pruner_contract():
    from bench_harness.contract.pruner import Granularity, Regime, SparsityKind

    assert lazy.REGIMES == tuple(r.value for r in Regime)
    assert lazy.SPARSITY_KINDS == tuple(k.value for k in SparsityKind)
    assert lazy.GRANULARITIES == tuple(g.value for g in Granularity)
    decl = lazy.declared({"models": ["a", {"name": "hub", "prefix": True}],
                          "pruners": [{"name": "p", "regime": "post_training"}]})
    assert decl["model"] == {"a": {"prefix": False}, "hub": {"prefix": True}}
    assert decl["pruner"]["p"]["meta"]["requires"]["pretrained"] is True  # derived from the regime, as Pruner does
    with pytest.raises(ValueError, match="unknown keys"):
        lazy.declared({"pruners": [{"name": "p", "regmie": "none"}]})


def _good(cache: Path) -> dict:
    lazy.light_registry()
    return json.loads(cache.read_text())


@pytest.mark.parametrize("damage", ["truncated", "not an object", "wrong format", "a type of value", "planted type",
                                    "planted constraint", "extra key", "symlink", "writable by others", "directory"])
def test_a_damaged_or_planted_cache_is_never_used(cache, damage):
    data = _good(cache)
    text = cache.read_text()
    if damage == "truncated":
        cache.write_text(text[: len(text) // 2])
    elif damage == "not an object":
        cache.write_text("[1, 2]")
    elif damage == "wrong format":
        cache.write_text(json.dumps({**data, "format": 99}))
    elif damage == "a type of value":
        data["entries"]["pruner"]["snip"]["meta"]["version"] = 2
        cache.write_text(json.dumps(data))
    elif damage == "planted type":  # the key is right: what a hand-edited file would be
        data["entries"]["pruner"]["snip"]["meta"]["params"]["fields"][0]["type"] = {"t": "os.system"}
        cache.write_text(json.dumps(data))
    elif damage == "planted constraint":
        data["entries"]["pruner"]["snip"]["meta"]["params"]["fields"][0]["type"] = {
            "t": "annotated", "of": {"t": "str"}, "meta": [{"c": "__class__", "v": 1}]}
        cache.write_text(json.dumps(data))
    elif damage == "extra key":
        cache.write_text(json.dumps({**data, "code": "import os"}))
    elif damage == "symlink":
        real = cache.with_name("real.json")
        cache.rename(real)
        cache.symlink_to(real)
    elif damage == "writable by others":
        cache.chmod(0o666)
    else:
        cache.unlink()
        cache.mkdir()
    notes, note = _notes()
    if damage == "directory":
        with pytest.warns(UserWarning, match="could not be written"):
            reg = lazy.light_registry(note)
    else:
        reg = lazy.light_registry(note)
    assert isinstance(reg, Registry), f"the {damage} cache was used"
    assert "not used" in notes[0]
    if damage != "directory":  # rebuilt and usable again
        assert isinstance(lazy.light_registry(), lazy.LightRegistry)


def test_a_cache_written_under_a_group_writable_umask_is_used(cache):
    old = os.umask(0o002)
    try:
        lazy.light_registry()
    finally:
        os.umask(old)
    assert isinstance(lazy.light_registry(), lazy.LightRegistry)


def test_an_unwritable_cache_falls_back_to_importing(tmp_path, monkeypatch):
    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "file" / "registry.json"))
    (tmp_path / "file").write_text("a file where the folder would be")
    with pytest.warns(UserWarning, match="could not be written"):
        assert isinstance(lazy.light_registry(), Registry)
    monkeypatch.setenv(lazy.CACHE_ENV, "off")
    notes, note = _notes()
    assert isinstance(lazy.light_registry(note), Registry) and "disabled" in notes[0]


def _write_many(path: str, data: dict, n: int) -> None:
    for _ in range(n):
        lazy.write_cache(Path(path), data)


def test_processes_writing_the_cache_at_once_leave_a_complete_file(cache):
    data = _good(cache)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(cache), data, 40)) for _ in range(3)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads < 20:
        assert lazy.read_cache(cache, data["key"])["key"] == data["key"]
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert [p for p in cache.parent.iterdir() if p.name != cache.name] == []  # no temporary files left


def _suites():
    return sorted((ROOT / "suites").glob("*.yaml"))


def test_run_ids_from_the_cache_equal_those_from_importing(cache, shipped_suites_here):
    full = Registry()
    light = lazy.LightRegistry(lazy.registry_data(full, lazy.installed_set()), lambda: full)
    assert all(light.get("pruner", n).lazy_params for n in light.names("pruner"))
    compared = 0
    for path in _suites():
        runs = load_suite(path, full).runs
        lazy_runs = load_suite(path, light).runs
        assert [r.run_id for r in lazy_runs] == [r.run_id for r in runs], path.name
        assert [r.identity() for r in lazy_runs] == [r.identity() for r in runs], path.name
        assert [(r.pruner_version, r.needs_pretrained) for r in lazy_runs] == \
            [(r.pruner_version, r.needs_pretrained) for r in runs]
        compared += len(runs)
    assert compared > 100


@pytest.mark.parametrize("params", [{"rounds": "ten"}, {"scope": "everywhere"}, {"rounds": 2.5}, {"round": 3},
                                    {"rounds": True}, {"check_numerics": "maybe"}, {"rounds": 10, "scope": "layerwise"},
                                    {"rounds": 10.0}])
def test_parameters_are_judged_alike_from_the_cache_and_from_importing(params):
    full = Registry()
    light = lazy.LightRegistry(lazy.registry_data(full, lazy.installed_set()), lambda: full)
    data = {"name": "p", "grid": {"models": ["lenet5"], "datasets": ["fashion_mnist"], "sparsities": [0.5],
                                  "pruners": [{"name": "synflow", "params": params}]}}

    def outcome(reg):
        try:
            return [r.run_id for r in validate_suite(parse_suite(data, "p.yaml"), reg).runs]
        except SuiteError as exc:
            return str(exc)

    assert outcome(light) == outcome(full)


def test_a_params_class_the_cache_cannot_hold_is_validated_by_importing():
    from dataclasses import dataclass

    @dataclass
    class Checked:
        n: int = 1

        def __post_init__(self):
            if self.n > 5:
                raise ValueError("n at most 5")

    assert describe_params(Checked) is None
    imported = []

    class Fake:
        def get(self, kind, name):
            imported.append(name)
            return type("P", (), {"make_params": staticmethod(lambda values: Checked(**values))})

    meta = lazy.PrunerMeta("checked", {"version": "1", "description": "", "regime": "at_init",
                                       "sparsity_kind": "exact", "granularity": "unstructured",
                                       "requires": {"data": False, "labels": False, "pretrained": False},
                                       "ignores_sparsity": False, "has_scores": False, "test_only": False,
                                       "params": None, "param_help": {}, "has_stages": False}, Fake)
    assert meta.make_params({"n": 2}) == Checked(2) and imported == ["checked"]


# -- the commands, in fresh processes ------------------------------------------------------------------------------
NO_TORCH = """
import sys
from bench_harness.cli import main
code = main(sys.argv[1:])
print("SCIPY.STATS" if "scipy.stats" in sys.modules else "NO-SCIPY.STATS")
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
sys.exit(code)
"""


def _cli(args, cwd, env):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_the_light_commands_do_not_import_torch(tmp_path):
    from bench_harness.results.store import write_shard

    suite = tmp_path / "small.yaml"
    suite.write_text(f"name: small\ngrid:\n  models: [lenet5]\n  datasets: [fashion_mnist]\n  sparsities: [0.5]\n"
                     f"  pruners: [random, magnitude, {{name: synflow, params: {{rounds: 3}}}}]\n"
                     f"results_root: {tmp_path / 'results'}\nslurm:\n  time_min: 10\n")
    env = {**os.environ, lazy.CACHE_ENV: str(tmp_path / "cache.json"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    first = _cli(["-v", "validate", suite], tmp_path, env)  # builds the cache (imports the plugins)
    assert first.returncode == 0 and "TORCH" in first.stdout.split() and "rebuilding" in first.stderr, first.stderr
    runs = load_suite(suite).runs
    for i, run in enumerate(runs):
        write_shard({"run_id": run.run_id, "suite": "small", "pruner": run.pruner.name, "model": "lenet5",
                     "dataset": "fashion_mnist", "seed": 0, "target_sparsity": 0.5, "status": "ok",
                     "top1": 0.5 + i / 10, "pruner_params": "{}", "model_params": "{}", "achieved_sparsity": 0.5},
                    tmp_path / "results", "small")
    for args in (["validate", suite], ["plugins", "-v"], ["results", suite], ["verify", suite],
                 ["run", suite, "--dry-run"], ["leaderboard", suite], ["leaderboard", "small", "--results-root",
                                                                       tmp_path / "results"]):
        proc = _cli(args, tmp_path, env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.split()[-1] == "NO-TORCH", f"bench {' '.join(map(str, args))} imported torch"
        if args[0] == "results":  # half a second of imports for a table: the t distribution comes from scipy.special
            assert proc.stdout.split()[-2] == "NO-SCIPY.STATS", "bench results imported scipy.stats"
    assert "3 runs: 3 finished, 0 to run" in _cli(["run", suite, "--dry-run"], tmp_path, env).stdout


# -- runs validated from the cache travel to SLURM jobs as values (a submission imports no plugin) ----------------
def test_runs_validated_from_the_cache_pickle_as_values_the_job_validates_again(cache, shipped_suites_here):
    import pickle

    from bench_harness.config.suite import RebuiltParams
    from bench_harness.contract.params import is_rebuilt
    from bench_harness.running.plan import validated_params

    full = Registry()
    light = lazy.LightRegistry(lazy.registry_data(full, lazy.installed_set()), lambda: full)
    compared = 0
    for path in _suites():
        runs = load_suite(path, full).runs
        lazy_runs = load_suite(path, light).runs
        assert all(is_rebuilt(r.pruner_params) for r in lazy_runs)
        travelled = pickle.loads(pickle.dumps(lazy_runs))  # a job: the values travel, validated when a run starts
        for got, want in zip(travelled, runs):
            assert isinstance(got.pruner_params, RebuiltParams)
            assert got.run_id == want.run_id and got.identity() == want.identity()
            params = validated_params(got)  # with the plugins
            assert type(params) is type(want.pruner_params) and params == want.pruner_params
            got.__dict__.pop("_run_id", None)  # the id computed again from the job's parameters: the same
            assert got.run_id == want.run_id
        assert pickle.loads(pickle.dumps(runs))[0].pruner_params == runs[0].pruner_params  # own Params: as before
        compared += len(runs)
    assert compared > 100
    # the job's plugin reads the values otherwise than the submitting machine's cache did: a clear error
    odd = RebuiltParams("synflow", {"rounds": 3}, {"rounds": 4})
    with pytest.raises(BenchError, match="install the same version of its plugin"):
        odd.validate("1")


def test_stages_are_planned_from_the_cache_and_the_pruner_imported_only_when_it_declares_some(cache):
    from bench_harness.config.suite import load_suite as load
    from bench_harness.running.plan import artifact_plan

    full = Registry()
    imported: list[str] = []

    def importer():
        imported.append("all")
        return full

    light = lazy.LightRegistry(lazy.registry_data(full, lazy.installed_set()), importer)
    declares = {n for n in full.names("pruner") if lazy.declares_stages(full.get("pruner", n))}
    assert "autosparse" in declares and not {"random", "magnitude", "snip", "synflow"} & declares
    assert all(light.get("pruner", n).has_stages == (n in declares) for n in full.names("pruner"))
    suite = cache.parent.parent / "stages.yaml"
    suite.write_text("name: stages\ngrid:\n  models: [mlp]\n  datasets: [synthetic]\n  sparsities: [0.5]\n"
                     "  pruners: [random, magnitude, synflow, autosparse]\n")
    runs = {r.pruner.name: r for r in load(suite, light).runs}
    assert [a.label for name in ("random", "magnitude", "synflow") for a in artifact_plan(runs[name], light)] == []
    assert imported == []
    real = {r.pruner.name: r for r in load(suite, full).runs}
    assert [a.label for a in artifact_plan(runs["autosparse"], light)] == \
        [a.label for a in artifact_plan(real["autosparse"], full)] != []
    assert imported  # autosparse declares stages: asked with its own Params


def test_a_static_declaration_says_whether_the_pruner_has_stages():
    name, meta = lazy._declared_pruner({"name": "declared_one"})
    assert meta["has_stages"] is True  # not said: the pruner is imported to plan them
    assert lazy._declared_pruner({"name": "two", "stages": False})[1]["has_stages"] is False
    with pytest.raises(ValueError, match="stages is true or false"):
        lazy._declared_pruner({"name": "three", "stages": "no"})
