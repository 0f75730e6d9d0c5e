"""Leaderboards from run rows: per (model, data set, sparsity bin, method) the number of seeds, mean,
standard deviation and 95 % confidence interval of accuracy, achieved sparsity, cost, failures; a rank within
each (model, data set, sparsity) cell; paired per-seed differences against the controls (random and magnitude
at the same sparsity, dense); flags.

Runs are grouped by their **sparsity bin** (column ``sparsity_bin``): the target sparsity for pruners of
sparsity kind ``exact`` and ``target``; for ``learned`` sparsity the achieved sparsity binned (the target when
the achieved density is within a factor 1.25 of the target density, else the achieved density to two
significant digits; see ``masking.sparsity_bin``). Ranks, paired control comparisons and plots use the bin, so a
learned-sparsity method is compared with the baselines at the sparsity it actually reached. ``target_sparsity``
always means what a run asked for.

A leaderboard row is **one experiment**: runs are pooled over seeds only. Every run row carries ``config``, the
canonical configuration hashed into its run id (model, data set, pruner, parameters, version, recipe, scoring,
prunable set, pretraining, pretrained weights, ablation, sparsity, seed, and whatever a later version adds to the
identity); its **experiment** is that configuration without the seed (column ``experiment``, JSON). Runs of two
suites pool only when their experiments are equal. When several experiments share a (model, data set, method) —
two suites that trained the same pruner with different recipes, say — each is its own row and its ``method``
label names what differs, in short form: ``lamp [epochs=4, train_subset=20000]`` next to
``lamp [epochs=3, train_subset=4000]`` (column ``setting``: the bracketed part; ``default`` where one of them
leaves the key at its default). Plots and the site key on ``method``, so they keep the experiments apart too. Two
rows with different run ids and the same seed in one experiment cannot happen (the run id hashes the
experiment and the seed); if they do, the leaderboard refuses with an error naming both run ids. Rows without
``config`` (written by hand, or by tools older than the run-id scheme) fall back to (suite, method, model, data
set, sparsity bin): they pool within their suite only.

The weights a model entry names are every one of its runs' starting point (docs/transfer.md), so they belong to
the **model**: its label says where its runs start, ``lenet5 ← pretrain:mnist, head reinit`` or
``resnet20 ← file 3fa4c2d1`` (a file by its digest), and runs from another start are another model on the board,
ranked and compared apart.

Paired comparisons (``vs_random``, ``vs_magnitude``, ``vs_dense``) pair a run with the control run of the same
seed in the same cell *and the same setting*: the experiment without the fields that belong to the pruner
(pruner, parameters, version, ablation, sparsity, scoring, and the harness's pretraining, which the at-init
controls do not use). Controls that differ only in those fields are averaged per seed.

Leaderboard schema (version 4; version 3 named ``at_chance`` ``flag_at_chance`` (2-point rule) and pooled
runs by method label only; version 2 called the bin ``target_sparsity``), one row per (model, dataset,
sparsity_bin, method), ``method`` naming one experiment:

- ``leaderboard_version`` int; ``suites`` str (comma-separated suites the rows come from)
- ``model``, ``dataset``, ``sparsity_bin`` (float), ``density`` (1 - sparsity_bin), ``sparsity_kind``
  (exact | target | learned)
- ``method`` str: pruner, non-default parameters and ablation, e.g. ``magnitude(scope=layerwise)+shuffle``, and
  when needed what sets the experiment apart from the others of its method (``setting``), e.g.
  ``lamp [epochs=4]``; ``pruner``, ``pruner_params`` (JSON), ``ablation`` (null: none)
- ``experiment`` str: the experiment's configuration, JSON (the runs' ``config`` without the seed; ``{}`` for
  rows without config); ``setting`` str: the differences named in ``method`` (empty when none)
- ``seeds`` int (successful runs), ``failed`` int (failed runs)
- ``top1_mean``, ``top1_std``, ``top1_ci95`` (half-width, Student t; see bench_harness.results.stats for the interval
  and the paired test), ``top5_mean``, ``loss_mean``
- ``top1_before_training_mean``
- ``achieved_sparsity_mean``, ``achieved_sparsity_all_mean``
- ``prune_seconds_mean``, ``train_seconds_mean``, ``device_hours_mean`` (pruning + pretraining + training, in
  hours, any device), ``gpu_hours_mean`` (the same, CUDA runs only; 0 for CPU runs)
- ``flops_dense``, ``flops_effective_mean``, ``params_total``, ``params_nonzero_mean``
- ``model_bits_mean``: storage of the pruned model (the row's ``model_bits``: the pruner's own format when it
  states one, else 32 bits per non-zero parameter + 1 bit per prunable weight; a dense model is 32 bits per
  parameter)
- ``rank`` int: 1 = highest mean top-1 within (model, dataset, sparsity_bin)
- ``vs_random_diff``, ``vs_random_ci95``, ``vs_random_pairs``, ``vs_random_p``; the same for ``vs_magnitude``
  and ``vs_dense``: mean over shared seeds of (this method's top-1 − the control's top-1), its 95 % CI
  half-width, the number of paired seeds and the paired t-test's two-sided p-value (controls: the plain
  ``random``/``magnitude`` pruner with default parameters and no ablation in the same sparsity bin; ``dense`` of
  the same model and data set)
- ``flag_layer_collapse`` (a run had a layer with no weight left), ``flag_off_target`` (|achieved − target| >
  0.005, for exact and target sparsity kinds), ``flag_few_seeds`` (fewer than 3 successful seeds)
- ``at_chance`` bool: the mean top-1 is within noise of chance, 1 / ``num_classes`` (the network learned nothing,
  collapsed or not; the rule: ``bench_harness.results.stats.at_chance``, with the test-set size when the recipe
  sets ``test_subset``); tables show such a top-1 as ``10.00 (chance)``
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bench_harness.contract.storage import sparse_storage_bits
from bench_harness.errors import BenchError
from bench_harness.results.stats import at_chance, ci95_halfwidth, paired_t_pvalue

LEADERBOARD_VERSION = 4
MIN_SEEDS = 3
OFF_TARGET = 0.005
CONTROLS = ("random", "magnitude")
# fields of a run's config that belong to the pruner, not to the setting it is compared in (see the docstring)
PRUNER_FIELDS = ("seed", "sparsity", "pruner", "pruner_params", "pruner_version", "ablation", "scoring", "pretrain")


def method_label(pruner: str, params_json: str | None, ablation: str | None) -> str:
    params = json.loads(params_json) if params_json else {}
    label = pruner
    if params:
        label += "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    if ablation:
        label += f"+{ablation}"
    return label


def _model_label(model: str, params_json: str | None, start: str = "") -> str:
    """The model as the board names it: with its non-default parameters, and the weights its runs start from
    (``start``, from :func:`_starts`) when they are not a random initialization: ``lenet5 ← pretrain:mnist``."""
    params = json.loads(params_json) if isinstance(params_json, str) and params_json else {}  # NaN: a row without
    label = model + ("(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")
    return f"{label} ← {start}" if start else label


_CONFIG_FIELD = r'"{}": "([^"]*)"'


def _starts(df: pd.DataFrame) -> list[str]:
    """Per run, the starting weights its config names (``model_weights``, a file's digest prefix, a non-default
    ``model_head``), e.g. ``pretrain:mnist, head reinit`` or ``file 3fa4c2d1``; "" for a random initialization
    (and for rows without config). Every pruner of a model entry with weights starts from them, so they belong
    to the model: runs from other starts are other models on the board, ranked and compared apart."""
    if "config" not in df:
        return [""] * len(df)
    texts = df["config"].astype("string")
    weights, sha, head = (texts.str.extract(_CONFIG_FIELD.format(name), expand=False)
                          for name in ("model_weights", "model_weights_sha256", "model_head"))
    out = []
    for w, s, h in zip(weights, sha, head):
        if not isinstance(w, str):
            out.append("")
            continue
        label = f"{w} {s[:8]}" if w == "file" and isinstance(s, str) else w
        out.append(f"{label}, head {h}" if isinstance(h, str) else label)
    return out


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run id (the newest wins) with method and model labels and the run's ``sparsity_bin``."""
    if runs.empty:
        return runs
    df = runs.copy()
    if "finished_at" in df:
        df = df.sort_values("finished_at").drop_duplicates("run_id", keep="last")
    df["pruner_params"] = df["pruner_params"].fillna("{}")
    ablations = [a if isinstance(a, str) and a else None for a in df["ablation"]]
    df["ablation"] = pd.Series(ablations, index=df.index, dtype=object)
    methods: dict = {}
    df["method"] = [methods.get(k) or methods.setdefault(k, method_label(*k))
                    for k in zip(df.pruner, df.pruner_params, ablations)]
    models: dict = {}
    df["model_label"] = [models.get(k) or models.setdefault(k, _model_label(*k))
                         for k in zip(df.model, df.get("model_params", [None] * len(df)), _starts(df))]
    hours = (df.get("prune_seconds", 0).fillna(0) + df.get("train_seconds", 0).fillna(0)
             + df.get("pretrain_seconds", 0).fillna(0)) / 3600.0
    df["device_hours"] = hours
    df["gpu_hours"] = np.where(df.get("device", "cpu").fillna("cpu").astype(str).str.lower().isin(["cpu", "mps"]),
                               0.0, hours)
    kind = df["sparsity_kind"] if "sparsity_kind" in df else pd.Series(None, index=df.index, dtype=object)
    df["sparsity_kind"] = kind.fillna("exact")
    df["target_sparsity"] = df["target_sparsity"].astype(float)
    # result schema 2 rows carry the bin (for learned sparsity: the achieved sparsity binned); older ones: the target
    stored_bin = pd.to_numeric(df["sparsity_bin"], errors="coerce") if "sparsity_bin" in df else np.nan
    df["sparsity_bin"] = pd.Series(stored_bin, index=df.index, dtype=float).fillna(df["target_sparsity"])
    prunable = df["params_prunable"] if "params_prunable" in df else pd.Series(np.nan, index=df.index)
    sparse = df.get("achieved_sparsity", 0).fillna(0) > 0
    total, nonzero = df["params_total"].astype(float), df["params_nonzero"].astype(float)
    fallback = np.where(sparse, sparse_storage_bits(total, nonzero, prunable.fillna(0), dense=False),
                        sparse_storage_bits(total, nonzero, prunable.fillna(0), dense=True))
    own = pd.to_numeric(df["model_bits"], errors="coerce") if "model_bits" in df else pd.Series(np.nan, index=df.index)
    df["model_bits"] = own.fillna(pd.Series(fallback, index=df.index)).astype(float)  # schema 1 rows: computed
    _experiments(df)
    return df


