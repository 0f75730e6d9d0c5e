"""Input handling under faults, for real (issue 24): a pruner that changes directory, hostile YAML (alias bombs,
duplicate keys), timeouts that are not numbers of minutes, and runners that prepare the same data set at once."""
import gzip
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from bench_harness.config.suite import load_suite, parse_suite, validate_suite
from bench_harness.errors import SuiteError

ROOT = Path(__file__).resolve().parent.parent
DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}"
GOOD = f"""
name: ok
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5], pruners: [magnitude]}}
recipe: {{epochs: 1, batch_size: 32}}
"""

# -- 1. paths are resolved once --------------------------------------------------------------------------------
# A driver that runs the real CLI in its own process with a pruner that changes the working directory while it
# prunes (registered in-process, as tests/contract_plugins.py does for the contract tests).
DRIVER = textwrap.dedent("""
    import os, sys
    import torch
    from bench_harness import hookimpl, masking
    from bench_harness.contract import plugins
    from bench_harness.contract.pruner import Pruner, PruneResult
    from bench_harness.cli import main

    class Wanderer(Pruner):
        name = "wanderer"

        def prune(self, model, sparsity, ctx):
            os.chdir(os.environ["WANDER_TO"])  # a careless pruner: never changes back
            scores = {n: p.detach().abs() for n, p in ctx.prunable.items()}
            return PruneResult(masking.topk_masks(scores, 1.0 - sparsity))

    class Plugin:
        @hookimpl
        def bench_register_pruners(self):
            return [Wanderer]

    plugins._REGISTRY = plugins.Registry(extra_plugins=[("wander", Plugin())])
    sys.exit(main(sys.argv[1:]))
""")


def _bench_with_wanderer(tmp_path, *args):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "WANDER_TO": str(tmp_path / "elsewhere"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(driver), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


@pytest.mark.integration
def test_a_pruner_that_changes_directory_moves_no_results(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "wander.yaml").write_text(f"""
name: wander
grid: {{models: [mlp], datasets: [{DATA}], sparsities: [0.5, 0.8], pruners: [wanderer]}}
recipe: {{epochs: 1, batch_size: 32}}
results_root: results
data_root: data
""")
    run = _bench_with_wanderer(tmp_path, "run", "wander.yaml", "--no-progress")
    assert run.returncode == 0 and "2 ok" in run.stderr, run.stderr
    shards = sorted((tmp_path / "results" / "wander" / "runs").glob("*.parquet"))
    assert len(shards) == 2, run.stderr
    assert not list((tmp_path / "elsewhere").rglob("*.parquet"))
    shown = _bench_with_wanderer(tmp_path, "results", "wander.yaml")
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines() if " wanderer " in line]
    assert sorted((r[3], r[5]) for r in rows) == [("0.5000", "ok"), ("0.8000", "ok")], shown.stdout


def test_suite_paths_are_absolute_once_loaded_and_run_ids_do_not_depend_on_them(tmp_path):
    import yaml

    here = validate_suite(parse_suite(yaml.safe_load(GOOD + "results_root: out\ndata_root: ../d\n"), "s.yaml",
                                      base_dir=tmp_path))
    run = here.runs[0]
    assert run.results_root == str(tmp_path / "out") and run.data_root == str(tmp_path.parent / "d")
    assert run.base_dir == str(tmp_path) and run.settings is here.settings
    there = validate_suite(parse_suite(yaml.safe_load(GOOD + "results_root: /x/y\n"), "s.yaml",
                                       base_dir=tmp_path / "sub"))
    assert there.runs[0].results_root == there.results_root == "/x/y"
    assert there.runs[0].run_id == run.run_id  # where results go is not part of a run's identity


def test_relative_weights_are_read_from_where_the_suite_was_loaded(tmp_path, monkeypatch):
    """A ``weights: file:`` path is read from the directory bench runs in (its documented meaning), also after a
    run has changed directory; the run id keeps the path as written."""
    import torch
    import yaml

    from bench_harness.contract.artifacts import file_sha256
    from bench_harness.contract.plugins import Registry
    from bench_harness.running.runner import execute_run
    from bench_harness_plugins.providers.archs.small import MLP
    from tests import contract_plugins

    weights = tmp_path / "w" / "mlp.pt"
    weights.parent.mkdir()
    torch.save(MLP(4, 3, 8, (300, 100)).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    suite = parse_suite(yaml.safe_load(f"""
name: relw
grid: {{models: [{{name: mlp, weights: "file:w/mlp.pt"}}], datasets: [{DATA}], sparsities: [0.5],
        pruners: [pt_magnitude]}}
recipe: {{epochs: 1, batch_size: 32}}
"""), "relw.yaml")
    registry = Registry(extra_plugins=[("contract", contract_plugins)])
    suite = validate_suite(suite, registry)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # what an earlier run's pruner may have done
    row = execute_run(suite.runs[0], registry)
    assert row["status"] == "ok", row.get("error")
    assert row["pretrained_source"] == "file:w/mlp.pt" and row["pretrained_sha256"] == file_sha256(weights)
    assert (tmp_path / "results" / "relw" / "runs" / f"{suite.runs[0].run_id}.parquet").exists()


# -- 2, 3. hostile YAML ------------------------------------------------------------------------------------------
# The classic "billion laughs", where the harness reads it: 9^9 strings once `description` is turned into text.
BILLION_LAUGHS = """\
name: bomb
description:
  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  - &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  - &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  - &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  - &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  - &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  - &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  - &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  - &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
grid: {models: [mlp], datasets: [synthetic], sparsities: [0.5], pruners: [magnitude]}
"""


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    tracemalloc.start()
    try:
        with pytest.raises(SuiteError, match=r"bomb\.yaml: line \d+: the document expands to more than 100,000 "
                                             r"values once its aliases"):
            load_suite(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # expanding it takes gigabytes


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", r"line 1: an alias refers to a collection that contains it"),
    ("[" * 200 + "]" * 200 + "\n", r"line 1: nested more than 64 levels deep"),
])
def test_recursive_and_deep_documents_are_refused(tmp_path, text, message):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError, match=r"odd\.yaml: " + message):
        load_suite(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD + "#" * (2 << 20) + "\n")
    with pytest.raises(SuiteError, match=r"huge\.yaml: \(file\): larger than 1,048,576 bytes"):
        load_suite(path)


