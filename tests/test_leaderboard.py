"""Statistics, leaderboards, the incremental shard index, merging and exports, on hand-made run rows."""
import datetime as dt
import hashlib
import math

import pandas as pd
import pytest

from bench_harness.errors import BenchError
from bench_harness.results.aggregate import aggregate, merge_results
from bench_harness.results.leaderboard import build_leaderboard, display_table, prepare_runs, to_latex, to_markdown
from bench_harness.results.shard_index import update_index
from bench_harness.results.stats import mean_std_ci, paired_difference, t975
from bench_harness.results.store import read_shard, write_shard


def test_t_quantiles_and_intervals_by_hand():
    assert t975(1) == pytest.approx(12.706, abs=5e-4) and t975(2) == pytest.approx(4.303, abs=5e-4)
    assert abs(t975(1000) - 1.962) < 0.002 and math.isnan(t975(0))
    mean, std, ci, n = mean_std_ci([0.5, 0.7, 0.6])
    assert (mean, n) == (pytest.approx(0.6), 3)
    assert std == pytest.approx(0.1)
    assert ci == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_std_ci([0.4])[2])
    diff, dci, pairs, p = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.5, 1: 0.6, 3: 0.1})
    assert pairs == 2 and diff == pytest.approx(0.3)  # seeds 0 and 1: 0.4 and 0.2
    assert dci == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2), rel=1e-4)
    # paired t: t = 0.3 / (sqrt(0.02) / sqrt(2)) = 3.0 with 1 df -> p = 2 * (1/2 - atan(3)/pi)
    assert p == pytest.approx(2 * (0.5 - math.atan(3.0) / math.pi))
    from scipy.stats import ttest_rel

    assert p == pytest.approx(ttest_rel([0.9, 0.8], [0.5, 0.6]).pvalue)


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _row(pruner, sparsity, seed, top1, suite="s", params="{}", ablation=None, status="ok", when=0, **kw):
    key = f"{suite}-{pruner}-{params}-{ablation}-{sparsity}-{seed}"
    row = dict(run_id=hashlib.sha256(key.encode()).hexdigest()[:32], suite=suite, pruner=pruner,
               pruner_params=params, ablation=ablation, model="resnet20", model_params="{}", dataset="cifar10",
               seed=seed, target_sparsity=sparsity, status=status, top1=top1 if status == "ok" else None, top5=0.99,
               loss=1.0, achieved_sparsity=sparsity, achieved_sparsity_all=sparsity * 0.9, layer_collapse=False,
               params_total=1000, params_nonzero=round(1000 * (1 - sparsity)), params_prunable=900,
               flops_dense=1e6, flops_effective=1e6 * (1 - sparsity), prune_seconds=36.0, train_seconds=3564.0,
               pretrain_seconds=0.0, device="NVIDIA H100", finished_at=T0 + dt.timedelta(seconds=when))
    row.update(kw)
    return row


def _runs():
    rows = []
    for seed, (d, r, m, p) in enumerate([(0.92, 0.80, 0.85, 0.88), (0.93, 0.82, 0.86, 0.90), (0.91, 0.78, 0.84, 0.86)]):
        rows += [_row("dense", 0.0, seed, d), _row("random", 0.9, seed, r), _row("magnitude", 0.9, seed, m),
                 _row("px", 0.9, seed, p)]
    rows.append(_row("px", 0.9, 3, None, status="failed", error="boom"))
    rows.append(_row("snip", 0.9, 0, 0.5, layer_collapse=True, achieved_sparsity=0.95))
    return pd.DataFrame(rows)


