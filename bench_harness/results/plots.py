"""Plots people put in papers (matplotlib; PNG, SVG and PDF): accuracy against density, cost and model size, and
per-layer density profiles.

Conventions, the same in every plot and on the published site:
- one style per method, fixed across plots and suites: a colour (colour-blind safe: Okabe–Ito, then Paul Tol's
  colours), a marker shape and a line style (:func:`method_style`, :func:`method_colour`). The built-in methods have
  fixed styles; another method hashes its name to a style. Within one board no two methods share a colour, a marker
  or a (marker, line) pair while free ones remain (:func:`method_styles`), so the figures stay readable in greyscale
  and for a dozen methods. An ablation (``method+shuffle``) has its method's colour and marker, hollow, dotted;
- accuracy is the mean over seeds; the interval is the 95 % confidence interval (Student t), drawn only where a
  method has at least two seeds, as a band (accuracy vs density) or error bars (cost, size); the axis label says
  which. An interval is cut at 0 and 100 %, and a cut end carries a triangle (legend: "CI cut at 0/100 %");
- the dense model is a labelled horizontal line, with its value, interval and seeds in the legend, and its
  interval as an error bar at density 1;
- a row whose accuracy is within noise of chance (board column ``at_chance``) is ringed ("at chance"); the chance
  level 1/classes is a grey line where the board knows the number of classes;
- density axes are logarithmic with a tick at every density of the suite; other log axes have 1-2-5 or decade
  ticks with plain labels (200k, 1M), never labelled minor ticks;
- cost is FLOPs per example of the pruned network (machine-independent) and, when the runs used GPUs, GPU-hours;
  every sparse point of a cost or size plot is labelled with its density (or, past 40 points, none is); points of
  different methods at the same x are spread apart (dodged) so their error bars do not overlap;
- titles use display names ("LeNet-5, Fashion-MNIST"): ``names`` maps model and data set names to them (the CLI
  passes the plugin registry's); a name without one is shown as it is.

Styles: ``default`` (screen and the site), ``paper`` (one journal column, 3.5 in wide, 8 pt text as in a
9–10 pt journal body, serif, TrueType fonts embedded in PDF) and ``paper-wide`` (two columns, 7.2 in). Paper
figures are saved at exactly their width; the legend sits below the axes.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

# Okabe & Ito (2008) without yellow (too light on white), then Paul Tol's colours: colour-blind safe, ordered so
# that neighbours differ in lightness as well as hue
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#882255", "#999933", "#332288",
           "#44AA99", "#AA4499", "#DDCC77"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h"]  # 11 filled shapes
DASHES = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]  # solid, dashed, dash-dot, dash-dot-dot (dotted: ablations)
ABLATION_DASH = ":"


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    dash: object = "-"
    hollow: bool = False


# slot i: colour i mod 12, marker i mod 11, line i mod 4: the (marker, line) pairs of the 44 slots are all different
SLOTS = [Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)]) for i in range(44)]
_DDD = DASHES[3]
# the built-in methods: every colour and marker different; methods often shown together differ in line style too
BUILTIN = {"magnitude": Style("#0072B2", "o", "-"), "snip": Style("#E69F00", "s", "--"),
           "grasp": Style("#009E73", "^", "-."), "synflow": Style("#CC79A7", "D", _DDD),
           "px": Style("#D55E00", "v", "--"), "imp": Style("#56B4E9", "P", "-."), "snows": Style("#882255", "X", _DDD),
           "edge_popup": Style("#999933", "<", "-"), "autosparse": Style("#332288", ">", "--"),
           "mp_ls": Style("#44AA99", "p", "-."), "slt_frozen": Style("#AA4499", "h", _DDD),
           "px_head": Style("#DDCC77", "8", "-")}
BUILTIN.update(mp=BUILTIN["magnitude"], px_cvpr2024=BUILTIN["px"])
# the pruners added with the during-training regime (issue 27): hollow markers, each (colour, marker, line) new
BUILTIN.update(gmp=Style("#0072B2", "s", "--", hollow=True), rigl=Style("#009E73", "o", "-", hollow=True),
               set=Style("#E69F00", "D", "-.", hollow=True), static_sparse=Style("#8C8C8C", "o", "--", hollow=True),
               lamp=Style("#332288", "s", "-", hollow=True), ntksap=Style("#CC79A7", "^", "--", hollow=True),
               ntksap_data=Style("#CC79A7", "v", "-.", hollow=True), wanda=Style("#882255", "D", "-", hollow=True))
FIXED = {"dense": Style("#000000", "*", ":"), "random": Style("#8C8C8C", "d", "-"), **BUILTIN}
CHANCE_COLOUR = "0.45"
AT_CHANCE_LABEL = "at chance"
CLIPPED_LABEL = "CI cut at 0/100 %"
MAX_ANNOTATIONS = 40

PAPER_BASE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
              "legend.fontsize": 7, "lines.linewidth": 1.0, "lines.markersize": 3.5, "axes.linewidth": 0.6,
              "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4,
              "ytick.minor.width": 0.4, "grid.linewidth": 0.4, "legend.handlelength": 2.4,
              "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "font.family": "serif",
              "font.serif": ["Times New Roman", "Times", "Nimbus Roman", "Nimbus Roman No9 L", "Liberation Serif",
                             "STIXGeneral", "DejaVu Serif"],  # STIX: Times-like, shipped with matplotlib
              "mathtext.fontset": "stix", "savefig.dpi": 300}
STYLES = {"default": {"figure.figsize": (7.2, 4.6), "font.size": 9},
          "paper": {**PAPER_BASE, "figure.figsize": (3.5, 2.4)},
          "paper-wide": {**PAPER_BASE, "figure.figsize": (7.2, 2.8)}}
FORMATS = ("png", "svg", "pdf")


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


# -- method styles -----------------------------------------------------------------------------------------------
def _base(method: str) -> str:
    return method.split("+")[0]


def _hash_slot(base: str) -> int:
    return int(hashlib.sha256(base.encode()).hexdigest(), 16) % len(SLOTS)


def _pruner(base: str) -> str:
    return base.split("(")[0]


def _own_style(base: str) -> Style:
    """A method's own style: its pruner's for a built-in (a variant with parameters too), else its hashed slot."""
    pruner = _pruner(base)
    return FIXED[pruner] if pruner in FIXED else SLOTS[_hash_slot(base)]


def method_styles(methods: Iterable[str]) -> dict[str, Style]:
    """The style of every method of a board: the built-ins' fixed styles, the others' hashed slots, moved on to the
    next slot where a colour, a marker or a (marker, line) pair is taken while free ones remain. The same set of
    methods gets the same styles in every plot."""
    methods = sorted(set(methods))
    # the plain built-ins first, then variants of built-ins (the first of a pruner whose plain form is absent
    # takes its pruner's style), then the others
    bases = sorted({_base(m) for m in methods}, key=lambda b: (b not in FIXED, _pruner(b) not in FIXED, b))
    chosen: dict[str, Style] = {}
    claimed: set[str] = set()
    for base in bases:
        if _pruner(base) in FIXED and _pruner(base) not in claimed:
            chosen[base] = _own_style(base)
            claimed.add(_pruner(base))
            continue
        colours = {s.colour for s in chosen.values()}
        markers = {s.marker for s in chosen.values()}
        pairs = {(s.marker, s.dash) for s in chosen.values()}
        start = _hash_slot(base)
        candidates = [SLOTS[(start + k) % len(SLOTS)] for k in range(len(SLOTS))]
        free = [s for s in candidates if (s.marker, s.dash) not in pairs]
        for want in (lambda s: s.colour not in colours and s.marker not in markers,
                     lambda s: s.colour not in colours, lambda s: True):
            pick = next((s for s in free if want(s)), None)
            if pick is not None:
                chosen[base] = pick
                break
        else:
            chosen[base] = candidates[0]
    out = {}
    for m in methods:
        st = chosen[_base(m)]
        out[m] = Style(st.colour, st.marker, ABLATION_DASH, True) if "+" in m else st
    return out


def method_style(method: str, among: Iterable[str] | None = None) -> Style:
    """One method's style; with ``among`` (the methods shown together) as :func:`method_styles` gives it."""
    if among is not None:
        return method_styles(list(among) + [method])[method]
    st = _own_style(_base(method))
    return Style(st.colour, st.marker, ABLATION_DASH, True) if "+" in method else st


