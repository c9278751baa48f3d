"""Estimators of distribution shift between a source and a target sample.

Each function is small and pure: NumPy arrays in, a float (or a probability vector) out, no state
and no I/O. All divergences are in nats and are read as D(P_source || P_target): "how surprised is
a model of the target by the source", which is the direction the transfer study correlates with the
fine-tuning gain.

Choosing an estimator (details and biases in each docstring):

* input space, 1-D marginals (pixel intensities): :func:`histogram_kl`, :func:`histogram_js`;
* input space, tokens: :func:`unigram_kl`, :func:`topk_overlap`;
* feature space (vectors): :func:`gaussian_kl` (first two moments only, cheap, stable),
  :func:`knn_kl` (non-parametric, consistent, noisy and biased in high dimension),
  :func:`mmd_rbf` (a kernel distance, not a KL; well-behaved two-sample statistic),
  :func:`proxy_a_distance` (how separable the domains are for a linear classifier);
* uncertainty and analysis: :func:`bootstrap_ci`, :func:`correlations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "bootstrap_ci",
    "correlations",
    "gaussian_kl",
    "gaussian_kl_closed_form",
    "histogram_js",
    "histogram_kl",
    "js_divergence",
    "kl_divergence",
    "knn_kl",
    "mmd_rbf",
    "proxy_a_distance",
    "smoothed_histogram",
    "topk_overlap",
    "unigram_distribution",
    "unigram_kl",
]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- validation helpers


def _as_samples(x: ArrayLike, name: str) -> FloatArray:
    """Return ``x`` as a finite float64 (n, d) matrix: 1-D is n scalars, >2-D is flattened per row."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array of samples with shape (n, d), got a scalar")
    # Images (n, C, H, W) are compared as flat vectors; a 1-D array is n one-dimensional samples.
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim != 1 else arr[:, None]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; remove or impute them before estimating")
    return arr


def _pair(x_source: ArrayLike, x_target: ArrayLike) -> tuple[FloatArray, FloatArray]:
    xs = _as_samples(x_source, "x_source")
    xt = _as_samples(x_target, "x_target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"x_source and x_target have different dimensions ({xs.shape[1]} vs {xt.shape[1]})"
        )
    return xs, xt


def _as_distribution(p: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.any(arr < 0):
        raise ValueError(f"{name} has negative entries; a distribution must be non-negative")
    total = arr.sum()
    if not total > 0:
        raise ValueError(f"{name} sums to zero; it cannot be normalised to a distribution")
    return arr / total


# --------------------------------------------------------------------------- discrete divergences


def smoothed_histogram(
    values: ArrayLike, bins: int, range_: tuple[float, float], alpha: float = 1.0
) -> FloatArray:
    """Additively smoothed histogram of all values, as a probability vector of length ``bins``.

    Formula: ``p_b = (c_b + alpha) / (N + bins * alpha)`` where ``c_b`` counts the values in bin ``b``
    of ``bins`` equal-width bins over ``range_`` and ``N`` is the number of values (Laplace smoothing
    for ``alpha = 1``).

    Assumptions: ``values`` of any shape are flattened; values outside ``range_`` are clipped into
    the edge bins (so that slightly out-of-range intensities after normalisation are counted rather
    than silently dropped, which would change ``N``). NaN/inf raise ``ValueError``.

    Bias: with ``alpha > 0`` no bin is empty, so a KL between two such histograms is finite. The
    smoothing pulls the vector toward uniform by a total mass of ``bins * alpha / (N + bins * alpha)``;
    negligible for pixel counts (N in the millions), noticeable when ``N`` is comparable to ``bins``.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    bins = int(bins)
    lo, hi = float(range_[0]), float(range_[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"range_ must be finite (low, high) with low < high, got {range_!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("values contain NaN or inf; remove them before building a histogram")
    counts, _ = np.histogram(np.clip(flat, lo, hi), bins=bins, range=(lo, hi))
    return smooth_counts(counts, alpha)


def smooth_counts(counts: ArrayLike, alpha: float = 1.0) -> FloatArray:
    """``p_b = (c_b + alpha) / (N + bins * alpha)``: the smoothing of :func:`smoothed_histogram`
    applied to bin counts ``c`` that are already there (e.g. summed :func:`row_histograms`)."""
    smoothed = np.asarray(counts, dtype=np.float64) + alpha
    total = smoothed.sum()
    if not total > 0:
        raise ValueError("histogram is empty and alpha is 0; pass values or use alpha > 0")
    return smoothed / total


def row_histograms(
    values: ArrayLike, bins: int, range_: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Bin counts per row: ``(n_rows, bins)`` int64, on exactly the bins of :func:`smoothed_histogram`.

    The counts of a set of rows are the sum of its rows' counts, so a bootstrap replicate of a
    histogram divergence costs one ``(n, bins)`` sum instead of re-binning every value:
    ``smooth_counts(row_histograms(x, b)[idx].sum(0))`` equals ``smoothed_histogram(x[idx], b)``.
    Bin ``i`` holds ``edges[i] <= v < edges[i+1]`` (the last bin also ``v = high``) with
    ``edges = linspace(low, high, bins + 1)``, which is how ``numpy.histogram`` bins.
    """
    lo, hi = float(range_[0]), float(range_[1])
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)
    if not np.all(np.isfinite(x)):
        raise ValueError("values contain NaN or inf; remove them before building a histogram")
    edges = np.linspace(lo, hi, int(bins) + 1)
    idx = np.clip(np.searchsorted(edges, np.clip(x, lo, hi), side="right") - 1, 0, int(bins) - 1)
    offsets = np.arange(len(x), dtype=np.int64)[:, None] * int(bins)
    flat = np.bincount((idx + offsets).ravel(), minlength=len(x) * int(bins))
    return flat.reshape(len(x), int(bins))


