"""Every executor keeps the suite file next to its results (issue 29: SLURM-run suites were published with
description "—" and recipe {}), and a different suite file of the same name is kept, not clobbered."""
import pytest

from bench_harness.config.suite import load_suite
from bench_harness.errors import BenchError
from bench_harness.results.publish import suite_card

SUITE = """
name: kept
description: {description}
grid: {{models: [mlp], datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 64,
        test_size: 32}}}}], sparsities: [0.5], pruners: [magnitude]}}
recipe: {{epochs: {epochs}, batch_size: 32}}
results_root: {root}
slurm: {{cpus: 1, time_min: 5}}
"""


def _suite(tmp_path, description="two epochs", epochs=2, name="kept.yaml"):
    path = tmp_path / name
    path.write_text(SUITE.format(description=description, epochs=epochs, root=tmp_path / "results"))
    return load_suite(path)


def test_slurm_submission_keeps_the_suite_file_before_the_first_sbatch(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from bench_harness.slurm import executor
    from bench_harness.slurm.cluster import ClusterLimits

    suite = _suite(tmp_path)
    seen = []

    def refuse(submit, folder, origin):  # stands in for sbatch: what is on disk when the first job goes out
        seen.append(suite_card(tmp_path / "results", "kept"))
        raise BenchError("sbatch: stopped by the test")

    monkeypatch.setattr(executor, "_sbatch", refuse)
    with pytest.raises(BenchError, match="stopped by the test"):
        executor.submit_runs(suite, list(suite.runs), limits=ClusterLimits(100, 10000, ()), check=False,
                             report=False)
    assert seen and seen[0]["description"] == "two epochs" and seen[0]["recipe"] == {"epochs": 2, "batch_size": 32}


def test_local_runs_keep_the_suite_file_and_an_earlier_different_one_is_kept(tmp_path):
    from bench_harness.running.executor import run_local

    first = _suite(tmp_path)
    run_local(first, progress=False)
    folder = tmp_path / "results" / "kept"
    assert suite_card(tmp_path / "results", "kept")["description"] == "two epochs"
    # another suite file of the same name (an edited copy elsewhere): the latest is suite.yaml, the earlier kept
    (tmp_path / "other").mkdir()
    second = _suite(tmp_path / "other", description="three epochs", epochs=3).with_settings(
        results_root=str(tmp_path / "results"))
    run_local(second, progress=False)
    assert suite_card(tmp_path / "results", "kept")["description"] == "three epochs"
    earlier = sorted(folder.glob("suite-*.yaml"))
    assert len(earlier) == 1 and "two epochs" in earlier[0].read_text()
    run_local(second, progress=False, force=True)  # the same file again: nothing new
    assert len(list(folder.glob("suite-*.yaml"))) == 1


def test_counts_of_one_read_as_one_run(tmp_path, capsys):
    from bench_harness import cli

    _suite(tmp_path)
    assert cli.main(["validate", str(tmp_path / "kept.yaml")]) == 0
    assert "is valid: 1 run\n" in capsys.readouterr().out


def test_one_submitted_run_reads_as_one_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    from bench_harness import cli
    from bench_harness.slurm import executor

    suite = _suite(tmp_path)
    monkeypatch.setattr(executor, "submit_runs", lambda s, runs: executor.Submission(arrays=[("12", 1)], runs=1))
    cli._submit(suite, list(suite.runs), "nothing")
    assert "submitted 1 run of suite kept in 1 array(s): 12 (1 tasks)" in capsys.readouterr().err
