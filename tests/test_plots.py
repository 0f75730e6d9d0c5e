"""Plots a paper can use (issue 29): one test per finding, on figures drawn from hand-made leaderboards and checked
by their properties (what is drawn, where, in which style), plus the files `make_plots` writes."""
import datetime as dt
import hashlib
import json
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.image import imread

from bench_harness.results import plots
from bench_harness.results.leaderboard import build_leaderboard, prepare_runs
from bench_harness.results.plots import (
    CLIPPED_LABEL,
    SLOTS,
    display_name,
    draw_accuracy_vs,
    draw_accuracy_vs_density,
    draw_layer_density_profile,
    layer_label,
    make_plots,
    method_colour,
    method_style,
    method_styles,
    plot_style,
)

NAMES = {"lenet5": "LeNet-5", "fashion_mnist": "Fashion-MNIST", "resnet20": "ResNet-20"}
LAYERS = {"features.0.weight": 150, "features.3.weight": 2400, "classifier.0.weight": 48000,
          "classifier.2.weight": 10080, "classifier.4.weight": 840}
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _row(pruner, sparsity, seed, top1, params="{}", ablation=None, **kw):
    key = f"{pruner}-{params}-{ablation}-{sparsity}-{seed}"
    prunable = sum(LAYERS.values())
    spread = np.linspace(0.4, 1.8, len(LAYERS)) if pruner != "random" else np.ones(len(LAYERS))
    row = dict(run_id=hashlib.sha256(key.encode()).hexdigest()[:32], suite="s", pruner=pruner, pruner_params=params,
               ablation=ablation, model="lenet5", model_params="{}", dataset="fashion_mnist", seed=seed,
               target_sparsity=sparsity, status="ok", top1=top1, top5=0.99, loss=1.0, achieved_sparsity=sparsity,
               achieved_sparsity_all=sparsity, layer_collapse=False, params_total=prunable + 300,
               params_nonzero=round(prunable * (1 - sparsity)) + 300, params_prunable=prunable, flops_dense=4.2e5,
               flops_effective=4.2e5 * (1 - sparsity) * (1.3 if pruner == "snip" else 1.0), prune_seconds=1.0,
               train_seconds=30.0, pretrain_seconds=0.0, device="cpu", num_classes=10, finished_at=T0,
               layer_density=json.dumps({n: min(1.0, (1 - sparsity) * f) for n, f in zip(LAYERS, spread)}))
    row.update(kw)
    return row


ACC = {"random": (0.85, 0.78, 0.10), "magnitude": (0.88, 0.86, 0.62), "px": (0.88, 0.87, 0.75)}


def _runs(seeds=(0, 1), acc=ACC, dense=(0.89, 0.93)):
    rows = [_row("dense", 0.0, s, dense[i % len(dense)]) for i, s in enumerate(seeds)]
    for pruner, accs in acc.items():
        for sparsity, a in zip((0.5, 0.9, 0.98), accs):
            rows += [_row(pruner, sparsity, s, a + 0.01 * (-1) ** i) for i, s in enumerate(seeds)]
    return pd.DataFrame(rows)


def _board(**kw):
    return build_leaderboard(_runs(**kw), ["s"])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_texts(fig):
    legends = [*fig.legends] + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def _lines(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata())]


# -- finding 1: the dense reference ---------------------------------------------------------------------------------
def test_the_dense_reference_is_a_labelled_line_with_its_interval_in_the_legend():
    board = _board()  # two seeds: 89 and 93 %, a 95 % CI of ±25 points
    dense = board[board.method == "dense"].iloc[0]
    fig = draw_accuracy_vs_density(board, "lenet5", "fashion_mnist")
    ax = fig.axes[0]
    # no full-width grey band: one band per sparse method, none spanning the whole axis
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    assert not [p for p in ax.patches if p.get_width() if hasattr(p, "get_width")]
    # a horizontal line at the dense mean, and its value and interval in the legend
    y = 100 * dense.top1_mean
    assert any(np.allclose(ln.get_ydata(), y) and tuple(ln.get_xdata()) == (0, 1) for ln in _lines(ax))
    lo, hi = 100 * (dense.top1_mean - dense.top1_ci95), min(100.0, 100 * (dense.top1_mean + dense.top1_ci95))
    label = next(t for t in _legend_texts(fig) if t.startswith("dense"))
    assert label == f"dense {y:.1f} % (CI {lo:.3g}–{hi:.3g})"
    # the interval is an error bar at density 1, on the axis (its tick is labelled 1)
    assert 1.0 in ax.get_xticks() and ax.get_xlim()[0] > 1.0