def method_colour(method: str, among: Iterable[str] | None = None) -> str:
    """The colour of a method everywhere (plots and site): by its pruner name and parameters, ablation aside. Pass
    ``among`` (the board's methods) to get exactly the colour its plots use when names collide."""
    return method_style(method, among).colour


def _grey(colour: str) -> float:
    """Relative luminance (0 black, 1 white): what a greyscale print keeps of a colour."""
    r, g, b = matplotlib.colors.to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# -- names ---------------------------------------------------------------------------------------------------------
def display_name(name: str, names: Mapping[str, str] | None = None) -> str:
    """A model or data set name as a figure writes it: its display name from ``names``, parameters kept
    ("resnet20(width=32)" → "ResNet-20 (width=32)"); a name without one as it is."""
    names = names or {}
    if name in names:
        return names[name]
    model, arrow, start = name.partition(" ← ")  # the leaderboard's model label: runs starting from weights
    if arrow:
        return f"{display_name(model, names)} from {start}"
    base, sep, params = name.partition("(")
    shown = names.get(base, base)
    if ":" in base and base not in names:  # torchvision:resnet18 → resnet18 (torchvision)
        source, arch = base.split(":", 1)
        shown = f"{names.get(arch, arch)} ({names.get(source, source)})"
    return f"{shown} ({params}" if sep else shown