def test_leaderboard_by_hand():
    board = build_leaderboard(_runs(), ["s"]).set_index("method")
    px = board.loc["px"]
    assert px.seeds == 3 and px.failed == 1
    assert px.top1_mean == pytest.approx(0.88) and px.top1_std == pytest.approx(0.02)
    assert px.top1_ci95 == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-4)
    # paired: px - random per seed = 0.08, 0.08, 0.08
    assert px.vs_random_diff == pytest.approx(0.08) and px.vs_random_pairs == 3
    assert px.vs_random_ci95 == pytest.approx(0.0, abs=1e-12)
    assert px.vs_magnitude_diff == pytest.approx(0.03)
    from scipy.stats import ttest_rel

    # px - magnitude per seed = 0.03, 0.04, 0.02: the paired t-test's p-value
    assert px.vs_magnitude_p == pytest.approx(ttest_rel([0.88, 0.90, 0.86], [0.85, 0.86, 0.84]).pvalue)
    assert px.vs_dense_diff == pytest.approx(-0.04) and px.vs_dense_pairs == 3
    assert board.loc["px", "rank"] == 1 and board.loc["magnitude", "rank"] == 2 and board.loc["random", "rank"] == 3
    assert board.loc["snip", "rank"] == 4
    assert board.loc["snip", "flag_layer_collapse"] and board.loc["snip", "flag_off_target"]
    assert board.loc["snip", "flag_few_seeds"] and not px.flag_few_seeds
    assert board.loc["dense", "rank"] == 1  # alone in its (sparsity 0) cell
    assert px.device_hours_mean == pytest.approx(1.0) and px.gpu_hours_mean == pytest.approx(1.0)
    assert px.model_bits_mean == pytest.approx(32 * 100 + 900)
    assert board.loc["dense", "model_bits_mean"] == pytest.approx(32 * 1000)
    assert math.isnan(board.loc["random", "vs_random_diff"])


def test_a_method_at_chance_is_flagged():
    rows = [_row("random", 0.98, seed, 0.1, num_classes=10) for seed in range(3)]
    rows += [_row("magnitude", 0.98, seed, 0.6, num_classes=10) for seed in range(3)]
    board = build_leaderboard(pd.DataFrame(rows), ["s"]).set_index("method")
    assert board.loc["random", "at_chance"] and not board.loc["magnitude", "at_chance"]
    assert "at chance" in display_table(board.reset_index()).set_index("method").loc["random", "flags"]


def test_methods_with_parameters_and_ablations_are_separate_rows():
    rows = [_row("magnitude", 0.9, 0, 0.8), _row("magnitude", 0.9, 0, 0.7, params='{"scope": "layerwise"}'),
            _row("magnitude", 0.9, 0, 0.6, ablation="shuffle")]
    board = build_leaderboard(pd.DataFrame(rows), ["s"])
    assert sorted(board.method) == ["magnitude", "magnitude(scope=layerwise)", "magnitude+shuffle"]
    shuffled = board.set_index("method").loc["magnitude+shuffle"]
    assert shuffled.vs_magnitude_diff == pytest.approx(-0.2)


def test_the_sparsity_bin_is_its_own_column_and_target_sparsity_stays_the_target():
    # a learned-sparsity method asked for 0.5 and reached 0.9: it is compared in the 0.9 bin, its target stays 0.5
    rows = [_row("magnitude", 0.9, seed, 0.8, sparsity_bin=0.9) for seed in range(3)]
    rows += [_row("learned", 0.5, seed, 0.85, sparsity_kind="learned", achieved_sparsity=0.9, sparsity_bin=0.9)
             for seed in range(3)]
    rows += [_row("random", 0.8, 0, 0.7)]  # a row of result schema 1: no sparsity_bin, its bin is its target
    df = pd.DataFrame(rows)
    df.loc[df.pruner == "random", "sparsity_bin"] = None
    runs = prepare_runs(df).set_index("pruner")
    assert set(runs.loc["learned", "target_sparsity"]) == {0.5} and set(runs.loc["learned", "sparsity_bin"]) == {0.9}
    assert runs.loc["random", "sparsity_bin"] == 0.8 and runs.loc["random", "target_sparsity"] == 0.8
    board = build_leaderboard(df, ["s"])
    assert "target_sparsity" not in board and "requested_sparsity" not in board
    assert (board.leaderboard_version == 4).all()
    learned = board.set_index("method").loc["learned"]
    assert learned.sparsity_bin == 0.9 and learned.density == pytest.approx(0.1)
    assert learned.vs_magnitude_pairs == 3 and learned.vs_magnitude_diff == pytest.approx(0.05)
    assert not learned.flag_off_target
    assert set(board.sparsity_bin) == {0.8, 0.9}