def kl_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Discrete Kullback–Leibler divergence D_KL(P || Q) in nats.

    Formula: ``D = sum_i p_i log(p_i / q_i)`` with ``0 log(0/q) = 0``.

    Assumptions: ``p`` and ``q`` have the same shape and are non-negative; each is normalised to sum
    to one first, so raw counts may be passed. If ``q_i = 0`` where ``p_i > 0`` the divergence is
    infinite and a ``ValueError`` is raised (smooth the inputs, e.g. :func:`smoothed_histogram`).

    Behaviour: exact for the given vectors (no estimation); ``>= 0`` and ``= 0`` iff ``p == q``;
    asymmetric. Tiny negative values from floating-point rounding are clipped to 0.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    q_arr = np.asarray(q, dtype=np.float64)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same shape, got {p_arr.shape} and {q_arr.shape}")
    p_arr = _as_distribution(p_arr, "p")
    q_arr = _as_distribution(q_arr, "q")
    support = p_arr > 0
    bad = support & (q_arr == 0)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        raise ValueError(
            f"q is zero where p > 0 ({int(bad.sum())} entries, first at index {where}); "
            "KL is infinite, smooth the distributions (alpha > 0)"
        )
    ps, qs = p_arr[support], q_arr[support]
    value = float(np.sum(ps * np.log(ps / qs)))
    return max(value, 0.0)


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen–Shannon divergence in nats.

    Formula: ``JS(P, Q) = ½ KL(P || M) + ½ KL(Q || M)`` with ``M = ½ (P + Q)``.

    Assumptions: same shape, non-negative; both are normalised. Zeros are allowed on either side
    (``M > 0`` wherever ``P > 0`` or ``Q > 0``), so no smoothing is needed.

    Behaviour: symmetric, ``0 <= JS <= log 2`` (reached for disjoint supports); ``sqrt(JS)`` is a
    metric. Unlike KL it saturates, so it cannot distinguish "very different" from "disjoint".
    """
    p_arr = np.asarray(p, dtype=np.float64)
    q_arr = np.asarray(q, dtype=np.float64)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same shape, got {p_arr.shape} and {q_arr.shape}")
    p_arr = _as_distribution(p_arr, "p")
    q_arr = _as_distribution(q_arr, "q")
    m = 0.5 * (p_arr + q_arr)
    value = 0.5 * kl_divergence(p_arr, m) + 0.5 * kl_divergence(q_arr, m)
    return float(min(max(value, 0.0), math.log(2.0)))


def histogram_kl(
    x_source: ArrayLike,
    x_target: ArrayLike,
    bins: int = 32,
    range_: tuple[float, float] = (0.0, 1.0),
    alpha: float = 1.0,
) -> float:
    """KL(P_source || P_target) between smoothed histograms of all values (e.g. pixel intensities).

    Formula: ``kl_divergence(h_s, h_t)`` with ``h = smoothed_histogram(x, bins, range_, alpha)`` on
    shared bin edges.

    Assumptions: only the 1-D marginal of the values is compared (spatial and channel structure is
    ignored: a permuted image has the same histogram). Inputs of any shape are flattened.

    Bias: binning can only lose information, so on the true distributions the histogram KL is a
    lower bound on the KL between the continuous intensity marginals (data-processing inequality);
    it grows with ``bins``. The plug-in estimate is biased upward: for two samples of one
    distribution its mean is about ``(bins − 1)(1/N_s + 1/N_t) / 2`` (N = number of values), while
    smoothing biases it toward 0; with pixel counts (millions of values) both are negligible.
    """
    h_s = smoothed_histogram(x_source, bins, range_, alpha)
    h_t = smoothed_histogram(x_target, bins, range_, alpha)
    return kl_divergence(h_s, h_t)


def histogram_js(
    x_source: ArrayLike,
    x_target: ArrayLike,
    bins: int = 32,
    range_: tuple[float, float] = (0.0, 1.0),
    alpha: float = 1.0,
) -> float:
    """Jensen–Shannon divergence (nats) between smoothed histograms of all values.

    Formula: ``js_divergence(h_s, h_t)`` on shared bins, as in :func:`histogram_kl`.

    Assumptions and bias: as :func:`histogram_kl` (marginal only, lower bound from binning); in
    addition JS is symmetric and bounded by ``log 2``, so it is the robust choice when some pairs of
    data sets barely overlap and the KL would be dominated by a few almost-empty bins.
    """
    h_s = smoothed_histogram(x_source, bins, range_, alpha)
    h_t = smoothed_histogram(x_target, bins, range_, alpha)
    return js_divergence(h_s, h_t)


# --------------------------------------------------------------------------- token distributions


def _token_counts(
    token_ids_or_counts: ArrayLike | Mapping[int, float], vocab_size: int, counts: bool, name: str
) -> FloatArray:
    if int(vocab_size) != vocab_size or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    vocab_size = int(vocab_size)
    if isinstance(token_ids_or_counts, Mapping):
        out = np.zeros(vocab_size, dtype=np.float64)
        for token, c in token_ids_or_counts.items():
            if int(token) != token or not 0 <= token < vocab_size:
                raise ValueError(f"{name}: token id {token!r} is outside [0, {vocab_size})")
            out[int(token)] += float(c)
        if np.any(out < 0) or not np.all(np.isfinite(out)):
            raise ValueError(f"{name}: counts must be finite and non-negative")
        return out
    arr = np.asarray(token_ids_or_counts)
    if counts:
        arr = arr.astype(np.float64).ravel()
        if arr.shape != (vocab_size,):
            raise ValueError(
                f"{name}: a counts vector must have length {vocab_size}, got {arr.size}"
            )
        if np.any(arr < 0) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: counts must be finite and non-negative")
        return arr
    ids = arr.ravel()
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        # Token ids that went through a float tensor are accepted if they are still whole numbers.
        as_float = ids.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ValueError(f"{name}: token ids must be integers, got dtype {ids.dtype}")
        ids = as_float.astype(np.int64)
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{name}: token ids must lie in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]"
        )
    return np.bincount(ids, minlength=vocab_size).astype(np.float64)


def unigram_distribution(
    token_ids_or_counts: ArrayLike | Mapping[int, float],
    vocab_size: int,
    alpha: float = 1.0,
    *,
    counts: bool = False,
) -> FloatArray:
    """Add-alpha smoothed unigram distribution over a vocabulary of ``vocab_size`` tokens.

    Formula: ``p_v = (c_v + alpha) / (N + V * alpha)`` with ``c_v`` the count of token ``v``,
    ``N = sum_v c_v`` and ``V = vocab_size``.

    Input: a flat (or any-shape, flattened) array of token ids in ``[0, V)``; or, with
    ``counts=True``, a length-``V`` vector of counts; or a mapping ``{token_id: count}`` (always
    read as counts). Sequences of different lengths must be concatenated first.

    Assumptions: both sides of a comparison use the same tokenizer and vocabulary, so index ``v``
    means the same token. Bias: with a large vocabulary and a small corpus the ``V * alpha`` pseudo
    counts dominate and every distribution is pulled toward uniform (KLs shrink toward 0); use a
    small ``alpha`` (e.g. 0.01) or a restricted vocabulary in that regime.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    c = _token_counts(token_ids_or_counts, vocab_size, counts, "token_ids_or_counts")
    smoothed = c + alpha
    total = smoothed.sum()
    if total <= 0:
        raise ValueError("no tokens and alpha is 0; the unigram distribution is undefined")
    return smoothed / total


