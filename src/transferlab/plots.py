"""PNG plots for reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches
import matplotlib.pyplot as plt

from transferlab.io import atomic_path


def _plt():
    matplotlib.use("Agg")
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


Bar = tuple[float, float | None, float | None]  #: (mean, interval low, interval high)


def _variant_order(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Variants in first-seen order, controls and floors last."""
    seen = list(dict.fromkeys(v for r in rows.values() for v in r))
    return sorted(
        seen, key=lambda v: (v.startswith("floor/"), v.startswith("scratch"), seen.index(v))
    )


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours (tab10, then tab20, then evenly spaced hues)."""
    plt = _plt()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def variant_colours(names: Sequence[str]) -> dict[str, Any]:
    """One distinct colour per variant (controls and floors last), to share between plots."""
    order = _variant_order({"": dict.fromkeys(names)})
    return dict(zip(order, _colours(len(order)), strict=True))


def _grouped_bars(
    ax: Any,
    rows: Mapping[str, Mapping[str, Bar]],
    hollow: Any = None,
    palette: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[Any]]:
    """Grouped bars (x: target, colour: variant, from ``palette`` when given) with their intervals
    as error bars; a bar for which ``hollow(target, variant, bar)`` holds is an outline."""
    targets = list(rows)
    variants = _variant_order(rows)
    palette = palette or variant_colours(variants)
    colours = [palette[v] for v in variants]
    width = 0.8 / max(1, len(variants))
    handles = []
    for i, v in enumerate(variants):
        for t_i, t in enumerate(targets):
            if v not in rows[t]:
                continue
            y, lo, hi = rows[t][v]
            x = t_i + (i - (len(variants) - 1) / 2) * width
            empty = hollow is not None and hollow(t, v, rows[t][v])
            ax.bar(
                x,
                y,
                width,
                color="none" if empty else colours[i],
                edgecolor=colours[i],
                lw=1.0,
                hatch="///" if empty else None,
            )
            if lo is not None and hi is not None:
                ax.errorbar(
                    x, y, yerr=[[y - lo], [hi - y]], fmt="none", ecolor="black", lw=0.8, capsize=1.5
                )
        handles.append(matplotlib.patches.Patch(color=colours[i], label=v))
    ax.set_xticks(range(len(targets)), targets, rotation=20)
    return variants, handles


def accuracy_bars(
    rows: Mapping[str, Mapping[str, Bar]],
    path: Path,
    title: str,
    palette: Mapping[str, Any] | None = None,
) -> None:
    """Grouped bars: mean test accuracy per target (x) and variant (colour, one distinct colour
    each), with the interval over seeds as an error bar; the legend sits outside the axes."""
    plt = _plt()
    n_var = len(_variant_order(rows))
    fig, ax = plt.subplots(figsize=(2.6 + 1.5 * len(rows) + 0.08 * n_var, 3.8))
    _, handles = _grouped_bars(ax, rows, palette=palette)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    _save(fig, path)


def gain_plot(
    rows: Mapping[str, Mapping[str, Bar]],
    path: Path,
    title: str,
    palette: Mapping[str, Any] | None = None,
) -> None:
    """Paired gains over the control per target and variant with their intervals; a gain whose
    interval contains 0 (unresolved) is drawn hollow and hatched, never as a solid winner."""
    plt = _plt()
    n_var = len(_variant_order(rows))
    fig, ax = plt.subplots(figsize=(2.6 + 1.5 * len(rows) + 0.08 * n_var, 3.8))

    def unresolved(_t: str, _v: str, bar: Bar) -> bool:
        _, lo, hi = bar
        return lo is None or hi is None or lo <= 0 <= hi

    _, handles = _grouped_bars(ax, rows, hollow=unresolved, palette=palette)
    handles.append(
        matplotlib.patches.Patch(
            facecolor="none", edgecolor="grey", hatch="///", label="unresolved (CI contains 0)"
        )
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("gain in test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
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
    kl_err: Sequence[Sequence[float | None] | None] | None = None,
    gain_err: Sequence[Sequence[float | None] | None] | None = None,
    families: Mapping[str, Mapping[str, Any]] | None = None,
    feature: tuple[str, Sequence[float | None], Sequence[Any] | None] | None = None,
) -> None:
    """Scatter of a shift measure against transfer gain, one labelled point per target; the
    measure's bootstrap interval as a horizontal bar, the gain's interval over seeds as a
    vertical one. Each graded shift family (``{name: {"targets": [...], "severities": [...]}}``,
    clean base first) is a connected line through its members, labelled by severity. ``feature``
    (label, values, intervals) adds a second panel for a feature-space measure on the same gains
    (a family that one measure does not spread out, another may). An x axis is logarithmic when
    its measure spans more than two decades."""
    plt = _plt()
    panels = [(xlabel, list(kl), kl_err)]
    if feature is not None:
        panels.append((feature[0], list(feature[1]), feature[2]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (label, xs, xerr) in zip(axes[0], panels, strict=True):
        keep = [i for i, x in enumerate(xs) if x is not None]
        _shift_panel(
            ax,
            [names[i] for i in keep],
            [float(xs[i]) for i in keep],  # type: ignore[arg-type]
            [gain[i] for i in keep],
            [xerr[i] for i in keep] if xerr is not None else None,
            [(gain_err or [None] * len(xs))[i] for i in keep],
            families,
        )
        ax.set_xlabel(label)
    axes[0][0].set_ylabel("paired gain = acc(pretrained) − acc(scratch)")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _shift_panel(
    ax: Any,
    names: Sequence[str],
    kl: Sequence[float],
    gain: Sequence[float],
    kl_err: Sequence[Any] | None,
    gain_err: Sequence[Any],
    families: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    ax.scatter(kl, gain, zorder=3)
    at = dict(zip(names, zip(kl, gain, strict=True), strict=True))
    short: dict[str, str] = {}
    for i, (fam, spec) in enumerate((families or {}).items()):
        pts = [(t, s) for t, s in zip(spec["targets"], spec["severities"], strict=True) if t in at]
        if len(pts) < 2:
            continue
        xs, ys = zip(*(at[t] for t, _ in pts), strict=True)
        ax.plot(
            xs, ys, "-o", color=f"C{2 + i}", lw=1.5, ms=4, zorder=2, label=f"{fam} (severity 0-5)"
        )
        short.update({t: f"s{s}" for t, s in pts[1:]})
    if short:
        ax.legend(fontsize=7, loc="best")
    if kl_err is not None:
        _intervals(ax, kl_err, gain)
    for x, ci in zip(kl, gain_err, strict=True):
        if ci is not None and ci[0] is not None and ci[1] is not None:
            ax.plot([x, x], [ci[0], ci[1]], color="C1", lw=1.2, alpha=0.7)
            ax.plot([x, x], [ci[0], ci[1]], "_", color="C1", ms=8, alpha=0.7)
    for n, x, y in zip(names, kl, gain, strict=True):
        ax.annotate(short.get(n, n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    positive = [x for x in kl if x > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.axhline(0, color="grey", lw=0.8)


def measures_vs_gain(
    rows: Mapping[str, Mapping[str, Any]],
    measures: Sequence[str],
    path: Path,
    title: str,
    correlations: Mapping[str, Mapping[str, float | None]] | None = None,
) -> None:
    """One panel per shift measure: its value (x; the row's ``ci`` drawn as a bar where it has one)
    against ``gain`` (y; its ``gain_ci`` over seeds as a vertical bar), one labelled point per target; the panel title carries Spearman ρ and
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
        xs = [x for _, x, _, _ in pts]
        right = min(xs, default=0) + 0.6 * (max(xs, default=0) - min(xs, default=0))
        for t, x, y, _ in pts:
            ax.plot([x], [y], "o", color="C0", zorder=3)
            # labels of the right-hand points go to their left: they stay inside the panel
            left = x > right
            ax.annotate(
                t,
                (x, y),
                textcoords="offset points",
                xytext=(-3, 3) if left else (3, 3),
                ha="right" if left else "left",
                fontsize=7,
            )
            g = rows[t].get("gain_ci")  # the gain's interval over seeds, vertical
            if g is not None and None not in g:
                ax.plot([x, x], [g[0], g[1]], color="C1", lw=1.0, alpha=0.7)
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


def learning_curves(
    history: Mapping[str, Mapping[str, Mapping[str, list]]], path: Path, title: str = ""
) -> None:
    """Validation accuracy against optimizer steps: one panel per target, one line per variant
    (distinct colours), the legend beside the last panel."""
    plt = _plt()
    targets = list(history)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.0), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        names = list(history[target])
        for variant, colour in zip(names, _colours(len(names)), strict=True):
            rows = [r for r in history[target][variant]["history"] if "val/acc" in r]
            ax.plot(
                [r["step"] for r in rows],
                [r["val/acc"] for r in rows],
                label=variant,
                color=colour,
                lw=1,
            )
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("val accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
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
    curves: Mapping[str, Mapping[str, Mapping[float, Bar]]],
    path: Path,
    xlabel: str,
    title: str,
    logx: bool = False,
) -> None:
    """One panel per target, one line per series (distinct colours): the mean at each x with its
    interval as error bars, e.g. accuracy vs freezing depth or vs shots."""
    plt = _plt()
    targets = list(curves)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.0 * len(targets), 2.9), squeeze=False)
    names = list(dict.fromkeys(s for t in targets for s in curves[t]))
    colours = dict(zip(names, _colours(len(names)), strict=True))
    for ax, target in zip(axes[0], targets, strict=True):
        for i, (series, pts) in enumerate(curves[target].items()):
            xs = sorted(pts, key=float)
            # series side by side by a few percent of x so their error bars never overlap
            shift = (i - (len(curves[target]) - 1) / 2) * 0.04
            xv = [float(x) * (1 + shift) if logx else float(x) + shift * 2 for x in xs]
            ys = [pts[x][0] for x in xs]
            lo = [pts[x][0] - pts[x][1] if pts[x][1] is not None else 0.0 for x in xs]
            hi = [pts[x][2] - pts[x][0] if pts[x][2] is not None else 0.0 for x in xs]
            ax.errorbar(
                xv,
                ys,
                yerr=[lo, hi],
                marker="o",
                ms=3,
                capsize=2,
                lw=1,
                label=series,
                color=colours[series],
            )
        ax.set_title(target, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        if logx:
            ax.set_xscale("log")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