def test_exports():
    table = display_table(build_leaderboard(_runs(), ["s"]))
    md = to_markdown(table)
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines()]
    assert cells[0][:5] == ["model", "dataset", "sparsity", "method", "rank"]
    px = next(row for row in cells if len(row) > 3 and row[3] == "px")
    assert px[4:8] == ["1", "3", "88.00 ± 4.97", "+8.00 ± 0.00"]
    latex = to_latex(table)
    assert latex.startswith(r"\begin{tabular}") and r"$\pm$" in latex and r"top-1 (\%)" in latex


def _write(tmp_path, row):
    return write_shard(row, tmp_path, row["suite"])


def test_shard_index_is_incremental(tmp_path):
    for row in _runs().to_dict("records"):
        _write(tmp_path, row)
    table, stats = update_index(tmp_path, "s")
    assert stats == {"shards": 14, "read": 14, "dropped": 0, "compacted_rows": 0, "parts": 0} and table.num_rows == 14
    table, stats = update_index(tmp_path, "s")
    assert stats["read"] == 0 and table.num_rows == 14
    _write(tmp_path, _row("grasp", 0.9, 0, 0.7))
    table, stats = update_index(tmp_path, "s")
    assert stats["read"] == 1 and table.num_rows == 15
    path = _write(tmp_path, _row("grasp", 0.9, 0, 0.75, when=5))  # rewritten shard is read again
    table, stats = update_index(tmp_path, "s")
    assert stats["read"] == 1 and table.num_rows == 15
    assert 0.75 in table.column("top1").to_pylist()
    path.unlink()
    table, stats = update_index(tmp_path, "s")
    assert stats["dropped"] == 1 and table.num_rows == 14


def test_merge_keeps_one_row_per_run_newest_wins(tmp_path):
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "into"
    write_shard(_row("px", 0.9, 0, 0.80, when=0), a, "s")
    write_shard(_row("px", 0.9, 0, 0.85, when=10), b, "s")  # same run id, newer
    write_shard(_row("px", 0.9, 1, 0.70, when=0), b, "s")
    stats = merge_results([a, b], into)
    assert stats == {"copied": 2, "replaced": 1, "kept": 0, "refused": 0}
    rows = [read_shard(p) for p in sorted((into / "s" / "runs").glob("*.parquet"))]
    assert sorted(r["top1"] for r in rows) == [0.70, 0.85]
    assert merge_results([a], into) == {"copied": 0, "replaced": 0, "kept": 1, "refused": 0}


def test_leaderboard_files_are_read_by_pandas_polars_and_duckdb(tmp_path):
    for row in _runs().to_dict("records"):
        _write(tmp_path, row)
    aggregate(tmp_path, ["s"])
    path = tmp_path / "s" / "leaderboard.parquet"
    import duckdb
    import polars as pl

    assert len(pd.read_parquet(path)) == 5
    assert pl.read_parquet(path).height == 5
    assert duckdb.sql(f"select count(*) from read_parquet('{path}') where method = 'px'").fetchall()[0][0] == 1


