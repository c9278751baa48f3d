"""PNG plots for reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from transferlab.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def accuracy_bars(rows: Mapping[str, Mapping[str, float]], path: Path, title: str) -> None:
    """Grouped bars: test accuracy per target (x) and variant (colour)."""
    plt = _plt()
    targets = list(rows)
    variants = sorted({v for r in rows.values() for v in r}, key=lambda v: (v == "scratch", v))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(targets), 3.6))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs = [t + (i - (len(variants) - 1) / 2) * width for t in range(len(targets))]
        ax.bar(xs, [rows[t].get(v, float("nan")) for t in targets], width, label=v)
    ax.set_xticks(range(len(targets)), targets, rotation=20)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


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
    if kl_err is not None:
        # A percentile interval of a biased estimator need not contain the point estimate.
        lo = [max(0.0, k - e[0]) for k, e in zip(kl, kl_err, strict=True)]
        hi = [max(0.0, e[1] - k) for k, e in zip(kl, kl_err, strict=True)]
        ax.errorbar(kl, gain, xerr=[lo, hi], fmt="o", capsize=3)
    else:
        ax.scatter(kl, gain)
    for n, x, y in zip(names, kl, gain, strict=True):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gain = acc(pretrained) − acc(scratch)")
    ax.set_title(title)
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        mat, classes = mats[name]
        ax.imshow(mat, cmap="Blues")
        k = len(classes)
        if k <= 10:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(mat[i][j]), ha="center", va="center", fontsize=6)
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