def _title(model: str, dataset: str, names: Mapping[str, str] | None, extra: str = "") -> str:
    return f"{display_name(model, names)}, {display_name(dataset, names)}" + (f", {extra}" if extra else "")


def layer_label(name: str, all_names: Iterable[str] = ()) -> str:
    """A prunable layer by its module path: without ``.weight``, without the path prefix every layer shares, long
    components shortened ("encoder_layer_3" → "block3"), at most ~22 characters (leading components dropped)."""
    def strip(n):
        return re.sub(r"\.(weight|weight_orig|bias)$", "", n)

    path = strip(name).split(".")
    others = [strip(n).split(".") for n in all_names] or [path]
    common = 0
    while all(len(o) > common + 1 and o[common] == path[common] for o in others) and len(path) > common + 1:
        common += 1
    parts = path[common:]
    short = {"self_attention": "attn", "attention": "attn"}
    parts = [re.sub(r"^encoder_layer_(\d+)$", r"block\1", short.get(p, p)) for p in parts]
    while len(".".join(parts)) > 22 and len(parts) > 2:  # the leading components go first: "…block3.attn.out"
        parts = parts[1:]
        parts[0] = "…" + parts[0].lstrip("…")
    return ".".join(parts)


# -- figure helpers --------------------------------------------------------------------------------------------------
_ACTIVE: list[str] = ["default"]  # the style of the innermost plot_style


@contextmanager
def plot_style(name: str = "default"):
    if name not in STYLES:
        raise ValueError(f"unknown plot style {name!r}: use {', '.join(STYLES)}")
    _ACTIVE.append(name)
    try:
        with plt.rc_context(STYLES[name]):
            yield
    finally:
        _ACTIVE.pop()


def _paper() -> bool:
    return _ACTIVE[-1].startswith("paper")


def _new_figure(width: float | None = None):
    size = plt.rcParams["figure.figsize"]
    fig, ax = plt.subplots(figsize=(width or size[0], size[1]), layout="constrained" if _paper() else None)
    return fig, ax


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    paper = fig.get_layout_engine() is not None  # paper figures keep their exact width
    for ext in FORMATS:
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=(300 if paper else 200) if ext == "png" else None,
                    bbox_inches=None if paper else "tight")
        files.append(path)
    plt.close(fig)
    return files


