"""The shift measures the shift-analysis stage reports per target, with bootstrap intervals.

Each measure is an estimator from :mod:`transferlab.shift.estimators` applied to one
representation; the table below is written into ``shift.json`` so every number names its
estimator. Input space uses raw values (pixel intensities, or token ids for text); feature space
uses the primary backbone's pooled features.
"""

from __future__ import annotations

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


def correlation_table(
    rows: Mapping[str, Mapping[str, Any]], measures: list[str]
) -> dict[str, dict[str, float | None]]:
    """Spearman and Pearson correlation of each measure with ``gain`` across targets."""
    names = [t for t, r in rows.items() if r.get("gain") is not None]
    gains = np.array([rows[t]["gain"] for t in names], dtype=float)
    out = {}
    for m in measures:
        values = np.array(
            [np.nan if rows[t].get(m) is None else rows[t][m] for t in names], dtype=float
        )
        corr = est.correlations(values, gains)
        out[m] = {k: (None if not np.isfinite(v) else round(float(v), 6)) for k, v in corr.items()}
    return out