# -- finding 2: cut intervals ---------------------------------------------------------------------------------------
def test_intervals_cut_at_0_or_100_carry_a_visible_mark():
    board = _board(acc={"magnitude": (0.95, 0.50, 0.03)})  # ±12.7 points: over 100 at 0.5, under 0 at 0.02
    fig = draw_accuracy_vs_density(board, "lenet5", "fashion_mnist")
    ax = fig.axes[0]
    up = [ln for ln in _lines(ax) if ln.get_marker() == "^" and np.allclose(ln.get_ydata(), 100)]
    down = [ln for ln in _lines(ax) if ln.get_marker() == "v" and np.allclose(ln.get_ydata(), 0)]
    assert up and down and all(not ln.get_clip_on() for ln in up + down)
    assert CLIPPED_LABEL in _legend_texts(fig)
    assert np.isclose(np.concatenate([ln.get_xdata() for ln in up]), 0.5).any()
    assert np.isclose(np.concatenate([ln.get_xdata() for ln in down]), 0.02).any()
    # the cost plot (error bars) marks them too; a board without cut intervals has no mark and no legend entry
    assert CLIPPED_LABEL in _legend_texts(draw_accuracy_vs(board, "lenet5", "fashion_mnist", "model_bits_mean", "b"))
    one_seed = _board(seeds=(0,), acc={"magnitude": (0.95, 0.50, 0.03)})
    assert CLIPPED_LABEL not in _legend_texts(draw_accuracy_vs_density(one_seed, "lenet5", "fashion_mnist"))


# -- finding 3: colours, markers and lines --------------------------------------------------------------------------
def _grey(colour):
    return plots._grey(colour)


def test_method_styles_stay_distinct_for_many_methods_and_in_greyscale():
    builtins = ["dense", "random", "magnitude", "snip", "grasp", "synflow", "px", "imp"]
    methods = builtins + ["my_plugin", "other_plugin", "third(k=2)", "magnitude(scope=layerwise)"]
    styles = method_styles(methods)
    assert len({s.colour for s in styles.values()}) == len(methods)
    assert len({s.marker for s in styles.values()}) == len(methods)  # shapes tell them apart in greyscale
    # the plugin that sat next to magnitude (light blue beside dark blue) now differs in hue, shape and line
    px, mag = styles["px"], styles["magnitude"]
    assert px.marker != mag.marker and px.dash != mag.dash and px.colour != mag.colour
    # any two methods that a greyscale print cannot tell apart by lightness differ in marker and in line
    for a in methods:
        for b in methods:
            if a < b and abs(_grey(styles[a].colour) - _grey(styles[b].colour)) < 0.1:
                assert styles[a].marker != styles[b].marker
    # thirty methods: no two share a colour, marker and line style; no two share a (marker, line) pair
    many = method_styles([f"plugin_{i}" for i in range(30)])
    assert len({(s.colour, s.marker, s.dash) for s in many.values()}) == 30
    assert len({(s.marker, s.dash) for s in many.values()}) == 30
    # stable: per name, whatever the order; the site's method_colour is the same colour for the built-ins
    assert method_styles(list(reversed(methods))) == styles
    assert method_colour("magnitude") == styles["magnitude"].colour == "#0072B2"
    assert method_colour("my_plugin") == method_colour("my_plugin")
    assert method_colour("my_plugin", among=methods) == styles["my_plugin"].colour
    # an ablation has its method's colour and marker, hollow and dotted
    abl = method_style("px+shuffle")
    assert (abl.colour, abl.marker, abl.hollow, abl.dash) == (px.colour, px.marker, True, ":")
    assert len({(s.marker, s.dash) for s in SLOTS}) == len(SLOTS)
    # and the figure draws what the styles say
    runs = pd.DataFrame([_row(m.split("(")[0], 0.9, 0, 0.5 + 0.03 * i,
                              params='{"scope": "layerwise"}' if "(" in m and m.startswith("mag") else
                              '{"k": 2}' if "(" in m else "{}")
                         for i, m in enumerate(methods) if m != "dense"])
    board = build_leaderboard(runs, ["s"])
    fig = draw_accuracy_vs_density(board, "lenet5", "fashion_mnist")
    drawn = {ln.get_label(): (ln.get_color(), ln.get_marker()) for ln in _lines(fig.axes[0])
             if not ln.get_label().startswith(("_", "chance"))}
    assert len(set(drawn.values())) == len(drawn) == len(methods) - 1


