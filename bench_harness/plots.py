"""Plots people put in papers (matplotlib, PNG and SVG): accuracy against density, cost and model size, and
per-layer density profiles."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        files.append(path)
    plt.close(fig)
    return files


def _styles(methods: list[str]) -> dict[str, dict]:
    """One colour per base method (without ablation); ablations of a method share its colour, dashed."""
    bases = sorted({m.split("+")[0] for m in methods})
    palette = plt.get_cmap("tab20" if len(bases) > 10 else "tab10")
    colour = {b: palette(i % palette.N) for i, b in enumerate(bases)}
    return {m: {"color": colour[m.split("+")[0]], "ls": "--" if "+" in m else "-"} for m in methods}


def accuracy_vs_density(board: pd.DataFrame, model: str, dataset: str, out: Path) -> list[Path]:
    cell = board[(board.model == model) & (board.dataset == dataset)]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    dense = cell[cell.method == "dense"]
    styles = _styles(sorted(set(cell.method) - {"dense"}))
    for method, g in cell[cell.method != "dense"].groupby("method"):
        g = g.sort_values("density")
        x, y = g.density.to_numpy(), 100 * g.top1_mean.to_numpy()
        ci = 100 * np.nan_to_num(g.top1_ci95.to_numpy())
        ax.plot(x, y, marker="o", ms=3, label=method, **styles[method])
        ax.fill_between(x, np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100), color=styles[method]["color"],
                        alpha=0.08, lw=0)
    if len(dense):
        d = dense.iloc[0]
        ax.axhline(100 * d.top1_mean, color="black", ls="--", lw=1, label="dense")
        if not math.isnan(d.top1_ci95):
            ax.axhspan(100 * (d.top1_mean - d.top1_ci95), 100 * (d.top1_mean + d.top1_ci95), color="gray", alpha=0.15)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_ylim(0, 100)
    ax.set_xlabel("density (fraction of weights kept, log scale)")
    ax.set_ylabel("top-1 accuracy (%), mean and 95 % CI")
    ax.set_title(f"{model} on {dataset}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out, _slug("accuracy_vs_density", model, dataset))


def accuracy_vs(board: pd.DataFrame, model: str, dataset: str, column: str, xlabel: str, out: Path,
                name: str) -> list[Path]:
    cell = board[(board.model == model) & (board.dataset == dataset)]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    styles = _styles(sorted(set(cell.method)))
    for method, g in cell.groupby("method"):
        x = g[column].to_numpy(dtype=float)
        ax.errorbar(x, 100 * g.top1_mean, yerr=100 * np.nan_to_num(g.top1_ci95.to_numpy()), fmt="o", ms=4,
                    capsize=2, label=method, color=styles[method]["color"],
                    mfc="white" if styles[method]["ls"] == "--" else styles[method]["color"])
    if (cell[column] > 0).any():
        ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{model} on {dataset}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out, _slug(name, model, dataset))


def layer_density_profile(runs: pd.DataFrame, model: str, dataset: str, sparsity: float, out: Path) -> list[Path]:
    cell = runs[(runs.model_label == model) & (runs.dataset == dataset) & (runs.status == "ok")
                & np.isclose(runs.target_sparsity, sparsity) & ~runs.method.str.contains("+", regex=False)]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.3 * 30), 4.2))
    layers: list[str] = []
    styles = _styles(sorted(set(cell.method)))
    for method, g in cell.groupby("method"):
        profiles = [json.loads(s) for s in g.layer_density if isinstance(s, str)]
        if not profiles:
            continue
        layers = list(profiles[0])
        mean = np.mean([[p.get(name, np.nan) for name in layers] for p in profiles], axis=0)
        ax.plot(range(len(layers)), mean, marker="o", ms=3, label=method, **styles[method])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([n.removesuffix(".weight") for n in layers], rotation=70, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("layer density (kept fraction, log)")
    ax.set_title(f"{model} on {dataset}, sparsity {sparsity:.4g}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out, _slug("layer_density", model, dataset, f"{sparsity:.4g}"))


def make_plots(board: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[Path]:
    """Every plot for every (model, data set) of a leaderboard; ``runs`` as from leaderboard.prepare_runs."""
    files: list[Path] = []
    if board.empty:
        return files
    for (model, dataset), cell in board.groupby(["model", "dataset"]):
        files += accuracy_vs_density(board, model, dataset, out)
        files += accuracy_vs(board, model, dataset, "device_hours_mean",
                             "cost: pruning + training device-hours per run (log)", out, "accuracy_vs_cost")
        files += accuracy_vs(board, model, dataset, "model_bits_mean", "model size in bits (log)", out,
                             "accuracy_vs_bits")
        sparse = cell[cell.method != "dense"]
        if len(sparse):
            counts = sparse.groupby("target_sparsity").method.nunique()
            sparsity = float(counts[counts == counts.max()].index.max())
            files += layer_density_profile(runs, model, dataset, sparsity, out)
    return files
