"""The shift measures the shift-analysis stage reports per target, with bootstrap intervals.

Each measure is an estimator from :mod:`transferlab.shift.estimators` applied to one
representation; the table below is written into ``shift.json`` so every number names its
estimator. Input space uses raw values: pixel intensities (:func:`input_measures`), or token
counts for text (:func:`token_measures`, resampled by whole blocks in :func:`bootstrap_groups`);
feature space uses the primary backbone's pooled features (:func:`feature_measures`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from transferlab.shift import estimators as est

DESCRIPTIONS = {
    "kl_input": "D_KL(P_s||P_t) of add-alpha smoothed value histograms (bins on [0,1]); plug-in, "
    "biased up by ~(bins-1)(1/N_s+1/N_t)/2",
    "js_input": "Jensen-Shannon divergence of the same histograms (nats, symmetric, <= ln 2)",
    "kl_feature": "Gaussian-fit KL of backbone features (closed form on fitted mean/covariance + "
    "ridge); exact only if features are Gaussian, biased up by ~d(d+3)/4 (1/n_s+1/n_t)",
    "kl_feature_knn": "k-nearest-neighbour KL (Wang, Kulkarni & Verdu 2009) of backbone features; "
    "asymptotically unbiased, noisy and possibly negative in high dimension / small n",
    "mmd_feature": "squared MMD, RBF kernel with median-heuristic bandwidth, unbiased U-statistic "
    "(can be slightly negative when the distributions match)",
    "pad_feature": "proxy A-distance 2(1-2e) of a logistic-regression domain classifier on "
    "standardised features (held-out error e); saturates at 2 for separable domains",
}


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def input_measures(
    x_src: np.ndarray, x_tgt: np.ndarray, bins: int, alpha: float
) -> dict[str, float]:
    """Histogram KL and JS of values in [0, 1] (e.g. pixel intensities / 255)."""
    s, t = x_src.ravel(), x_tgt.ravel()
    return {
        "kl_input": est.histogram_kl(s, t, bins=bins, range_=(0.0, 1.0), alpha=alpha),
        "js_input": est.histogram_js(s, t, bins=bins, range_=(0.0, 1.0), alpha=alpha),
    }


def topk_overlap_counts(c_src: np.ndarray, c_tgt: np.ndarray, k: int) -> float:
    """:func:`~transferlab.shift.estimators.topk_overlap` from two count vectors over one vocabulary.

    ``|T_k(t) ∩ T_k(s)| / |T_k(t)|``, where ``T_k`` holds the ``k`` most frequent types among those
    with a count > 0, ties broken by the smaller index (the same convention as the estimator on
    raw ids, so both agree whenever the index order is the id order). Counts can come from a
    resample (e.g. a bootstrap over documents), which raw id arrays would make costly.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")

    def top(c: np.ndarray) -> set[int]:
        ids = np.flatnonzero(c > 0)
        if ids.size == 0:
            raise ValueError("empty counts; top-k tokens are undefined")
        return set(ids[np.lexsort((ids, -c[ids]))[: int(k)]].tolist())

    top_t = top(np.asarray(c_tgt, dtype=np.float64).ravel())
    return len(top_t & top(np.asarray(c_src, dtype=np.float64).ravel())) / len(top_t)