# -- finding 4: the axis label says what the interval is -----------------------------------------------------------
def test_the_accuracy_label_says_band_or_bars_as_drawn():
    board = _board()
    band = draw_accuracy_vs_density(board, "lenet5", "fashion_mnist").axes[0].get_ylabel()
    bars = draw_accuracy_vs(board, "lenet5", "fashion_mnist", "flops_effective_mean", "FLOPs").axes[0].get_ylabel()
    assert "band: 95 % CI" in band and "bars" not in band and "mean of 2 seeds" in band
    assert "bars: 95 % CI" in bars and "band" not in bars
    one = _board(seeds=(0,))
    assert "no interval" in draw_accuracy_vs(one, "lenet5", "fashion_mnist", "flops_effective_mean",
                                             "FLOPs").axes[0].get_ylabel()


# -- finding 5: density labels for every method or none -----------------------------------------------------------
def test_density_labels_on_every_sparse_point_or_on_none():
    board = _board()
    fig = draw_accuracy_vs(board, "lenet5", "fashion_mnist", "flops_effective_mean", "FLOPs")
    texts = [t for t in fig.axes[0].texts]
    assert sorted(t.get_text() for t in texts) == sorted(["0.5", "0.1", "0.02"] * 3)
    styles = method_styles(board.method)
    assert {t.get_color() for t in texts} == {styles[m].colour for m in ("random", "magnitude", "px")}
    # too many points to label: none is
    acc = {f"plugin_{i}": (0.8, 0.7, 0.6) for i in range(14)}
    crowded = draw_accuracy_vs(_board(acc=acc), "lenet5", "fashion_mnist", "flops_effective_mean", "FLOPs")
    assert not crowded.axes[0].texts and "labels: density" not in crowded.axes[0].get_title()


# -- finding 6: dodged error bars -----------------------------------------------------------------------------------
def test_error_bars_of_methods_at_equal_x_are_dodged():
    board = _board()  # the same non-zeros at one sparsity: the same model bits for every method
    cell = board[np.isclose(board.density, 0.1)]
    assert cell.model_bits_mean.nunique() == 1
    fig = draw_accuracy_vs(board, "lenet5", "fashion_mnist", "model_bits_mean", "bits")
    ax = fig.axes[0]
    bits = float(cell.model_bits_mean.iloc[0])
    xs = sorted(x for c in ax.containers for x in c.lines[0].get_xdata() if abs(math.log10(x / bits)) < 0.1)
    assert len(xs) == 3 and len(set(xs)) == 3  # three methods, three positions
    assert xs[1] == pytest.approx(bits) and max(abs(math.log10(x / bits)) for x in xs) < 0.08  # close to the truth
    assert "spread apart" in ax.get_xlabel()
    # where nothing coincides, nothing moves
    flops = draw_accuracy_vs(_board(acc={"snip": (0.8, 0.7, 0.6), "magnitude": (0.8, 0.7, 0.6)}), "lenet5",
                             "fashion_mnist", "flops_effective_mean", "FLOPs")
    assert "spread apart" not in flops.axes[0].get_xlabel()


# -- finding 7: readable log ticks ----------------------------------------------------------------------------------
def _overlaps(labels, renderer):
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


@pytest.mark.parametrize("style", ["default", "paper"])
def test_log_ticks_are_few_plain_and_never_overlap(style):
    prepared = prepare_runs(_runs())
    board = build_leaderboard(_runs(), ["s"])
    with plot_style(style):
        figs = [draw_layer_density_profile(prepared, "lenet5", "fashion_mnist", 0.9),
                draw_accuracy_vs(board, "lenet5", "fashion_mnist", "flops_effective_mean", "FLOPs"),
                draw_accuracy_vs(board, "lenet5", "fashion_mnist", "model_bits_mean", "bits")]
        for fig in figs:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            ax = fig.axes[0]
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_scale() != "log":
                    continue
                assert not [t for t in axis.get_minorticklabels() if t.get_text()]  # no minor labels
                shown = [t for t in axis.get_majorticklabels() if t.get_text()]
                assert 2 <= len(shown) <= 7
                assert all(re.fullmatch(r"[0-9.]+[kMG]?", t.get_text()) for t in shown)  # 0.05, 200k, 1M
                assert not _overlaps(axis.get_majorticklabels(), renderer)