def _config(text) -> dict | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("pretrain"), str):  # rows written before issue 26: the recipe as its Python repr
        config["pretrain"] = _legacy_recipe(config["pretrain"])
    return config


def _legacy_recipe(text: str):
    """A pretraining recipe stored as ``Recipe(epochs=2, lr=0.05, ...)`` (the ``config`` of rows written before
    issue 26) as the JSON form rows carry now, its non-default fields, so that the seeds of one experiment
    written before and after pool. Parsed as literals only (``ast.literal_eval`` per argument: nothing is run);
    anything else is kept as it is."""
    import ast
    import dataclasses

    from bench_harness.config.suite import Recipe
    from bench_harness.identity import non_default_fields

    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Recipe"
                and not call.args):
            return text
        values = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        known = {f.name for f in dataclasses.fields(Recipe)}
        return non_default_fields(Recipe(**{k: v for k, v in values.items() if k in known}))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return text


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _differences(configs: dict[str, dict]) -> dict[str, str]:
    """key -> "k=v, ..." naming the flattened fields in which each configuration differs from the others (a field
    a configuration leaves out is at its default); leaf names unless two differing fields share one."""
    flat = {key: _flat(config) for key, config in configs.items()}
    fields = sorted({f for c in flat.values() for f in c})
    differing = [f for f in fields if len({json.dumps(c.get(f, "\0default"), sort_keys=True, default=str)
                                           for c in flat.values()}) > 1]
    leaves = [f.rsplit(".", 1)[-1] for f in differing]
    names = [leaf if leaves.count(leaf) == 1 else f for f, leaf in zip(differing, leaves)]
    return {key: ", ".join(f"{name}={_short(c[f]) if f in c else 'default'}" for f, name in zip(differing, names))
            for key, c in flat.items()}