def unigram_kl(
    source_ids: ArrayLike | Mapping[int, float],
    target_ids: ArrayLike | Mapping[int, float],
    vocab_size: int,
    alpha: float = 1.0,
    *,
    counts: bool = False,
) -> float:
    """KL(P_source || P_target) between add-alpha smoothed unigram distributions (nats).

    Formula: ``sum_v p_s(v) log(p_s(v) / p_t(v))`` with ``p`` from :func:`unigram_distribution` over
    the shared vocabulary of size ``vocab_size``.

    Assumptions: a bag-of-tokens view: order and context are ignored; both corpora use the same
    vocabulary. Behaviour: asymmetric; dominated by tokens that are frequent in the source and rare in
    the target. With ``alpha > 0`` the value is finite; its size depends on ``alpha`` whenever the
    target lacks source tokens (each such token contributes about ``p_s log(p_s (N_t + V alpha) /
    alpha)``), so compare values only across pairs computed with the same ``alpha`` and vocabulary.
    """
    p_s = unigram_distribution(source_ids, vocab_size, alpha, counts=counts)
    p_t = unigram_distribution(target_ids, vocab_size, alpha, counts=counts)
    return kl_divergence(p_s, p_t)


def _topk_set(ids: ArrayLike, k: int, name: str) -> set[int]:
    arr = np.asarray(ids).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty; top-k tokens are undefined")
    if not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ValueError(f"{name}: token ids must be integers, got dtype {arr.dtype}")
        arr = as_float.astype(np.int64)
    tokens, freq = np.unique(arr, return_counts=True)
    # lexsort uses the last key as primary: descending frequency, ties broken by smaller id, so the
    # result is deterministic.
    order = np.lexsort((tokens, -freq))
    return {int(t) for t in tokens[order[:k]]}