def test_compaction_loses_and_duplicates_nothing(tmp_path):
    from bench_harness.results.compaction import compact
    from bench_harness.results.store import load_results, shard_status

    rows = _runs().to_dict("records")
    for row in rows:
        _write(tmp_path, row)
    before = load_results(tmp_path, ["s"]).sort_values("run_id").reset_index(drop=True)
    assert compact(tmp_path, "s")["compacted"] == 14
    files = sorted(p.name for p in (tmp_path / "s" / "runs").iterdir())
    assert len(files) == 1 and files[0].startswith("part-")  # the run files are folded into one part...
    after = load_results(tmp_path, ["s"]).sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after[before.columns])  # ...and every row is still there, once
    assert shard_status(tmp_path, "s", rows[0]["run_id"]) == "ok"
    assert shard_status(tmp_path, "s", rows[-2]["run_id"]) == "failed"
    # a run redone after compaction: its new row wins, still one row per run
    redone = dict(rows[0], top1=0.99, finished_at=rows[0]["finished_at"] + dt.timedelta(hours=1))
    _write(tmp_path, redone)
    df = load_results(tmp_path, ["s"])
    assert len(df) == 14 and df.set_index("run_id").loc[rows[0]["run_id"], "top1"] == 0.99
    compact(tmp_path, "s")
    df = load_results(tmp_path, ["s"])
    assert len(df) == 14 and df.set_index("run_id").loc[rows[0]["run_id"], "top1"] == 0.99
    # a rebuild keeps the compacted rows
    table, _ = update_index(tmp_path, "s", rebuild=True)
    assert table.num_rows == 14
    # merging a compacted results folder into another copies every row
    assert merge_results([tmp_path], tmp_path / "copy")["copied"] == 14


@pytest.mark.parametrize("compacted", [False, True])
def test_every_row_is_read_by_pandas_polars_and_duckdb_before_and_after_compaction(tmp_path, compacted):
    """The documented way to read results: the dataset folder runs/ (pandas) or its glob (polars, DuckDB) holds
    exactly one row per run, whether the run files are compacted or not, and no derived file is counted."""
    from bench_harness.results.compaction import compact

    rows = _runs().to_dict("records")
    for row in rows:
        _write(tmp_path, row)
    aggregate(tmp_path, ["s"])  # derived files (cache, leaderboard) exist beside the rows
    if compacted:
        compact(tmp_path, "s")
        redone = dict(rows[0], top1=0.99, finished_at=rows[0]["finished_at"] + dt.timedelta(hours=1))
        _write(tmp_path, redone)  # a compacted run redone...
        from bench_harness.results.compaction import maybe_compact

        assert maybe_compact(tmp_path, "s") is not None  # ...is folded at once (the end of bench run does this)
    runs = tmp_path / "s" / "runs"
    import duckdb
    import polars as pl

    df = pd.read_parquet(runs)
    assert len(df) == 14 and df["run_id"].is_unique
    assert pl.read_parquet(f"{runs}/*.parquet").filter(pl.col("status") == "ok").height == 13
    assert duckdb.sql(f"select count(*), count(distinct run_id) from read_parquet('{runs}/*.parquet', "
                      f"union_by_name=true) where run_id is not null").fetchall()[0] == (14, 14)
    if compacted:
        assert df.set_index("run_id").loc[rows[0]["run_id"], "top1"] == 0.99


def _configured(pruner, sparsity, seed, top1, suite, recipe, params="{}", **kw):
    """A run row as a run writes it: its config (the identity hashed into the run id) included."""
    import json

    config = {"model": "resnet20", "dataset": "cifar10", "pruner": pruner, "sparsity": sparsity, "seed": seed,
              "recipe": recipe, **({"pruner_params": json.loads(params)} if params != "{}" else {})}
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return _row(pruner, sparsity, seed, top1, suite=suite, params=params, config=json.dumps(config, sort_keys=True),
                run_id=run_id, num_classes=10, **kw)