def _keys(config: dict) -> tuple[str, str, str]:
    """(experiment, its family over sparsities, the setting controls are matched in) of a config without seed."""
    family = {k: v for k, v in config.items() if k != "sparsity"}
    setting = {k: v for k, v in config.items() if k not in PRUNER_FIELDS}
    return tuple(json.dumps(c, sort_keys=True) for c in (config, family, setting))


# marks the key made for rows without a config (a config text starts with "{"); not "\0": the hash table of
# pandas 2.1 reads object strings up to their first NUL, so every such key would collide in unique()
_NO_CONFIG = "#no-config:"


def _experiments(df: pd.DataFrame) -> None:
    """Columns ``experiment`` (the config without the seed, JSON), ``setting`` (what sets it apart from the other
    experiments of its method, or ""), ``_setting_key`` (the setting paired comparisons match on), and the
    ``method`` label made distinct per experiment (see the module docstring)."""
    texts = df["config"] if "config" in df else pd.Series(None, index=df.index, dtype=object)
    texts = texts.astype("string")
    texts = texts.where(texts.ne("").fillna(False), None)
    # runs of one experiment differ only in the seed: strip it from the text (the writer's canonical JSON,
    # where the top-level "seed" comes right before "sparsity") and parse each experiment once; a text that
    # does not have that form is parsed whole
    stripped = texts.str.replace(r'"seed": -?\d+, "sparsity": ', '"sparsity": ', n=1, regex=True).astype(object)
    legacy = texts.isna().to_numpy(dtype=bool)
    learned = df["sparsity_kind"].eq("learned")
    suites = df["suite"] if "suite" in df else pd.Series(None, index=df.index, dtype=object)
    # a Series aligned on the index (a plain list is refused by the masked assignment of pandas 2.1)
    stripped.loc[legacy] = pd.Series(
        [_NO_CONFIG + json.dumps({"suite": s, **({"sparsity": t} if lrn else {})}, default=str)
         for s, t, lrn in zip(suites[legacy], df["target_sparsity"][legacy], learned[legacy])],
        index=stripped.index[legacy], dtype=object)
    keys: dict = {}
    for text in stripped.unique():
        if text.startswith(_NO_CONFIG):  # no config: the runs of one suite (and, for learned sparsity, one target)
            config = json.loads(text[len(_NO_CONFIG):])
        else:
            config = _config(text) or {}
            if "seed" in config:  # not the writer's form
                continue
        keys[text] = _keys(config)
    for i in np.flatnonzero(~stripped.isin(keys).to_numpy()):  # texts of another form, one by one
        config = _config(texts.iat[i]) or {}
        config.pop("seed", None)
        keys[stripped.iat[i]] = _keys(config)
    for i, column in enumerate(("experiment", "_family", "_setting_key")):
        df[column] = stripped.map({text: k[i] for text, k in keys.items()}).astype(object)
    setting = pd.Series("", index=df.index, dtype=object)
    # across sparsities first (a plot's line is one experiment), then within a cell (learned-sparsity runs of
    # several targets that reached one bin)
    for column, by in (("_family", ["model_label", "dataset", "method"]),
                       ("experiment", ["model_label", "dataset", "sparsity_bin", "method"])):
        counts = df.groupby(by, dropna=False)[column].transform("nunique")
        several = df[counts > 1]
        if several.empty:
            continue
        for _, group in several.groupby(by, dropna=False):
            configs = {k: json.loads(k) for k in group[column].unique()}
            labels = _differences(configs)
            extra = group[column].map(labels)
            setting.loc[group.index] = [f"{a}, {b}" if a else b for a, b in zip(setting.loc[group.index], extra)]
            df.loc[group.index, "method"] = group["method"] + " [" + extra + "]"
    df["setting"] = setting
    del df["_family"]