def topk_overlap(source_ids: ArrayLike, target_ids: ArrayLike, k: int) -> float:
    """Fraction of the target's top-k most frequent tokens that are also in the source's top-k.

    Formula: ``|T_k(target) ∩ T_k(source)| / |T_k(target)|`` where ``T_k`` is the set of the ``k``
    most frequent token ids of a corpus (flat arrays of ids).

    Behaviour: in ``[0, 1]``; 1 means the target's most common vocabulary is covered by the source's.
    It is a similarity, not a divergence (higher = less shift), and ignores the frequencies beyond
    the ranking. Ties in frequency are broken by the smaller token id, so with ties at rank ``k`` the
    value depends on that convention. A corpus with fewer than ``k`` distinct tokens contributes all
    of them (``|T_k| < k``); tokens that never occur are never in ``T_k``. Empty inputs raise.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    top_s = _topk_set(source_ids, k, "source_ids")
    top_t = _topk_set(target_ids, k, "target_ids")
    return len(top_t & top_s) / len(top_t)


# --------------------------------------------------------------------------- feature-space estimators


def gaussian_kl_closed_form(
    mu0: ArrayLike, cov0: ArrayLike, mu1: ArrayLike, cov1: ArrayLike
) -> float:
    """Closed-form KL(N(mu0, cov0) || N(mu1, cov1)) in nats.

    Formula: ``½ [tr(Σ1⁻¹ Σ0) + (μ1 − μ0)ᵀ Σ1⁻¹ (μ1 − μ0) − d + ln(det Σ1 / det Σ0)]``.

    Assumptions: ``mu`` of shape (d,), ``cov`` (d, d) symmetric positive definite (scalars are
    accepted for d = 1). Computed with ``slogdet`` and linear solves (no explicit inverse), which
    stays accurate for ill-conditioned covariances; a non-positive determinant raises
    ``ValueError``. Exact, no estimation; rounding below 0 is clipped to 0.
    """
    m0 = np.atleast_1d(np.asarray(mu0, dtype=np.float64))
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    c0 = np.atleast_2d(np.asarray(cov0, dtype=np.float64))
    c1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
    d = m0.shape[0]
    if m0.shape != (d,) or m1.shape != (d,) or c0.shape != (d, d) or c1.shape != (d, d):
        raise ValueError(
            f"need mu0, mu1 of shape (d,) and cov0, cov1 of shape (d, d); got {m0.shape}, "
            f"{c0.shape}, {m1.shape}, {c1.shape}"
        )
    sign0, logdet0 = np.linalg.slogdet(c0)
    sign1, logdet1 = np.linalg.slogdet(c1)
    if sign0 <= 0 or sign1 <= 0:
        raise ValueError("covariance is not positive definite (determinant <= 0); add a ridge")
    diff = m1 - m0
    trace_term = float(np.trace(np.linalg.solve(c1, c0)))
    maha = float(diff @ np.linalg.solve(c1, diff))
    value = 0.5 * (trace_term + maha - d + (logdet1 - logdet0))
    return max(value, 0.0)


def gaussian_kl(x_source: ArrayLike, x_target: ArrayLike, eps: float = 1e-6) -> float:
    """KL between Gaussians fitted to the source and target samples (nats).

    Formula: fit ``μ`` (sample mean) and ``Σ = cov(x) + eps·I`` (unbiased sample covariance plus a
    ridge) to each (n, d) sample, then :func:`gaussian_kl_closed_form` ``(μ_s, Σ_s, μ_t, Σ_t)``.

    Assumptions: only the first two moments are compared. It is exact when both distributions are
    Gaussian; otherwise it is the KL between the moment-matched Gaussians, which is neither an upper
    nor a lower bound on the true KL (multi-modal features with equal moments read as 0). Needs
    ``n >= 2`` per side. ``eps`` is absolute, so features should be on an order-one scale; it keeps
    singular covariances (constant pixels, ``n <= d``) invertible, but with ``n <= d`` the value is
    dominated by the ridge and is not meaningful.

    Bias: the plug-in estimate is biased upward: for two samples of one distribution its mean is
    about ``d (d + 3) / 4 · (1/n_s + 1/n_t)`` (one ½χ² term per fitted parameter), so compare values
    at equal sample sizes and ``n ≫ d²``. It is cheap (O(n d² + d³)) and has low variance, which makes
    it the most stable of the feature-space estimators.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    xs, xt = _pair(x_source, x_target)
    if xs.shape[0] < 2 or xt.shape[0] < 2:
        raise ValueError("gaussian_kl needs at least 2 samples on each side to fit a covariance")
    d = xs.shape[1]
    ridge = eps * np.eye(d)
    cov_s = np.atleast_2d(np.cov(xs, rowvar=False)) + ridge
    cov_t = np.atleast_2d(np.cov(xt, rowvar=False)) + ridge
    return gaussian_kl_closed_form(xs.mean(axis=0), cov_s, xt.mean(axis=0), cov_t)


