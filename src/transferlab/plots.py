"""PNG plots for reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

from transferlab.io import atomic_path


def _plt():
    matplotlib.use("Agg")
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def accuracy_bars(rows: Mapping[str, Mapping[str, float]], path: Path, title: str) -> None:
    """Grouped bars: test accuracy per target (x) and variant (colour, one distinct colour each:
    tab20 past ten variants); the legend sits outside the axes, never over the bars."""
    plt = _plt()
    targets = list(rows)
    variants = sorted({v for r in rows.values() for v in r}, key=lambda v: (v == "scratch", v))
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(2.6 + 1.3 * len(targets) + 0.05 * len(variants), 3.6))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs = [t + (i - (len(variants) - 1) / 2) * width for t in range(len(targets))]
        ys = [rows[t].get(v, float("nan")) for t in targets]
        ax.bar(xs, ys, width, label=v, color=cmap(i % cmap.N))
    ax.set_xticks(range(len(targets)), targets, rotation=20)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)


def _intervals(
    ax: Any, intervals: Sequence[Sequence[float | None] | None], ys: Sequence[float]
) -> None:
    """Horizontal interval bars ``[lo, hi]`` at each ``y``, drawn where they are, not around the point:
    a percentile interval of a biased estimator need not contain the point estimate."""
    for ci, y in zip(intervals, ys, strict=True):
        if ci is None or any(v is None for v in ci):
            continue
        ax.plot([ci[0], ci[1]], [y, y], color="C0", lw=1.2, alpha=0.7)
        ax.plot([ci[0], ci[1]], [y, y], "|", color="C0", ms=8, alpha=0.7)


def kl_vs_gain(
    names: Sequence[str],
    kl: Sequence[float],
    gain: Sequence[float],
    path: Path,
    xlabel: str,
    title: str,
    kl_err: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Scatter of a shift measure against transfer gain, one labelled point per target."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.scatter(kl, gain, zorder=3)
    if kl_err is not None:
        _intervals(ax, kl_err, gain)
    for n, x, y in zip(names, kl, gain, strict=True):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.margins(x=0.15)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gain = acc(pretrained) − acc(scratch)")
    ax.set_title(title)
    _save(fig, path)


def measures_vs_gain(
    rows: Mapping[str, Mapping[str, Any]],
    measures: Sequence[str],
    path: Path,
    title: str,
    correlations: Mapping[str, Mapping[str, float | None]] | None = None,
) -> None:
    """One panel per shift measure: its value (x; the row's ``ci`` drawn as a bar where it has one)
    against ``gain`` (y), one labelled point per target; the panel title carries Spearman ρ and
    Pearson r from ``correlations``. Targets whose value or gain is null are left out of a panel."""
    plt = _plt()
    ncols = min(4, max(1, len(measures)))
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.1 * ncols, 2.8 * nrows), squeeze=False, sharey=True
    )
    for ax in axes.flat[len(measures) :]:
        ax.axis("off")
    for ax, m in zip(axes.flat, measures, strict=False):
        pts = [
            (t, r[m], r["gain"], (r.get("ci") or {}).get(m))
            for t, r in rows.items()
            if r.get(m) is not None and r.get("gain") is not None
        ]
        for t, x, y, _ in pts:
            ax.plot([x], [y], "o", color="C0", zorder=3)
            ax.annotate(t, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        _intervals(ax, [ci for *_, ci in pts], [y for _, _, y, _ in pts])
        ax.margins(x=0.2)
        c = (correlations or {}).get(m) or {}

        def _f(v: float | None) -> str:
            return "–" if v is None else f"{v:+.2f}"

        ax.set_title(f"{m}  ρ={_f(c.get('spearman'))} r={_f(c.get('pearson'))}", fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.tick_params(labelsize=7)
    for row_axes in axes:
        row_axes[0].set_ylabel("gain", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.45, wspace=0.12)
    _save(fig, path)


def learning_curves(history: Mapping[str, Mapping[str, Mapping[str, list]]], path: Path) -> None:
    """Validation accuracy per epoch: one panel per target, one line per variant."""
    plt = _plt()
    targets = list(history)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.0), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for variant, rec in history[target].items():
            rows = [r for r in rec["history"] if "val/acc" in r]
            ax.plot([r["epoch"] + 1 for r in rows], [r["val/acc"] for r in rows], label=variant)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("val accuracy")
    axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def confusion_grid(
    mats: Mapping[str, tuple[list[list[int]], list[str]]], path: Path, title: str
) -> None:
    """One confusion matrix per panel (rows: true class, columns: predicted), counts annotated."""
    plt = _plt()
    names = list(mats)
    ncols = min(len(names), 4)
    nrows = -(-len(names) // ncols)
    # Room for the longest class name beside and below each panel (names never run into the
    # neighbouring panel).
    longest = max(len(str(c)) for _, classes in mats.values() for c in classes)
    pad = 0.055 * longest
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=((3.0 + pad) * ncols, (3.0 + pad) * nrows),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        mat, classes = mats[name]
        ax.imshow(mat, cmap="Blues")
        k = len(classes)
        if k <= 10:
            top = max(max(row) for row in mat) or 1
            for i in range(k):
                for j in range(k):
                    ink = "white" if mat[i][j] > top / 2 else "black"  # readable on dark cells
                    ax.text(j, i, str(mat[i][j]), ha="center", va="center", fontsize=6, color=ink)
        ax.set_xticks(range(k), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(k), classes, fontsize=6)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def curve_panels(
    curves: Mapping[str, Mapping[str, Mapping[float, float]]],
    path: Path,
    xlabel: str,
    title: str,
    logx: bool = False,
) -> None:
    """One panel per target, one line per series: e.g. accuracy vs freezing depth or vs shots."""
    plt = _plt()
    targets = list(curves)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.0 * len(targets), 2.9), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for series, pts in curves[target].items():
            xs = sorted(pts, key=float)
            ax.plot([float(x) for x in xs], [pts[x] for x in xs], marker="o", label=series)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        if logx:
            ax.set_xscale("log")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