# -- finding 8: layer names -----------------------------------------------------------------------------------------
def test_layers_are_named_by_their_module_path_shortened_sensibly():
    lenet = list(LAYERS)
    assert [layer_label(n, lenet) for n in lenet] == ["features.0", "features.3", "classifier.0", "classifier.2",
                                                      "classifier.4"]
    wrapped = ["module.layer1.0.conv1.weight", "module.layer1.0.shortcut.0.weight", "module.fc.weight"]
    assert [layer_label(n, wrapped) for n in wrapped] == ["layer1.0.conv1", "layer1.0.shortcut.0", "fc"]
    vit = ["conv_proj.weight", "encoder.layers.encoder_layer_11.self_attention.out_proj.weight", "heads.head.weight"]
    long = layer_label(vit[1], vit)
    assert long == "…block11.attn.out_proj" and len(long) <= 23
    with plot_style("paper"):
        fig = draw_layer_density_profile(prepare_runs(_runs()), "lenet5", "fashion_mnist", 0.9)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [layer_label(n, lenet) for n in lenet]
    assert "module path" in fig.axes[0].get_xlabel()


# -- finding 9: titles from display names ---------------------------------------------------------------------------
def test_titles_use_display_names_and_fall_back_to_the_name():
    board = _board()
    assert draw_accuracy_vs_density(board, "lenet5", "fashion_mnist", NAMES).axes[0].get_title() == \
        "LeNet-5, Fashion-MNIST"
    assert draw_accuracy_vs_density(board, "lenet5", "fashion_mnist").axes[0].get_title() == "lenet5, fashion_mnist"
    assert display_name("resnet20(width=32)", NAMES) == "ResNet-20 (width=32)"
    assert display_name("torchvision:resnet18", NAMES) == "resnet18 (torchvision)"
    from bench_harness.contract.plugins import get_registry

    names = get_registry().display_names()  # the built-in providers' display names, as the CLI passes them
    assert (names["lenet5"], names["resnet20"], names["fashion_mnist"], names["cifar10"], names["mnist"]) == (
        "LeNet-5", "ResNet-20", "Fashion-MNIST", "CIFAR-10", "MNIST")


# -- finding 10: paper style ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("style,width", [("paper", 3.5), ("paper-wide", 7.2)])
def test_paper_figures_are_a_journal_column_wide_with_matching_fonts_and_embedded_truetype(tmp_path, style, width):
    files = make_plots(_board(), prepare_runs(_runs()), tmp_path, style=style, names=NAMES)
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == 5  # density, cost, bits, two layer profiles
    for png in pngs:
        assert imread(png).shape[1] == round(width * 300)  # exactly the column width at 300 dpi
    for pdf in (f for f in files if f.suffix == ".pdf"):
        data = pdf.read_bytes()
        assert b"/FontFile2" in data and b"/Type3" not in data  # TrueType (Type 42) embedded, no Type 3
    with plot_style(style):
        fig = draw_accuracy_vs(_board(), "lenet5", "fashion_mnist", "flops_effective_mean", "FLOPs")
        fig.canvas.draw()
        sizes = {t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_text()}
        assert min(sizes) >= 6 and max(sizes) <= 9  # a 9–10 pt body: 8 pt labels, 7 pt ticks, 6 pt point labels
        assert plt.rcParams["font.family"] == ["serif"] and plt.rcParams["pdf.fonttype"] == 42
        assert fig.legends and fig.get_figwidth() == width  # the legend below the axes, inside the width


# -- chance level ---------------------------------------------------------------------------------------------------
def _rings(ax):
    return [ln for ln in _lines(ax) if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]


def test_rows_at_chance_are_ringed_with_a_legend_entry_and_the_chance_line_is_drawn():
    board = _board()
    board["at_chance"] = board.method.eq("random") & np.isclose(board.density, 0.02)
    for fig in (draw_accuracy_vs_density(board, "lenet5", "fashion_mnist"),
                draw_accuracy_vs(board, "lenet5", "fashion_mnist", "model_bits_mean", "bits")):
        ax = fig.axes[0]
        rings = _rings(ax)
        assert len(rings) == 1 and rings[0].get_ydata()[0] == pytest.approx(10.0)
        assert "at chance" in _legend_texts(fig) and "chance (10 %)" in _legend_texts(fig)
    # without the column, nothing special
    plain = board.drop(columns=["at_chance", "flag_at_chance"], errors="ignore")
    fig = draw_accuracy_vs_density(plain, "lenet5", "fashion_mnist")
    assert not _rings(fig.axes[0]) and "at chance" not in _legend_texts(fig)


def test_make_plots_writes_every_figure_in_every_format(tmp_path):
    files = make_plots(_board(), prepare_runs(_runs()), tmp_path, names=NAMES)
    assert {f.suffix for f in files} == {".png", ".svg", ".pdf"} and len(files) == 15
    assert all(f.stat().st_size > 5000 for f in files)