def _kth_positive_distance(
    tree: Any, points: FloatArray, zeros: NDArray[np.int64], k: int
) -> FloatArray:
    """Distance from each point to its k-th neighbour in ``tree`` among those at distance > 0.

    ``zeros[i]`` is how many tree points coincide with ``points[i]``; those come first in the
    neighbour list, so the wanted neighbour has rank ``zeros[i] + k``. Points are grouped by that
    rank so that the usual no-duplicates case is a single query.
    """
    out = np.empty(points.shape[0], dtype=np.float64)
    ranks = zeros + k
    for rank in np.unique(ranks):
        idx = np.flatnonzero(ranks == rank)
        dist, _ = tree.query(points[idx], k=[int(rank)])
        out[idx] = dist[:, 0]
    return out


def knn_kl(x_source: ArrayLike, x_target: ArrayLike, k: int = 5) -> float:
    """k-nearest-neighbour KL(P_source || P_target) estimator of Wang, Kulkarni & Verdú (2009).

    Formula: ``D̂ = (d / n) Σ_i log(ν_k(i) / ρ_k(i)) + log(m / (n − 1))`` for source points
    ``x_1..x_n`` and ``m`` target points in ``R^d``, where ``ρ_k(i)`` is the Euclidean distance from
    ``x_i`` to its k-th nearest neighbour among the other source points and ``ν_k(i)`` the distance
    to its k-th nearest neighbour in the target sample (both via ``scipy.spatial.cKDTree``).

    Assumptions: both distributions have densities on ``R^d`` (continuous features); needs
    ``k < n`` and ``k <= m``.

    Duplicates: exact duplicate points (quantised pixels, repeated feature vectors, bootstrap
    resamples) give zero distances and an infinite log-ratio. Here ``ρ_k`` and ``ν_k`` are the
    distances to the k-th neighbour *at strictly positive distance* (coinciding points are skipped on
    both sides alike). On continuous data this is exactly the published estimator; on tied data it
    keeps the value finite but treats each atom as if it were spread out, so it under-states shift
    caused by atoms — prefer :func:`histogram_kl` for discrete data. If a point has fewer than ``k``
    neighbours at positive distance a ``ValueError`` is raised.

    Bias: consistent (asymptotically unbiased) as ``n, m → ∞`` with fixed ``k``, but biased at small
    ``n`` and increasingly in high dimension (the estimator relies on the density being locally
    constant within the k-NN ball, which fails when the balls are large); the estimate can be
    negative. If the data lie on a lower-dimensional manifold, the distance ratios scale with the
    intrinsic dimension, so the ambient ``d`` factor inflates the estimate. Larger ``k`` lowers
    variance and raises bias. Cost O((n + m) log(n + m)) in low ``d``; the tree degrades towards
    brute force above ~20 dimensions.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    xs, xt = _pair(x_source, x_target)
    n, d = xs.shape
    m = xt.shape[0]
    if n < k + 1 or m < k:
        raise ValueError(
            f"knn_kl with k={k} needs n > k source and m >= k target points (n={n}, m={m})"
        )

    # Count exact coincidences by grouping identical rows; adding 0.0 turns -0.0 into 0.0, which
    # are the same point but differ bitwise and would otherwise land in different groups.
    pooled = np.vstack([xs, xt]) + 0.0
    _, group = np.unique(pooled, axis=0, return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1
    src_mult = np.bincount(group[:n], minlength=n_groups)
    tgt_mult = np.bincount(group[n:], minlength=n_groups)
    zeros_in_source = src_mult[group[:n]].astype(np.int64)  # includes the point itself
    zeros_in_target = tgt_mult[group[:n]].astype(np.int64)
    if np.any(n - zeros_in_source < k) or np.any(m - zeros_in_target < k):
        raise ValueError(
            f"knn_kl: some source points have fewer than k={k} distinct neighbours (too many "
            "duplicate rows); use a smaller k or a discrete estimator such as histogram_kl"
        )

    rho = _kth_positive_distance(cKDTree(xs), xs, zeros_in_source, k)
    nu = _kth_positive_distance(cKDTree(xt), xs, zeros_in_target, k)
    return float(d * np.mean(np.log(nu / rho)) + math.log(m / (n - 1)))


def _subsample(x: FloatArray, max_n: int | None, rng: np.random.Generator) -> FloatArray:
    if max_n is None or x.shape[0] <= max_n:
        return x
    return x[rng.choice(x.shape[0], size=max_n, replace=False)]


def mmd_rbf(
    x: ArrayLike,
    y: ArrayLike,
    bandwidth: float | None = None,
    max_n: int | None = 2000,
    seed: int = 0,
) -> float:
    """Squared maximum mean discrepancy with an RBF kernel, unbiased U-statistic estimate.

    Formula: with ``k(a, b) = exp(−‖a − b‖² / (2 σ²))``,
    ``MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_{i,j} k(x_i, y_j)``.

    Bandwidth: ``σ = bandwidth``, or when ``None`` the median heuristic: the median pairwise
    Euclidean distance of the pooled (subsampled) sample; if more than half the pairs coincide, the
    median of the non-zero distances. Note that the median heuristic adapts to each pair of samples,
    so values computed with it are comparable only approximately across pairs; pass a fixed
    ``bandwidth`` for strict comparisons.

    Cost: O((n + m)² d) time and memory, so each side is subsampled without replacement to at most
    ``max_n`` points (``None`` = all) with ``numpy.random.default_rng(seed)``; the result is then
    deterministic for a given seed.

    Behaviour: a distance between kernel mean embeddings, not a KL (symmetric, bounded by 2 for the
    RBF kernel). The unbiased estimate has mean exactly 0 when both samples come from the same
    distribution, so it is often slightly negative (order ``1/n``); do not clip it before averaging.
    Needs at least 2 points per side.
    """
    xs, ys = _pair(x, y)
    if max_n is not None and max_n < 2:
        raise ValueError(f"max_n must be >= 2 or None, got {max_n!r}")
    rng = np.random.default_rng(seed)
    xs = _subsample(xs, max_n, rng)
    ys = _subsample(ys, max_n, rng)
    n, m = xs.shape[0], ys.shape[0]
    if n < 2 or m < 2:
        raise ValueError("mmd_rbf needs at least 2 samples on each side")

    dxx = cdist(xs, xs, "sqeuclidean")
    dyy = cdist(ys, ys, "sqeuclidean")
    dxy = cdist(xs, ys, "sqeuclidean")
    if bandwidth is None:
        # The pooled sample's pairwise distances are the within-x, within-y and cross blocks.
        pooled_sq = np.concatenate(
            [dxx[np.triu_indices(n, 1)], dyy[np.triu_indices(m, 1)], dxy.ravel()]
        )
        median_sq = float(np.median(pooled_sq))
        if median_sq <= 0:
            positive = pooled_sq[pooled_sq > 0]
            if positive.size == 0:
                return 0.0  # every point is identical: the two samples are the same distribution
            median_sq = float(np.median(positive))
        sigma2 = median_sq
    else:
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
        sigma2 = float(bandwidth) ** 2

    gamma = 1.0 / (2.0 * sigma2)
    kxx = np.exp(-gamma * dxx)
    kyy = np.exp(-gamma * dyy)
    kxy = np.exp(-gamma * dxy)
    # The diagonals are k(x_i, x_i) = 1; excluding them is what makes the estimate unbiased.
    term_xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    term_xy = kxy.sum() / (n * m)
    return float(term_xx + term_yy - 2.0 * term_xy)


def proxy_a_distance(
    x_source: ArrayLike,
    x_target: ArrayLike,
    seed: int = 0,
    n_folds: int = 5,
    max_n: int | None = 5000,
) -> float:
    """Proxy A-distance (Ben-David et al.): how well a linear classifier tells the domains apart.

    Formula: ``PAD = 2 (1 − 2 ε)`` clipped to ``[0, 2]``, where ``ε`` is the held-out error of a
    domain classifier (scikit-learn ``LogisticRegression`` on standardised features) trained to
    predict source (0) vs target (1).

    Protocol: classes are balanced by subsampling the larger side without replacement (and each side
    to at most ``max_n`` rows, to bound cost); ``ε`` is the out-of-fold error of stratified
    ``n_folds``-fold cross-validation (shuffled with ``seed``), with the scaler fitted on each
    training fold only. Everything is seeded, so the value is deterministic. Inputs of any shape are
    flattened per row.

    Behaviour: 0 = indistinguishable to a linear model (chance error 0.5; worse-than-chance error
    from noise is clipped to 0), 2 = perfectly separable. It is a lower bound on the true
    A-distance (only linear classifiers are searched) and is noisy for small samples (error of
    ``ε`` about ``sqrt(ε(1 − ε) / 2n)``). On raw pixels it saturates at about 2 for essentially any
    cross-dataset pair: a linear model finds trivial cues (normalisation statistics, borders, colour
    cast, resolution artefacts) that separate the data sets perfectly, so it carries no information
    about transfer there; this is why the pipeline also measures it on learned features.
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    n_folds = int(n_folds)
    xs, xt = _pair(x_source, x_target)
    rng = np.random.default_rng(seed)
    n_each = min(xs.shape[0], xt.shape[0])
    if max_n is not None:
        n_each = min(n_each, int(max_n))
    if n_each < n_folds:
        raise ValueError(
            f"proxy_a_distance needs at least n_folds={n_folds} samples per domain, got {n_each}"
        )
    xs = _subsample(xs, n_each, rng)
    xt = _subsample(xt, n_each, rng)
    features = np.vstack([xs, xt])
    labels = np.concatenate([np.zeros(n_each, dtype=int), np.ones(n_each, dtype=int)])

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, features, labels, cv=folds)
    error = float(np.mean(predicted != labels))
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))