KEYS = ["model_label", "dataset", "sparsity_bin", "method"]
MEAN_COLUMNS = ("top5", "loss", "top1_before_training", "achieved_sparsity", "achieved_sparsity_all",
                "prune_seconds", "train_seconds", "device_hours", "gpu_hours", "flops_effective", "params_nonzero",
                "model_bits")


def _paired(ok: pd.DataFrame, is_control: pd.Series, on: list[str], prefix: str) -> pd.DataFrame:
    """Per method row: mean and 95 % CI of (top1 - control top1) over shared seeds, and the number of pairs; the
    control is the run of the same seed in the same cell (``on``) and setting (controls of one setting that differ
    only in fields they do not use are averaged per seed)."""
    match = on + ["_setting_key", "seed"]
    control = ok[is_control].groupby(match, dropna=False)["top1"].mean().rename("top1_ctl").reset_index()
    merged = ok.loc[~is_control, KEYS + ["_setting_key", "seed", "top1"]].merge(control, on=match)
    merged["diff"] = merged.top1 - merged.top1_ctl
    g = merged.groupby(KEYS, dropna=False)["diff"].agg(["mean", "std", "count"])
    return pd.DataFrame({f"{prefix}_diff": g["mean"], f"{prefix}_ci95": ci95_halfwidth(g["std"], g["count"]),
                         f"{prefix}_pairs": g["count"],
                         f"{prefix}_p": paired_t_pvalue(g["mean"], g["std"], g["count"])},
                        index=g.index)