def _si(v: float, _=None) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _log_axis(axis, lo: float, hi: float, formatter=None) -> None:
    """Readable log ticks from lo to hi: 1-2-5 ticks when they are few, decades otherwise; minor ticks unlabelled."""
    lo, hi = min(lo, hi), max(lo, hi)
    if not (lo > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)):
        ticks = [m * 10 ** k for k in decades for m in subs if lo * 0.999 <= m * 10 ** k <= hi * 1.001]
        if len(ticks) >= 3:
            break
    if len(ticks) > 7:
        ticks = ticks[::math.ceil(len(ticks) / 6)]
    if len(ticks) < 2:  # under a factor 1.5: two ends, rounded
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(formatter or (lambda v, _: f"{v:g}")))
    axis.set_minor_locator(LogLocator(subs="auto"))
    axis.set_minor_formatter(NullFormatter())


def _density_axis(ax, densities, dense: bool) -> None:
    """Log axis with a tick at every density (1: the dense model), dense on the left, no minor labels."""
    ticks = sorted({float(f"{d:.4g}") for d in densities if d > 0} | ({1.0} if dense else set()))
    # limits first: a single density would otherwise autoscale to a singular log axis
    ax.set_xlim(*((max(ticks) * 1.3, min(ticks) / 1.3) if ticks else (1.0, 0.01)))  # dense left, sparse right
    ax.set_xscale("log")
    if not ticks:
        return
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(ticks) > 6:
        ax.tick_params(axis="x", which="major", labelrotation=45)


