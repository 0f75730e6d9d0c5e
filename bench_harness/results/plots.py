"""Plots people put in papers (matplotlib; PNG, SVG and PDF): accuracy against density, cost and model size, and
per-layer density profiles.

Conventions, the same in every plot and on the published site:
- one colour per method, fixed across plots and suites (:func:`method_colour`): the Okabe–Ito colour-blind-safe
  palette for the built-in methods, a stable hash into Paul Tol's muted palette for the others; an ablation
  (``method+shuffle``) has its method's colour, dashed or with hollow markers;
- accuracy is the mean over seeds; a band / error bar is the 95 % confidence interval (Student t) and is drawn only
  where a method has at least two seeds (the axis label says so);
- the dense model is a horizontal line with its own band;
- density axes are logarithmic with a tick at every density of the suite;
- cost is FLOPs per example of the pruned network (machine-independent) and, when the runs used GPUs, GPU-hours;
  every point of a cost or size plot is labelled with its density.
``bench plot --style paper`` draws at one-column width (3.4 in) with 8 pt text and embedded TrueType fonts.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

# Okabe & Ito (2008), colour-blind safe; fixed for the built-in methods
OKABE_ITO = {"dense": "#000000", "random": "#999999", "magnitude": "#0072B2", "snip": "#E69F00",
             "grasp": "#009E73", "synflow": "#CC79A7", "imp": "#D55E00", "px": "#56B4E9", "px_cvpr2024": "#56B4E9",
             "px_head": "#F0E442", "snows": "#882255", "mp": "#0072B2", "mp_ls": "#44AA99", "slt_frozen": "#AA4499",
             "edge_popup": "#999933", "autosparse": "#332288"}
TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
STYLES = {"default": {"figure.figsize": (7.2, 4.6), "font.size": 9},
          "paper": {"figure.figsize": (3.4, 2.5), "font.size": 8, "legend.fontsize": 6, "axes.titlesize": 8,
                    "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0,
                    "lines.markersize": 3, "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
                    "font.family": "DejaVu Sans"}}
FORMATS = ("png", "svg", "pdf")


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def method_colour(method: str) -> str:
    """The colour of a method everywhere (plots and site): by its pruner name, parameters and ablation aside."""
    base = method.split("+")[0]
    pruner = base.split("(")[0]
    if base in OKABE_ITO:
        return OKABE_ITO[base]
    if pruner in OKABE_ITO and base == pruner:
        return OKABE_ITO[pruner]
    digest = int(hashlib.sha256(base.encode()).hexdigest(), 16)
    return TOL_MUTED[digest % len(TOL_MUTED)]


def _style(method: str) -> dict:
    base = method.split("+")[0]
    variant = int(hashlib.sha256(base.encode()).hexdigest(), 16) % len(MARKERS) if "(" in base else 0
    return {"color": method_colour(method), "ls": "--" if "+" in method else "-", "marker": MARKERS[variant]}


@contextmanager
def plot_style(name: str = "default"):
    if name not in STYLES:
        raise ValueError(f"unknown plot style {name!r}: use {', '.join(STYLES)}")
    with plt.rc_context(STYLES[name]):
        yield


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in FORMATS:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=200 if ext == "png" else None, bbox_inches="tight")
        files.append(path)
    plt.close(fig)
    return files


def _density_axis(ax, densities) -> None:
    """Log axis with a tick at every density, labelled plainly (0.5, 0.1, 0.02), no minor labels."""
    ticks = sorted({float(f"{d:.4g}") for d in densities if d > 0})
    ax.set_xlim(1.0, 0.01)
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(max(ticks) * 1.3, min(ticks) / 1.3)  # dense on the left, sparse on the right


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize="small", ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  frameon=False)


def _band_note(drawn: bool) -> str:
    return "mean over seeds; band: 95 % CI" if drawn else "mean (one seed: no interval)"


def accuracy_vs_density(board: pd.DataFrame, model: str, dataset: str, out: Path) -> list[Path]:
    cell = board[(board.model == model) & (board.dataset == dataset)]
    fig, ax = plt.subplots()
    banded = False
    for method, g in cell[cell.method != "dense"].groupby("method"):
        g = g.sort_values("density")
        x, y = g.density.to_numpy(), 100 * g.top1_mean.to_numpy()
        st = _style(method)
        ax.plot(x, y, label=method, color=st["color"], ls=st["ls"], marker=st["marker"], ms=4)
        if (g.seeds >= 2).any():
            ci = 100 * np.nan_to_num(g.top1_ci95.to_numpy())
            ax.fill_between(x, np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100), color=st["color"], alpha=0.12, lw=0)
            banded = True
    dense = cell[cell.method == "dense"]
    if len(dense):
        d = dense.iloc[0]
        ax.axhline(100 * d.top1_mean, color=method_colour("dense"), ls=":", lw=1.2, label="dense")
        if d.seeds >= 2 and not math.isnan(d.top1_ci95):
            ax.axhspan(100 * (d.top1_mean - d.top1_ci95), 100 * (d.top1_mean + d.top1_ci95), color="0.6", alpha=0.2,
                       lw=0)
            banded = True
    _density_axis(ax, cell[cell.method != "dense"].density)
    ax.set_ylim(0, 100)
    ax.set_xlabel("density: fraction of prunable weights kept (log)")
    ax.set_ylabel(f"top-1 accuracy (%)\n{_band_note(banded)}")
    ax.set_title(f"{model} on {dataset}")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, out, _slug("accuracy_vs_density", model, dataset))


def accuracy_vs(board: pd.DataFrame, model: str, dataset: str, column: str, xlabel: str, out: Path,
                name: str) -> list[Path]:
    """Accuracy against a cost or size column; every point labelled with its density."""
    cell = board[(board.model == model) & (board.dataset == dataset)]
    cell = cell[cell[column].notna()] if column in cell else cell.iloc[0:0]
    fig, ax = plt.subplots()
    banded = False
    for method, g in cell.groupby("method"):
        st = _style(method)
        g = g.sort_values(column)
        x = g[column].to_numpy(dtype=float)
        err = 100 * np.nan_to_num(g.top1_ci95.to_numpy()) if (g.seeds >= 2).any() else None
        banded |= err is not None
        ax.errorbar(x, 100 * g.top1_mean, yerr=err, fmt=st["marker"], ms=4, capsize=2, label=method,
                    color=st["color"], mfc="white" if st["ls"] == "--" else st["color"], ls=st["ls"], lw=0.6)
    # one density label per density, above its highest point (points of one density share a cluster)
    sparse = cell[cell.method != "dense"]
    for density, g in sparse.groupby("density"):
        top = g.loc[g.top1_mean.idxmax()]
        ax.annotate(f"d={density:.3g}", (top[column], 100 * top.top1_mean), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize="x-small", color="0.3")
    if len(cell) and (cell[column] > 0).all():
        ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"top-1 accuracy (%)\n{_band_note(banded)}")
    ax.set_title(f"{model} on {dataset} (d = density)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return _save(fig, out, _slug(name, model, dataset))


def _short_layer(name: str) -> str:
    name = name.removesuffix(".weight")
    for long, short in (("features.", "f."), ("classifier.", "c."), ("encoder.layers.encoder_layer_", "enc"),
                        ("layer", "L"), ("shortcut", "sc"), ("downsample", "ds"), ("self_attention", "attn")):
        name = name.replace(long, short)
    return name


def layer_density_profile(runs: pd.DataFrame, model: str, dataset: str, sparsity: float, out: Path) -> list[Path]:
    cell = runs[(runs.model_label == model) & (runs.dataset == dataset) & (runs.status == "ok")
                & np.isclose(runs.sparsity_bin, sparsity) & ~runs.method.str.contains("+", regex=False)]
    layers: list[str] = []
    curves = {}
    for method, g in cell.groupby("method"):
        profiles = [json.loads(s) for s in g.layer_density if isinstance(s, str)]
        if profiles:
            layers = list(profiles[0])
            curves[method] = np.mean([[p.get(name, np.nan) for name in layers] for p in profiles], axis=0)
    width = max(plt.rcParams["figure.figsize"][0], 0.28 * len(layers))
    fig, ax = plt.subplots(figsize=(width, plt.rcParams["figure.figsize"][1]))
    for method, mean in curves.items():
        st = _style(method)
        ax.plot(range(len(layers)), mean, marker=st["marker"], ms=3, label=method, color=st["color"], ls=st["ls"])
    ax.axhline(1.0 - sparsity, color="0.4", lw=0.8, ls=":", label=f"uniform ({1 - sparsity:.3g})")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([_short_layer(n) for n in layers], rotation=70, ha="right", fontsize="x-small")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize="x-small")
    ax.set_xlabel("prunable layer, input to output")
    ax.set_ylabel("layer density (fraction kept, log)")
    ax.set_title(f"{model} on {dataset}, sparsity {sparsity:.4g}")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return _save(fig, out, _slug("layer_density", model, dataset, f"{sparsity:.4g}"))


def make_plots(board: pd.DataFrame, runs: pd.DataFrame, out: Path, style: str = "default") -> list[Path]:
    """Every plot for every (model, data set) of a leaderboard; ``runs`` as from leaderboard.prepare_runs."""
    files: list[Path] = []
    if board.empty:
        return files
    with plot_style(style):
        for (model, dataset), cell in board.groupby(["model", "dataset"]):
            files += accuracy_vs_density(board, model, dataset, out)
            files += accuracy_vs(board, model, dataset, "flops_effective_mean",
                                 "FLOPs per example, pruned weights skipped (log)", out,
                                 "accuracy_vs_cost")
            if (cell.get("gpu_hours_mean", pd.Series(dtype=float)) > 0).any():
                files += accuracy_vs(board, model, dataset, "gpu_hours_mean",
                                     "GPU-hours per run: pruning + training (log)", out, "accuracy_vs_gpu_hours")
            files += accuracy_vs(board, model, dataset, "model_bits_mean", "model size in bits (log)", out,
                                 "accuracy_vs_bits")
            sparse = cell[cell.method != "dense"]
            if len(sparse) and "layer_density" in runs:
                counts = sparse.groupby("sparsity_bin").method.nunique()
                for sparsity in sorted(counts[counts == counts.max()].index)[-2:]:  # the two most complete cells
                    files += layer_density_profile(runs, model, dataset, float(sparsity), out)
    return files