def _check_one_run_per_seed(df: pd.DataFrame) -> None:
    """Two run ids with the same seed in one leaderboard row: the experiment key failed to tell them apart."""
    counts = df.groupby(KEYS + ["seed"], dropna=False)["run_id"].transform("nunique")
    clash = df[counts > 1]
    if clash.empty:
        return
    first = clash.sort_values("run_id").groupby(KEYS + ["seed"], dropna=False).head(2).head(2)
    a, b = first.iloc[0], first.iloc[1]
    raise BenchError(
        f"runs {a.run_id} (suite {a.get('suite')}) and {b.run_id} (suite {b.get('suite')}) are both seed {a.seed} "
        f"of {a.method!r} on {a.model_label}/{a.dataset} at sparsity {a.sparsity_bin:g}, with experiments "
        f"{a.experiment} and {b.experiment}: one leaderboard row cannot hold two runs of one seed. Their rows "
        f"carry no configuration that tells them apart; aggregate their suites separately, or run them again with "
        f"this version (rows record their config)")


def _test_examples(experiment: pd.Series) -> pd.Series:
    """Test examples per run where the recipe caps them (``test_subset``), else NaN (the whole test set)."""
    def one(text):
        recipe = json.loads(text).get("recipe") if text else None
        n = recipe.get("test_subset") if isinstance(recipe, dict) else None
        return float(n) if isinstance(n, (int, float)) else np.nan
    cache: dict = {}
    return experiment.map(lambda t: cache[t] if t in cache else cache.setdefault(t, one(t)))


def build_leaderboard(runs: pd.DataFrame, suites: list[str]) -> pd.DataFrame:
    """The leaderboard (see the module docstring), vectorised: 100,000 runs take well under a second."""
    df = prepare_runs(runs)
    if df.empty:
        return pd.DataFrame()
    _check_one_run_per_seed(df)
    ok = df[df.status == "ok"].copy()
    for col in MEAN_COLUMNS + ("top1", "flops_dense", "params_total"):
        if col not in ok:
            ok[col] = np.nan
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok["layer_collapse"] = ok["layer_collapse"].astype("boolean").fillna(False).astype(bool)
    all_groups = df.groupby(KEYS, dropna=False)
    base = all_groups.agg(pruner=("pruner", "first"), pruner_params=("pruner_params", "first"),
                          ablation=("ablation", "first"), sparsity_kind=("sparsity_kind", "first"),
                          experiment=("experiment", "first"), setting=("setting", "first"),
                          suites=("suite", lambda s: ",".join(sorted(set(s)))),
                          failed=("status", lambda s: int((s != "ok").sum())))
    g = ok.groupby(KEYS, dropna=False)
    stats = g["top1"].agg(["mean", "std", "count"])
    stats.columns = ["top1_mean", "top1_std", "seeds"]
    stats["top1_ci95"] = ci95_halfwidth(stats.top1_std, stats.seeds)
    means = g[list(MEAN_COLUMNS)].mean().add_suffix("_mean")
    if "num_classes" not in ok:
        ok["num_classes"] = np.nan
    ok["num_classes"] = pd.to_numeric(ok["num_classes"], errors="coerce")
    extra = g.agg(flops_dense=("flops_dense", "mean"), params_total=("params_total", "mean"),
                  flag_layer_collapse=("layer_collapse", "any"), num_classes=("num_classes", "max"))
    board = base.join(stats).join(means).join(extra)
    cell = ["model_label", "dataset", "sparsity_bin"]
    plain = (ok.pruner_params == "{}") & ok.ablation.isna()
    for control in CONTROLS:
        board = board.join(_paired(ok, plain & (ok.pruner == control), cell, f"vs_{control}"))
    board = board.join(_paired(ok, plain & (ok.pruner == "dense"), ["model_label", "dataset"], "vs_dense"))
    board = board.reset_index().rename(columns={"model_label": "model"})
    board["seeds"] = board["seeds"].fillna(0).astype(int)
    for c in ("vs_random_pairs", "vs_magnitude_pairs", "vs_dense_pairs"):
        board[c] = board[c].fillna(0).astype(int)
    board["flag_layer_collapse"] = board["flag_layer_collapse"].astype("boolean").fillna(False).astype(bool)
    board["flag_off_target"] = ((board.method != "dense") & board.achieved_sparsity_mean.notna()
                                & (board.sparsity_kind != "learned")
                                & ((board.achieved_sparsity_mean - board.sparsity_bin).abs() > OFF_TARGET))
    board["flag_few_seeds"] = board.seeds < MIN_SEEDS
    board["at_chance"] = np.asarray(at_chance(board.top1_mean, board.num_classes, _test_examples(board.experiment),
                                              board.seeds), dtype=bool)
    board["density"] = 1.0 - board.sparsity_bin
    board["leaderboard_version"] = LEADERBOARD_VERSION
    if len(suites) == 1:
        board["suites"] = suites[0]
    board["rank"] = (board.groupby(["model", "dataset", "sparsity_bin"])["top1_mean"]
                     .rank(method="min", ascending=False).fillna(0).astype(int))
    return board.sort_values(["model", "dataset", "sparsity_bin", "rank", "method"]).reset_index(drop=True)