def _legend(fig, ax, extra: list | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for handle, label in extra or []:
        handles.append(handle)
        labels.append(label)
    if not handles:
        return
    order = sorted(range(len(labels)), key=lambda i: (not labels[i].startswith("dense"),
                                                      labels[i].startswith("chance"), i))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    tuples = {tuple: HandlerTuple(ndivide=1)}
    if fig.get_layout_engine() is not None:  # paper: below the axes, at the figure's width
        longest = max(len(lb) for lb in labels)  # ~20 characters of 7 pt text an inch, a handle ~8 more
        ncol = max(1, min(5, len(labels), int(fig.get_figwidth() * 20 // (longest + 8))))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, handler_map=tuples,
                   columnspacing=1.0, handletextpad=0.4)
        rows = math.ceil(len(labels) / ncol)
        fig.set_figheight(fig.get_figheight() + rows * 0.15)
        return
    ax.legend(handles, labels, fontsize="small", ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False, handler_map=tuples)


def _interval_note(cell: pd.DataFrame, drawn: bool, kind: str) -> str:
    seeds = sorted({int(s) for s in cell.seeds if s > 0}) if "seeds" in cell else []
    if not drawn:
        return "one seed: no interval" if seeds == [1] else "mean over seeds"
    n = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    return f"mean of {n}; {kind}: 95 % CI"


def _at_chance(g: pd.DataFrame) -> np.ndarray:
    """The rows the board marks as within noise of chance (column ``at_chance``; nothing without it)."""
    for col in ("at_chance", "flag_at_chance"):
        if col in g:
            return g[col].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return np.zeros(len(g), dtype=bool)


def _ring(ax, x, y, size: float) -> None:
    ax.plot(x, y, ls="none", marker="o", ms=size * 2.4, mfc="none", mec="black", mew=0.9, zorder=5)


def _chance_line(ax, cell: pd.DataFrame) -> None:
    if "num_classes" not in cell or not cell.num_classes.notna().any():
        return
    classes = float(cell.num_classes.max())
    if classes >= 2:
        ax.axhline(100.0 / classes, color=CHANCE_COLOUR, lw=0.8, ls=(0, (1, 2)), zorder=1,
                   label=f"chance ({100 / classes:.3g} %)")


def _clip_marks(ax, x, lo, hi, colour) -> bool:
    """Triangles where an interval is cut at 0 or 100 %; whether there was one."""
    x, lo, hi = (np.asarray(v, dtype=float) for v in (x, lo, hi))
    top, bottom = hi > 100.0, lo < 0.0
    ms = plt.rcParams["lines.markersize"] * 1.1
    if top.any():
        ax.plot(x[top], np.full(top.sum(), 100.0), ls="none", marker="^", ms=ms, color=colour, clip_on=False,
                zorder=6)
    if bottom.any():
        ax.plot(x[bottom], np.zeros(bottom.sum()), ls="none", marker="v", ms=ms, color=colour, clip_on=False,
                zorder=6)
    return bool(top.any() or bottom.any())


def _extra_handles(clipped: bool, chance: bool) -> list:
    ms = plt.rcParams["lines.markersize"]
    out = []
    if clipped:
        out.append((Line2D([], [], ls="none", marker="^", color="0.3", ms=ms * 1.1), CLIPPED_LABEL))
    if chance:
        out.append((Line2D([], [], ls="none", marker="o", ms=ms * 2.4, mfc="none", mec="black", mew=0.9),
                    AT_CHANCE_LABEL))
    return out


def _dense_reference(ax, dense: pd.DataFrame, at_x: float | None) -> tuple[list, bool]:
    """The dense model: a horizontal line, its value, interval and seeds in the legend, the interval as an error
    bar at ``at_x`` (density 1) and cut at 0/100 % with a mark. Returns extra legend entries and whether cut."""
    if dense.empty:
        return [], False
    d = dense.iloc[0]
    st = FIXED["dense"]
    y = 100 * float(d.top1_mean)
    seeds = int(d.seeds) if "seeds" in d else 1
    ci = 100 * float(d.top1_ci95) if seeds >= 2 and not math.isnan(float(d.top1_ci95)) else math.nan
    line = ax.axhline(y, color=st.colour, ls=st.dash, lw=1.0, zorder=2)
    label = f"dense {y:.1f} %"
    clipped = False
    handle: object = line
    if not math.isnan(ci):
        lo, hi = y - ci, y + ci
        label += f" (CI {max(lo, 0):.3g}–{min(hi, 100):.3g})"
        if at_x is not None:
            bars = ax.errorbar([at_x], [y], yerr=[[y - max(lo, 0)], [min(hi, 100) - y]], fmt=st.marker,
                               color=st.colour, ms=plt.rcParams["lines.markersize"] * 1.6, capsize=3, lw=0.9,
                               zorder=4)
            clipped = _clip_marks(ax, [at_x], [lo], [hi], st.colour)
            handle = (line, bars)
    elif at_x is not None:
        pt = ax.plot([at_x], [y], ls="none", marker=st.marker, color=st.colour,
                     ms=plt.rcParams["lines.markersize"] * 1.6, zorder=4)[0]
        handle = (line, pt)
    if seeds == 1:
        label += " (1 seed)"
    if _at_chance(dense)[:1].any():
        _ring(ax, [at_x if at_x is not None else ax.get_xlim()[0]], [y], plt.rcParams["lines.markersize"])
    return [(handle, label)], clipped


# -- plots -------------------------------------------------------------------------------------------------------
def _cell(board: pd.DataFrame, model: str, dataset: str) -> pd.DataFrame:
    return board[(board.model == model) & (board.dataset == dataset)]


def draw_accuracy_vs_density(board: pd.DataFrame, model: str, dataset: str,
                             names: Mapping[str, str] | None = None, styles: Mapping[str, Style] | None = None):
    """The accuracy-vs-density figure of one (model, data set) cell (not saved): bands for the intervals."""
    cell = _cell(board, model, dataset)
    styles = styles or method_styles(cell.method)
    fig, ax = _new_figure()
    banded = clipped = chance = False
    ms = plt.rcParams["lines.markersize"]
    sparse = cell[cell.method != "dense"]
    for method, g in sparse.groupby("method"):
        g = g.sort_values("density")
        x, y = g.density.to_numpy(dtype=float), 100 * g.top1_mean.to_numpy(dtype=float)
        st = styles[method]
        ax.plot(x, y, label=method, color=st.colour, ls=st.dash, marker=st.marker, ms=ms,
                mfc="white" if st.hollow else st.colour, zorder=3)
        if (g.seeds >= 2).any():
            ci = 100 * np.nan_to_num(g.top1_ci95.to_numpy(dtype=float))
            ax.fill_between(x, np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100), color=st.colour, alpha=0.15, lw=0)
            clipped |= _clip_marks(ax, x, y - ci, y + ci, st.colour)
            banded = True
        marked = _at_chance(g)
        if marked.any():
            _ring(ax, x[marked], y[marked], ms)
            chance = True
    dense = cell[cell.method == "dense"]
    extra, dense_clipped = _dense_reference(ax, dense, 1.0)
    chance |= bool(_at_chance(dense).any())
    _chance_line(ax, cell)
    _density_axis(ax, sparse.density, dense=not dense.empty)
    ax.set_ylim(0, 100)
    ax.set_xlabel("density: fraction of prunable weights kept (log)")
    ax.set_ylabel(f"top-1 accuracy (%)\n{_interval_note(cell, banded, 'band')}")
    ax.set_title(_title(model, dataset, names))
    ax.grid(alpha=0.3)
    _legend(fig, ax, extra + _extra_handles(clipped or dense_clipped, chance))
    return fig


def accuracy_vs_density(board: pd.DataFrame, model: str, dataset: str, out: Path,
                        names: Mapping[str, str] | None = None,
                        styles: Mapping[str, Style] | None = None) -> list[Path]:
    fig = draw_accuracy_vs_density(board, model, dataset, names, styles)
    return _save(fig, out, _slug("accuracy_vs_density", model, dataset))


def _dodge(cell: pd.DataFrame, column: str, log: bool) -> pd.Series:
    """x positions with the points of different methods at the same x spread apart (a few % of the axis)."""
    x = cell[column].astype(float)
    if x.empty:
        return x
    pos = np.log10(x) if log else x
    span = float(pos.max() - pos.min()) or (1.0 if log else abs(float(pos.max())) or 1.0)
    step = 0.02 * max(span, 1.0 if log else span)
    key = pos.round(6)
    out = pos.copy()
    order = {m: i for i, m in enumerate(sorted(cell.method.unique()))}
    for _, idx in cell.groupby(key).groups.items():
        if len(idx) < 2:
            continue
        members = sorted(idx, key=lambda i: order[cell.at[i, "method"]])
        for j, i in enumerate(members):
            out[i] = pos[i] + (j - (len(members) - 1) / 2) * step
    return 10 ** out if log else out


def _place_labels(ax, labels: list, points: list, bars: list, rings: list = ()) -> None:
    """Small labels next to their points, each at the first of eight places around it that overlaps no other
    label, point or error bar (the first place where every one does)."""
    if not labels:
        return
    fig = ax.figure
    size = max(plt.rcParams["font.size"] - 2, 6)
    px = fig.dpi / 72.0  # pixels a point
    screen = ax.transData.transform(np.asarray(points, dtype=float)) if points else np.zeros((0, 2))
    r = plt.rcParams["lines.markersize"] * px * 0.7
    taken = [(x - r, y - r, x + r, y + r) for x, y in screen]
    for x, y in ax.transData.transform(np.asarray(rings, dtype=float)) if len(rings) else []:
        taken.append((x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r))  # a ring around a point at chance
    for x, lo, hi in bars:
        (x0, y0), (_, y1) = ax.transData.transform([(x, lo), (x, hi)])
        taken.append((x0 - 2 * px, y0, x0 + 2 * px, y1))
    for x, y, text, colour in labels:
        w, h = 0.6 * size * len(text) + 1, size + 1  # in points
        places = [(3, 2), (3, -2 - h), (-3 - w, 2), (-3 - w, -2 - h), (-w / 2, 5), (-w / 2, -5 - h), (6, -h / 2),
                  (-6 - w, -h / 2)]
        sx, sy = ax.transData.transform((x, y))
        chosen = places[0]
        for dx, dy in places:
            box = (sx + dx * px, sy + dy * px, sx + (dx + w) * px, sy + (dy + h) * px)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        taken.append((sx + dx * px, sy + dy * px, sx + (dx + w) * px, sy + (dy + h) * px))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha="left", va="bottom",
                    fontsize=size, color=colour, zorder=4)


def draw_accuracy_vs(board: pd.DataFrame, model: str, dataset: str, column: str, xlabel: str,
                     names: Mapping[str, str] | None = None, styles: Mapping[str, Style] | None = None):
    """Accuracy against a cost or size column (not saved): error bars for the intervals, every sparse point
    labelled with its density (none past 40 points), coincident points dodged."""
    cell = _cell(board, model, dataset)
    cell = cell[cell[column].notna()] if column in cell else cell.iloc[0:0]
    styles = styles or method_styles(board[(board.model == model) & (board.dataset == dataset)].method)
    fig, ax = _new_figure()
    log = bool(len(cell)) and bool((cell[column] > 0).all())
    xs = _dodge(cell, column, log)
    dodged = bool(len(cell)) and not np.allclose(xs.to_numpy(dtype=float), cell[column].to_numpy(dtype=float))
    barred = clipped = chance = False
    ms = plt.rcParams["lines.markersize"]
    annotate = int((cell.method != "dense").sum()) <= MAX_ANNOTATIONS
    points: list = []
    labels: list = []
    bars: list = []
    rings: list = []
    for method, g in cell.groupby("method"):
        st = styles[method]
        g = g.sort_values(column)
        x = xs.loc[g.index].to_numpy(dtype=float)
        y = 100 * g.top1_mean.to_numpy(dtype=float)
        err = None
        if (g.seeds >= 2).any():
            ci = 100 * np.nan_to_num(g.top1_ci95.to_numpy(dtype=float))
            err = [y - np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100) - y]
            bars += list(zip(x, np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100)))
            clipped |= _clip_marks(ax, x, y - ci, y + ci, st.colour)
            barred = True
        dense = method == "dense"
        ax.errorbar(x, y, yerr=err, fmt=st.marker, ms=ms * (1.6 if dense else 1.0), capsize=2,
                    label=method, color=st.colour, mfc="white" if st.hollow else st.colour,
                    ls="none" if dense else st.dash, lw=0.7, elinewidth=0.7, zorder=3)
        marked = _at_chance(g)
        if marked.any():
            _ring(ax, x[marked], y[marked], ms)
            rings += list(zip(x[marked], y[marked]))
            chance = True
        points += list(zip(x, y))
        if annotate and not dense:
            labels += [(xi, yi, f"{d:.3g}", st.colour) for xi, yi, d in zip(x, y, g.density)]
    _chance_line(ax, cell)
    if log:
        ax.set_xscale("log")
        lo, hi = float(cell[column].min()), float(cell[column].max())
        _log_axis(ax.xaxis, lo, hi, _si)
        ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel + ("; points at equal x spread apart" if dodged else ""))
    ax.set_ylabel(f"top-1 accuracy (%)\n{_interval_note(cell, barred, 'bars')}")
    ax.set_title(_title(model, dataset, names) + (" (labels: density)" if annotate and len(cell) else ""))
    ax.grid(alpha=0.3, which="major")
    _legend(fig, ax, _extra_handles(clipped, chance))
    if labels and fig.get_layout_engine() is not None:
        fig.canvas.draw()  # the layout places the axes; labels are placed in its final pixels
    _place_labels(ax, labels, points, bars, rings)
    return fig


