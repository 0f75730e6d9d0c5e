import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The fast tier (`scripts/test.sh --fast`): every test except those marked `integration` — the files below, whose
# tests start `bench` processes, SLURM clusters, browsers or real-data training, and the single tests marked
# `@pytest.mark.integration` elsewhere (a second or more each on a quiet 2-core machine).
INTEGRATION_FILES = {"test_real_suite", "test_slurm", "test_slurm_cluster", "test_slurm_preemption",
                     "test_slurm_requeue",
                     "test_cli_integration", "test_hostile_plugins", "test_hostile_runs", "test_reliability",
                     "test_resume", "test_store_integrity", "test_packing"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in INTEGRATION_FILES:
            item.add_marker(pytest.mark.integration)


ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BENCH = str(Path(sys.executable).parent / "bench")

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# The plugin registry's cache (bench_harness/contract/registry.py) of the tests and of the `bench` processes they
# start: a temporary file of this session, never the user's cache.
# Made once, by the test session: a process the tests start inherits the variable (and makes no folder of its own,
# which a test that kills it would leave behind).
if "BENCH_HARNESS_REGISTRY_CACHE" not in os.environ:
    _REGISTRY_CACHE_DIR = tempfile.mkdtemp(prefix="bench-registry-cache-")
    os.environ["BENCH_HARNESS_REGISTRY_CACHE"] = os.path.join(_REGISTRY_CACHE_DIR, "registry.json")
    atexit.register(shutil.rmtree, _REGISTRY_CACHE_DIR, True)


def bench(*args, cwd=None, env=None, check=True, timeout=600):
    """Run the real `bench` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([BENCH, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def example_plugin_installed():
    """pip-installs the third-party example plugin into the test environment for the session."""
    src = FIXTURES / "bench_plugin_example"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
                           "--no-deps", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for d in src.glob("*.egg-info"):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(src / "build", ignore_errors=True)
    from bench_harness.contract.plugins import get_registry

    get_registry(refresh=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "bench-plugin-example"],
                   capture_output=True)
    get_registry(refresh=True)


def runs_of(text: str, results_root, name: str = "suite.yaml") -> list:
    """The validated runs of a suite given as YAML text, storing their results under ``results_root``."""
    import yaml

    from bench_harness.config.suite import parse_suite, validate_suite

    suite = validate_suite(parse_suite(yaml.safe_load(text), name))
    return list(suite.with_settings(results_root=str(results_root)).runs)


def suite_from_text(text: str, results_root, registry, source: str = "suite.yaml"):
    """A suite validated from YAML text (``source``: the file name its errors give) with its results under
    ``results_root``."""
    import yaml

    from bench_harness.config.suite import parse_suite, validate_suite

    return validate_suite(parse_suite(yaml.safe_load(text), source), registry).with_settings(
        results_root=str(results_root))


def write_suite(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def slurm_cluster():
    """The project's development SLURM cluster (scripts/dev_slurm.sh), started for the tests with a small
    MaxArraySize so that array splitting is exercised. Skipped where SLURM is not installed."""
    if not shutil.which("slurmctld") or not shutil.which("sbatch"):
        pytest.skip("SLURM is not installed (scripts/test.sh installs it as root: scripts/dev_slurm.sh install)")
    env = {**os.environ, "DEV_SLURM_DIR": "/tmp/bench-slurm-tests", "DEV_SLURM_PORT": "7917",
           "DEV_SLURM_MAX_ARRAY_SIZE": "5"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "dev_slurm.sh"), "start"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    conf = "/tmp/bench-slurm-tests/etc/slurm.conf"
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    # cancel, by job id, whatever the tests left on their own private cluster (never `scancel -u`)
    ids = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True,
                         env={**os.environ, "SLURM_CONF": conf}).stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, env={**os.environ, "SLURM_CONF": conf})
    # stop the cluster the tests started (its daemons, its munged): nothing keeps running after the tests
    subprocess.run(["bash", str(ROOT / "scripts" / "dev_slurm.sh"), "stop"], env=env, capture_output=True,
                   timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture
def shipped_suites_here(tmp_path, monkeypatch):
    """The suites in suites/, with the working directory a temporary folder holding the `file:` weights they
    name (relative paths are read from where bench runs; validation reads each file's format and SHA-256), as
    their comments tell a user to provide them. Returns the suite paths."""
    import yaml

    suites = sorted((Path(__file__).parent.parent / "suites").glob("*.yaml"))
    monkeypatch.chdir(tmp_path)
    for path in suites:
        for model in yaml.safe_load(path.read_text())["grid"]["models"]:
            weights = model.get("weights", "") if isinstance(model, dict) else ""
            if weights.startswith("file:"):
                (tmp_path / weights[5:]).parent.mkdir(parents=True, exist_ok=True)
                torch.save({}, tmp_path / weights[5:])
    return suites


@pytest.fixture(autouse=True)
def index_rows_settle_at_once(monkeypatch):
    """Tests write run files and read them within the same second: the shard index caches their rows at once
    (bench_harness.results.index_parts.SETTLE_S; its own test sets it back)."""
    from bench_harness.results import index_parts

    monkeypatch.setattr(index_parts, "SETTLE_S", 0.0)