# -- export ----------------------------------------------------------------------------------------------------
def _pm(mean: float, ci: float, chance: bool = False) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return (f"{100 * mean:.2f}" + ("" if ci is None or math.isnan(ci) else f" ± {100 * ci:.2f}")
            + (" (chance)" if chance else ""))


def _diff(d: float, ci: float, pairs: int) -> str:
    if not pairs:
        return ""
    return f"{100 * d:+.2f}" + ("" if math.isnan(ci) else f" ± {100 * ci:.2f}")


def display_table(board: pd.DataFrame) -> pd.DataFrame:
    """The human table: one line per leaderboard row, accuracy in percent."""
    out = pd.DataFrame({
        "model": board.model, "dataset": board.dataset,
        "sparsity": [f"{s:.4g}" for s in board.sparsity_bin],
        "method": board.method, "rank": board["rank"], "seeds": board.seeds,
        "top-1 (%)": [_pm(m, c, ch) for m, c, ch in zip(board.top1_mean, board.top1_ci95, board.at_chance)],
        "vs random": [_diff(d, c, p) for d, c, p in zip(board.vs_random_diff, board.vs_random_ci95,
                                                         board.vs_random_pairs)],
        "vs magnitude": [_diff(d, c, p) for d, c, p in zip(board.vs_magnitude_diff, board.vs_magnitude_ci95,
                                                            board.vs_magnitude_pairs)],
        "vs dense": [_diff(d, c, p) for d, c, p in zip(board.vs_dense_diff, board.vs_dense_ci95,
                                                       board.vs_dense_pairs)],
        "achieved": [f"{s:.4f}" if not math.isnan(s) else "" for s in board.achieved_sparsity_mean],
        "flags": [", ".join(f for f, on in (("collapse", c), ("at chance", ch), ("off-target", o), ("few seeds", s),
                                            ("failed", fl > 0)) if on)
                  for c, ch, o, s, fl in zip(board.flag_layer_collapse, board.at_chance, board.flag_off_target,
                                             board.flag_few_seeds, board.failed)],
    })
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas + tabulate); pipes inside cells are escaped."""
    cells = table.map(lambda v: str(v).replace("|", "\\|"))
    return cells.to_markdown(index=False, tablefmt="github") + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs LaTeX tabular (pandas' Styler): special characters escaped, ± as $\\pm$."""
    escaped = table.map(lambda v: str(v))
    latex = escaped.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(
        hrules=True, column_format="l" * len(table.columns))
    return latex.replace("±", r"$\pm$")