def test_two_suites_with_different_recipes_are_two_rows_never_pooled():
    """Issue 29: publishing two suites pooled two LAMP runs of seed 0 (3 epochs on 4,000 examples, 4 epochs on
    20,000) into one cell "seeds 2 · 81.00 ± 67.34"."""
    short, long_ = {"epochs": 3, "train_subset": 4000}, {"epochs": 4, "train_subset": 20000}
    rows = [_configured("lamp", 0.9, 0, 0.60, "a", short), _configured("lamp", 0.9, 0, 0.90, "b", long_),
            _configured("lamp", 0.5, 0, 0.70, "a", short), _configured("lamp", 0.5, 0, 0.91, "b", long_),
            _configured("random", 0.9, 0, 0.50, "a", short), _configured("random", 0.9, 0, 0.55, "b", long_),
            _configured("dense", 0.0, 0, 0.95, "b", long_)]
    board = build_leaderboard(pd.DataFrame(rows), ["a", "b"])
    at = board[board.sparsity_bin == 0.9].set_index("method")
    assert set(at.index) == {"lamp [epochs=3, train_subset=4000]", "lamp [epochs=4, train_subset=20000]",
                             "random [epochs=3, train_subset=4000]", "random [epochs=4, train_subset=20000]"}
    a, b = at.loc["lamp [epochs=3, train_subset=4000]"], at.loc["lamp [epochs=4, train_subset=20000]"]
    assert (a.seeds, a.top1_mean, a.suites, b.seeds, b.top1_mean, b.suites) == (1, 0.6, "a", 1, 0.9, "b")
    assert b.setting == "epochs=4, train_subset=20000" and '"epochs": 4' in b.experiment
    # one label per experiment across sparsities: a plot's line is one experiment
    assert set(board[board.pruner == "lamp"].method) == {"lamp [epochs=3, train_subset=4000]",
                                                         "lamp [epochs=4, train_subset=20000]"}
    # each is paired with the control of its own setting, and only the suite with a dense run has vs_dense
    assert a.vs_random_diff == pytest.approx(0.10) and b.vs_random_diff == pytest.approx(0.35)
    assert (a.vs_dense_pairs, b.vs_dense_pairs) == (0, 1) and b.vs_dense_diff == pytest.approx(-0.05)
    shown = display_table(board)
    assert "lamp [epochs=4, train_subset=20000]" in set(shown.method)
    # the same experiment in two suites (other seeds) is one experiment: pooled
    rows.append(_configured("lamp", 0.9, 1, 0.92, "c", long_))
    pooled = build_leaderboard(pd.DataFrame(rows), ["a", "b", "c"]).set_index("method")
    both = pooled[pooled.sparsity_bin == 0.9].loc["lamp [epochs=4, train_subset=20000]"]
    assert both.seeds == 2 and both.suites == "b,c"


def test_any_field_of_the_identity_separates_experiments_and_a_default_is_named():
    """Scoring, pruner version, pretraining, weights, and fields the identity gains later: no change needed."""
    rows = [_configured("snip", 0.9, 0, 0.8, "a", {"epochs": 3}),
            _configured("snip", 0.9, 0, 0.7, "b", {"epochs": 3}),
            _configured("snip", 0.9, 0, 0.6, "c", {"epochs": 3})]
    import json

    for row, extra in zip(rows[1:], ({"scoring": {"examples": 1000}}, {"transfer_dataset": "cifar100"})):
        config = dict(json.loads(row["config"]), **extra)
        row.update(config=json.dumps(config), run_id=hashlib.sha256(json.dumps(config).encode()).hexdigest()[:16])
    board = build_leaderboard(pd.DataFrame(rows), ["a", "b", "c"])
    assert sorted(board.method) == ["snip [examples=1000, transfer_dataset=default]",
                                    "snip [examples=default, transfer_dataset=cifar100]",
                                    "snip [examples=default, transfer_dataset=default]"]
    assert (board.seeds == 1).all()