def token_measure_fns(
    alpha: float, top_k: int
) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The token-space measures as functions of two count vectors over one vocabulary of ``V`` types.

    With add-``alpha`` smoothed unigrams ``p_v = (c_v + α) / (N + Vα)``
    (:func:`~transferlab.shift.estimators.unigram_distribution`):

    - ``kl_input = Σ_v p_s(v) log(p_s(v) / p_t(v))``; plug-in, biased up by about
      ``(V − 1)(1/N_s + 1/N_t) / 2`` for i.i.d. tokens (more for bursty text, whose effective
      ``N`` is smaller), pulled toward 0 by the smoothing (mass ``Vα / (N + Vα)`` moved to uniform);
    - ``js_input = ½ KL(p_s || m) + ½ KL(p_t || m)``, ``m = ½(p_s + p_t)``: symmetric, ``<= ln 2``,
      plug-in bias about a quarter of the KL's;
    - ``overlap_topk``: :func:`topk_overlap_counts` of the raw counts (a similarity, 1 = same top-k).
    """

    def dist(c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64).ravel()
        return est.unigram_distribution(c, len(c), alpha, counts=True)

    return {
        "kl_input": lambda c_s, c_t: est.kl_divergence(dist(c_s), dist(c_t)),
        "js_input": lambda c_s, c_t: est.js_divergence(dist(c_s), dist(c_t)),
        "overlap_topk": lambda c_s, c_t: topk_overlap_counts(c_s, c_t, top_k),
    }


def token_measures(
    c_src: np.ndarray, c_tgt: np.ndarray, alpha: float, top_k: int
) -> dict[str, float]:
    """``{"kl_input", "js_input", "overlap_topk"}`` of two count vectors (:func:`token_measure_fns`)."""
    return {name: fn(c_src, c_tgt) for name, fn in token_measure_fns(alpha, top_k).items()}


def feature_measures(
    f_src: np.ndarray,
    f_tgt: np.ndarray,
    *,
    seed: int,
    eps: float,
    knn_k: int = 5,
    max_n: int = 2000,
) -> dict[str, float]:
    return {
        "kl_feature": est.gaussian_kl(f_src, f_tgt, eps=eps),
        "kl_feature_knn": est.knn_kl(f_src, f_tgt, k=knn_k),
        "mmd_feature": est.mmd_rbf(f_src, f_tgt, max_n=max_n, seed=seed),
        "pad_feature": est.proxy_a_distance(f_src, f_tgt, seed=seed, max_n=max_n),
    }


def bootstrap(
    measures: Mapping[str, Callable[[np.ndarray, np.ndarray], float]],
    x_src: np.ndarray,
    x_tgt: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    max_n: int | None = 1000,
) -> dict[str, list[float]]:
    """95 % percentile-bootstrap interval per measure (rows of both samples resampled)."""
    return {
        name: [
            round(v, 6)
            for v in est.bootstrap_ci(
                fn, _rows(x_src), _rows(x_tgt), n_boot=n_boot, seed=seed, max_n=max_n
            )
        ]
        for name, fn in measures.items()
    }


def bootstrap_groups(
    measures: Mapping[str, Callable[[np.ndarray, np.ndarray], float]],
    g_src: Any,
    g_tgt: Any,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, list[float]]:
    """95 % percentile-bootstrap interval per count-vector measure, resampling whole groups.

    ``g_src`` (``n_s × V``) and ``g_tgt`` (``n_t × V``) hold one row of counts per group (a
    document or an LM block; dense or ``scipy.sparse``). Each replicate draws ``n_s`` and ``n_t``
    groups with replacement (:func:`bootstrap` on the row indices, so the draws are those of the
    image route's intervals) and evaluates ``measure(Σ source rows, Σ target rows)``. Resampling
    groups rather than tokens keeps the within-group dependence (bursty vocabulary), which a token
    bootstrap would ignore and so report too narrow an interval; contiguous blocks of one document
    are still correlated, so block intervals are somewhat narrow too.
    """
    n_s, n_t = g_src.shape[0], g_tgt.shape[0]
    t_src, t_tgt = g_src.T, g_tgt.T
    # Every measure's replicates draw the same rows (same seed): sum each resample once.
    cache: dict[tuple[int, bytes], np.ndarray] = {}

    def summed(g_t: Any, idx: np.ndarray, n: int) -> np.ndarray:
        key = (id(g_t), hashlib.blake2b(idx.tobytes(), digest_size=16).digest())
        if key not in cache:
            weights = np.bincount(idx.ravel(), minlength=n).astype(np.float64)
            cache[key] = np.asarray(g_t @ weights).ravel()
        return cache[key]

    fns = {
        name: (lambda a, b, fn=fn: fn(summed(t_src, a, n_s), summed(t_tgt, b, n_t)))
        for name, fn in measures.items()
    }
    rows_s, rows_t = np.arange(n_s)[:, None], np.arange(n_t)[:, None]
    return bootstrap(fns, rows_s, rows_t, n_boot=n_boot, seed=seed, max_n=None)


def finite_or_none(x: float | None) -> float | None:
    """A report value: ``x`` rounded to 6 decimals, or None when it is missing, NaN or infinite
    (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def correlation_table(
    rows: Mapping[str, Mapping[str, Any]],
    measures: list[str],
    n_boot: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Spearman and Pearson correlation of each measure with ``gain`` across targets; with
    ``n_boot > 0`` and per-seed gains (``gain_per_seed``) in every row, each correlation's
    bootstrap interval over targets and seeds (:func:`correlation_ci`: ``spearman_ci``,
    ``pearson_ci``)."""
    names = [t for t, r in rows.items() if r.get("gain") is not None]
    gains = np.array([rows[t]["gain"] for t in names], dtype=float)
    per_seed = [rows[t].get("gain_per_seed") for t in names]
    out = {}
    for m in measures:
        values = np.array(
            [np.nan if rows[t].get(m) is None else rows[t][m] for t in names], dtype=float
        )
        corr: dict[str, Any] = {
            k: finite_or_none(v) for k, v in est.correlations(values, gains).items()
        }
        if n_boot > 0 and names and all(p for p in per_seed):
            corr.update(correlation_ci(values, per_seed, n_boot, seed, confidence))  # type: ignore[arg-type]
        out[m] = corr
    return out


def correlation_ci(
    values: np.ndarray,
    gain_per_seed: list[list[float]],
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, list[float | None]]:
    """Percentile-bootstrap intervals of the Spearman and Pearson correlation between a shift
    measure (one value per target) and the gain, resampling targets and, within each drawn
    target, its seeds: each replicate draws ``n`` targets with replacement, for each the mean of
    its per-seed gains redrawn with replacement, and correlates. Both sources of doubt enter:
    which targets the study happened to include, and the seed noise of each gain. Replicates
    whose correlation is undefined (constant values, fewer than 3 distinct targets) are dropped;
    an interval needs at least half the replicates.

    Hand-written: ``scipy.stats.bootstrap`` resamples one level (paired observations), not
    targets and then seeds within them."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    n = len(values)
    seeds = [np.asarray(g, dtype=float) for g in gain_per_seed]
    reps: dict[str, list[float]] = {"spearman": [], "pearson": []}
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        if len(set(idx.tolist())) < 3:
            continue
        g = np.array([rng.choice(seeds[i], size=len(seeds[i])).mean() for i in idx])
        c = est.correlations(values[idx], g)
        for k in reps:
            if math.isfinite(c[k]):
                reps[k].append(c[k])
    tail = 100 * (1 - confidence) / 2
    out: dict[str, list[float | None]] = {}
    for k, r in reps.items():
        ok = len(r) >= n_boot / 2
        out[f"{k}_ci"] = (
            [round(float(np.percentile(r, tail)), 6), round(float(np.percentile(r, 100 - tail)), 6)]
            if ok
            else [None, None]
        )
    return out