# --------------------------------------------------------------------------- uncertainty and analysis


def bootstrap_ci(
    stat_fn: Callable[[Any, Any], float],
    x_source: ArrayLike,
    x_target: ArrayLike,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    max_n: int | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` confidence interval for ``stat_fn(x_source, x_target)``.

    Method: ``n_boot`` times, resample the rows (first axis) of each sample independently with
    replacement, using ``numpy.random.default_rng(seed)``, and evaluate ``stat_fn`` on the pair; the
    interval is the ``alpha/2`` and ``1 − alpha/2`` quantiles of the replicates. With ``max_n`` each
    resample draws ``min(n, max_n)`` rows (an m-out-of-n bootstrap), which bounds the cost of
    expensive statistics but widens the interval, since the statistic is then evaluated at a smaller
    sample size.

    Assumptions and caveats: rows are i.i.d. (resample whole images or documents, not pixels of one
    image, if those are correlated). The percentile interval inherits the estimator's bias: for
    plug-in divergences biased upward at finite n, the replicates are shifted too, and the interval
    can miss the point estimate at small n. Resampling with replacement creates exact duplicate
    rows, which estimators based on nearest-neighbour distances (:func:`knn_kl`) handle only
    approximately. Replicates where ``stat_fn`` returns NaN/inf are dropped; if none is finite the
    result is ``(nan, nan)``.
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if max_n is not None and max_n < 1:
        raise ValueError(f"max_n must be >= 1 or None, got {max_n!r}")
    xs = np.asarray(x_source)
    xt = np.asarray(x_target)
    if xs.ndim == 0 or xt.ndim == 0 or xs.shape[0] == 0 or xt.shape[0] == 0:
        raise ValueError("bootstrap_ci needs non-empty samples with rows along the first axis")
    n_s, n_t = xs.shape[0], xt.shape[0]
    size_s = n_s if max_n is None else min(n_s, int(max_n))
    size_t = n_t if max_n is None else min(n_t, int(max_n))
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        idx_s = rng.integers(0, n_s, size=size_s)
        idx_t = rng.integers(0, n_t, size=size_t)
        stats[b] = float(stat_fn(xs[idx_s], xt[idx_t]))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(lo), float(hi))


def correlations(x: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """Spearman and Pearson correlation (with two-sided p-values) between paired values.

    Returns ``{"spearman", "spearman_p", "pearson", "pearson_p"}`` from ``scipy.stats.spearmanr``
    and ``scipy.stats.pearsonr``. Typical use: x = a shift measure per target, y = transfer gain.

    Behaviour: pairs where either value is NaN/inf are dropped first (a failed run must not abort
    the analysis). With fewer than 3 remaining pairs, or a constant ``x`` or ``y`` (correlation
    undefined), every value is NaN instead of raising. Spearman measures monotone association
    (robust to outliers and to the scale of the shift measure), Pearson linear association; with
    the handful of targets typical of a transfer study the p-values are weak evidence either way.
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    nan = {"spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan, "pearson_p": math.nan}
    if xa.size < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return nan
    spearman = spearmanr(xa, ya)
    pearson = pearsonr(xa, ya)
    return {
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
    }