def accuracy_vs(board: pd.DataFrame, model: str, dataset: str, column: str, xlabel: str, out: Path,
                name: str, names: Mapping[str, str] | None = None,
                styles: Mapping[str, Style] | None = None) -> list[Path]:
    """Accuracy against a cost or size column; every point labelled with its density."""
    fig = draw_accuracy_vs(board, model, dataset, column, xlabel, names, styles)
    return _save(fig, out, _slug(name, model, dataset))


def draw_layer_density_profile(runs: pd.DataFrame, model: str, dataset: str, sparsity: float,
                               names: Mapping[str, str] | None = None, styles: Mapping[str, Style] | None = None):
    cell = runs[(runs.model_label == model) & (runs.dataset == dataset) & (runs.status == "ok")
                & np.isclose(runs.sparsity_bin, sparsity) & ~runs.method.str.contains("+", regex=False)]
    layers: list[str] = []
    curves = {}
    for method, g in cell.groupby("method"):
        profiles = [json.loads(s) for s in g.layer_density if isinstance(s, str)]
        if profiles:
            layers = list(profiles[0])
            curves[method] = np.mean([[p.get(name, np.nan) for name in layers] for p in profiles], axis=0)
    styles = styles or method_styles(curves)
    base_width = plt.rcParams["figure.figsize"][0]
    width = base_width if _paper() else max(base_width, 0.28 * len(layers))
    fig, ax = _new_figure(width)
    for method, mean in curves.items():
        st = styles.get(method) or method_style(method)
        ax.plot(range(len(layers)), mean, marker=st.marker, label=method, color=st.colour, ls=st.dash)
    ax.axhline(1.0 - sparsity, color="0.4", lw=0.8, ls=":", label=f"uniform ({1 - sparsity:.3g})")
    ax.set_xticks(range(len(layers)))
    labels = [layer_label(n, layers) for n in layers]
    small = plt.rcParams["xtick.labelsize"]
    many = len(layers) * (0.16 if _paper() else 0.12) > width
    ax.set_xticklabels(labels, rotation=90 if many else 45, ha="center" if many else "right",
                       rotation_mode="anchor" if not many else "default",
                       fontsize=max(6, (small if isinstance(small, (int, float)) else 7) - (1 if many else 0)))
    ax.set_yscale("log")
    values = [v for mean in curves.values() for v in np.asarray(mean, dtype=float) if v > 0 and math.isfinite(v)]
    values.append(1.0 - sparsity)
    lo, hi = min(values), max(values)
    _log_axis(ax.yaxis, lo, hi)
    ax.set_ylim(lo / 1.3, min(hi * 1.3, 1.5))
    ax.set_xlabel("prunable layer (module path), input to output")
    ax.set_ylabel("layer density\n(fraction kept, log)")
    ax.set_title(_title(model, dataset, names, f"sparsity {sparsity:.4g}"))
    ax.grid(alpha=0.3, which="major")
    _legend(fig, ax)
    return fig