def test_two_runs_of_one_seed_in_one_experiment_are_an_error_naming_both():
    rows = [_configured("lamp", 0.9, 0, 0.6, "a", {"epochs": 3}), _configured("lamp", 0.9, 0, 0.9, "b", {"epochs": 3})]
    rows[1]["run_id"] = "f" * 16  # the same experiment and seed under another run id: the key would be wrong
    with pytest.raises(BenchError, match=f"runs {rows[0]['run_id']} .*and {'f' * 16} .*both seed 0"):
        build_leaderboard(pd.DataFrame(rows), ["a", "b"])
    rows[1]["run_id"] = rows[0]["run_id"]  # the same run in two places: one run (the newest row)
    board = build_leaderboard(pd.DataFrame(rows), ["a", "b"])
    assert len(board) == 1 and board.seeds[0] == 1


def test_learned_sparsity_runs_of_two_targets_in_one_bin_are_two_experiments():
    rows = [_configured("lasso", s, 0, top1, "a", {"epochs": 3}, sparsity_kind="learned", sparsity_bin=0.93,
                        achieved_sparsity=0.93) for s, top1 in ((0.5, 0.8), (0.6, 0.82))]
    board = build_leaderboard(pd.DataFrame(rows), ["a"])
    assert sorted(board.method) == ["lasso [sparsity=0.5]", "lasso [sparsity=0.6]"] and (board.seeds == 1).all()


def test_rows_without_config_pool_within_their_suite_only():
    rows = [_row("px", 0.9, 0, 0.8, suite="a"), _row("px", 0.9, 1, 0.82, suite="a"), _row("px", 0.9, 0, 0.6, suite="b")]
    board = build_leaderboard(pd.DataFrame(rows), ["a", "b"]).set_index("method")
    assert board.loc["px [suite=a]", "seeds"] == 2 and board.loc["px [suite=b]", "seeds"] == 1


def test_chance_level_rule():
    from bench_harness.results.stats import at_chance

    assert at_chance(0.10, 10) and at_chance(0.115, 10) and at_chance(0.05, 10)  # at or below chance
    assert not at_chance(0.125, 10) and not at_chance(0.5, 10)
    assert not at_chance(0.10, float("nan")) and not at_chance(float("nan"), 10)  # unknown: not flagged
    # a small test set is noisier: 500 examples of 10 classes, guessing reaches 10 % + 3.29 * 1.34 % = 14.4 %
    assert at_chance(0.14, 10, n_test=500) and not at_chance(0.15, 10, n_test=500)
    assert not at_chance(0.14, 10, n_test=500, seeds=5)  # averaged over 5 seeds the noise shrinks


def test_a_run_at_chance_shows_in_the_tables():
    rows = [_configured("random", 0.98, s, 0.1, "q", {"epochs": 2}) for s in range(3)]
    rows += [_configured("magnitude", 0.98, s, 0.8, "q", {"epochs": 2}) for s in range(3)]
    table = display_table(build_leaderboard(pd.DataFrame(rows), ["q"])).set_index("method")
    assert table.loc["random", "top-1 (%)"] == "10.00 ± 0.00 (chance)" and "at chance" in table.loc["random", "flags"]
    assert "chance" not in table.loc["magnitude", "top-1 (%)"]
    assert "10.00 ± 0.00 (chance)" in to_markdown(table.reset_index())


def test_the_run_table_flags_a_run_at_chance_instead_of_collapse_false(tmp_path, capsys):
    """Issue 29: random at 0.98 with top-1 10.00 % was shown as `collapse False`."""
    from bench_harness.cli import print_results

    for row in (_row("random", 0.98, 0, 0.10, num_classes=10), _row("magnitude", 0.98, 0, 0.70, num_classes=10),
                _row("snip", 0.98, 0, 0.70, num_classes=10, layer_collapse=True)):
        write_shard(row, tmp_path, "s")
    print_results("s", str(tmp_path))
    lines = {line.split()[2]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "at chance" in lines["random"] and "False" not in lines["random"]
    assert "chance" not in lines["magnitude"] and "collapse" in lines["snip"]