@pytest.mark.integration
def test_bench_validate_reports_an_alias_bomb(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    out = subprocess.run([str(Path(sys.executable).parent / "bench"), "validate", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "alias bomb" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("text, key, line, first", [
    (GOOD + "recipe: {epochs: 3}\n", "recipe", 5, 4),
    (GOOD.replace("pruners: [magnitude]}", "pruners: [magnitude], models: [mlp]}"), "models", 3, 3),
    (GOOD + "scoring:\n  batch_size: 8\n  examples: 16\n  batch_size: 4\n", "batch_size", 8, 6),
])
def test_duplicate_keys_are_refused_with_the_key_and_lines(tmp_path, text, key, line, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError, match=rf"dup\.yaml: line {line}: duplicate key '{key}' \(first at line {first}\)"
                                         r": YAML would silently keep only the last one"):
        load_suite(path)


def test_merge_keys_may_still_be_overridden(tmp_path):
    from bench_harness.safe_yaml import load_yaml_file

    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {epochs: 1, batch_size: 32}\nrecipe: {<<: *base, epochs: 2}\n")
    assert load_yaml_file(path)["recipe"] == {"epochs": 2, "batch_size": 32}


# -- 4. timeout_min ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.0e-9", "0", "-5", "true", "'10'", "1.0e9"])
def test_timeout_must_be_a_finite_sensible_number_of_minutes(tmp_path, value):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD + f"timeout_min: {value}\n")
    with pytest.raises(SuiteError, match=r"t\.yaml: timeout_min: .*write a run's wall-time limit in minutes, a "
                                         r"finite number from 0.01 to 100000"):
        load_suite(path)


@pytest.mark.parametrize("value, minutes", [("120", 120.0), ("0.5", 0.5), ("0.01", 0.01)])
def test_sensible_timeouts_are_kept(tmp_path, value, minutes):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD + f"timeout_min: {value}\n")
    assert load_suite(path).runs[0].timeout_min == minutes


# -- 5. data sets prepared once, atomically, by concurrent runners --------------------------------------------------
def _write_gz_idx(folder: Path, prefix: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = struct.pack(">IIII", 2051, n, 28, 28) + bytes((i * 7) % 256 for i in range(n * 784))
    labels = struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))
    for name, data in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        with gzip.open(folder / f"{name}.gz", "wb") as fh:
            fh.write(data)


# Each process waits for the go file, then loads Fashion-MNIST from a fresh data root, where it is unpacked from
# the Debian package's layout (a folder of .gz IDX files). The unpacking reads slowly (a slow disk: 0.5 s before
# each file is copied), so both processes are unpacking at the same time.
PREPARE = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    copy = shutil.copyfileobj

    def slow_copy(*args, **kwargs):
        time.sleep(0.5)
        return copy(*args, **kwargs)

    shutil.copyfileobj = slow_copy
    from bench_harness.contract.plugins import get_registry
    spec = get_registry().get("dataset", "fashion_mnist")
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    train = spec.load(root=sys.argv[1], split="train", augment=False)
    test = spec.load(root=sys.argv[1], split="test", augment=False)
    x, y = train[13]
    print(len(train), len(test), int(y), tuple(x.shape))
""")


@pytest.mark.integration
def test_two_runners_prepare_a_fresh_data_root_at_once(tmp_path):
    debian = tmp_path / "debian"
    _write_gz_idx(debian, "train", 2000)
    _write_gz_idx(debian, "t10k", 500)
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    root, go = tmp_path / "data", tmp_path / "go"
    env = {**os.environ, "BENCH_HARNESS_FASHION_MNIST_DIR": str(debian),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    outs = [p.communicate() for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split() == ["2000", "500", "3", "(1,", "28,", "28)"], out
    raw = root / "FashionMNIST" / "raw"
    assert sorted(f.name for f in raw.iterdir()) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                                     "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 2000 * 784
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]  # no scratch left behind


def test_ready_data_is_read_without_writing(tmp_path, monkeypatch):
    """A data folder that is complete (a read-only shared one, say) gets no lock file and no scratch folder."""
    from bench_harness.contract.datasets import prepare_once

    (tmp_path / "set").mkdir()
    before = sorted(os.listdir(tmp_path))
    prepare_once(tmp_path, "set", lambda: True, lambda scratch: pytest.fail("built although ready"))
    assert sorted(os.listdir(tmp_path)) == before


def test_a_failed_preparation_leaves_nothing_half_done(tmp_path):
    from bench_harness.contract.datasets import prepare_once

    def broken(scratch: Path) -> None:
        (scratch / "set").mkdir()
        (scratch / "set" / "part").write_text("half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        prepare_once(tmp_path, "set", lambda: (tmp_path / "set").is_dir(), broken)
    assert [p.name for p in tmp_path.iterdir()] == [".set.lock"]