def layer_density_profile(runs: pd.DataFrame, model: str, dataset: str, sparsity: float, out: Path,
                          names: Mapping[str, str] | None = None,
                          styles: Mapping[str, Style] | None = None) -> list[Path]:
    fig = draw_layer_density_profile(runs, model, dataset, sparsity, names, styles)
    return _save(fig, out, _slug("layer_density", model, dataset, f"{sparsity:.4g}"))


def make_plots(board: pd.DataFrame, runs: pd.DataFrame, out: Path, style: str = "default",
               names: Mapping[str, str] | None = None) -> list[Path]:
    """Every plot for every (model, data set) of a leaderboard; ``runs`` as from leaderboard.prepare_runs;
    ``names``: model and data set names → display names for the titles (the plugin registry's)."""
    files: list[Path] = []
    if board.empty:
        return files
    styles = method_styles(board.method)
    with plot_style(style):
        for (model, dataset), cell in board.groupby(["model", "dataset"]):
            files += accuracy_vs_density(board, model, dataset, out, names, styles)
            files += accuracy_vs(board, model, dataset, "flops_effective_mean",
                                 "FLOPs per example, pruned weights skipped (log)", out,
                                 "accuracy_vs_cost", names, styles)
            if (cell.get("gpu_hours_mean", pd.Series(dtype=float)) > 0).any():
                files += accuracy_vs(board, model, dataset, "gpu_hours_mean",
                                     "GPU-hours per run: pruning + training (log)", out, "accuracy_vs_gpu_hours",
                                     names, styles)
            files += accuracy_vs(board, model, dataset, "model_bits_mean", "model size in bits (log)", out,
                                 "accuracy_vs_bits", names, styles)
            sparse = cell[cell.method != "dense"]
            if len(sparse) and "layer_density" in runs:
                counts = sparse.groupby("sparsity_bin").method.nunique()
                for sparsity in sorted(counts[counts == counts.max()].index)[-2:]:  # the two most complete cells
                    files += layer_density_profile(runs, model, dataset, float(sparsity), out, names, styles)
    return files
