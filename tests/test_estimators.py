"""Acceptance tests for the shift estimators, checked against closed forms and hand-computed values.

Tolerances for the sampled estimators were chosen from their spread over many seeds (see the
comments at each test), so that they are tight enough to catch a wrong formula yet do not depend on
a lucky seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferlab.shift.estimators import (
    bootstrap_ci,
    correlations,
    gaussian_kl,
    gaussian_kl_closed_form,
    histogram_js,
    histogram_kl,
    js_divergence,
    kl_divergence,
    knn_kl,
    mmd_rbf,
    proxy_a_distance,
    row_histograms,
    smooth_counts,
    smoothed_histogram,
    topk_overlap,
    unigram_distribution,
    unigram_kl,
)

LOG2 = math.log(2.0)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- discrete KL / JS


def test_kl_divergence_hand_three_bins() -> None:
    # 0.5 ln(0.5/0.25) + 0.25 ln(1) + 0.25 ln(0.25/0.5) = 0.25 ln 2
    p = [0.5, 0.25, 0.25]
    q = [0.25, 0.25, 0.5]
    assert kl_divergence(p, q) == pytest.approx(0.25 * LOG2, rel=1e-12)
    # Counts are normalised first, so unnormalised inputs give the same value.
    assert kl_divergence([2, 1, 1], [1, 1, 2]) == pytest.approx(0.25 * LOG2, rel=1e-12)
    # Zero mass in p contributes nothing (0 log 0 = 0).
    assert kl_divergence([1, 0, 0], [0.5, 0.5, 0]) == pytest.approx(LOG2, rel=1e-12)


def test_kl_divergence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="q is zero where p > 0"):
        kl_divergence([0.5, 0.5, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="negative"):
        kl_divergence([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="sums to zero"):
        kl_divergence([0.0, 0.0], [0.5, 0.5])


def test_kl_nonnegative_on_random_pairs_and_zero_on_identical() -> None:
    rng = _rng(1)
    for _ in range(200):
        p = rng.dirichlet(np.full(16, 0.5))
        q = rng.dirichlet(np.full(16, 0.5))
        assert kl_divergence(p, q) >= 0.0
        assert kl_divergence(p, p) < 1e-12
    for _ in range(50):
        a = rng.beta(2, 5, size=rng.integers(10, 500))
        b = rng.beta(5, 2, size=rng.integers(10, 500))
        assert histogram_kl(a, b) >= 0.0
        assert histogram_kl(b, a) >= 0.0


def test_histogram_kl_identical_samples_is_exactly_zero() -> None:
    x = _rng(2).random((20, 8, 8))
    assert histogram_kl(x, x.copy()) == 0.0
    assert histogram_js(x, x.copy()) == 0.0


def test_smoothed_histogram_hand_example() -> None:
    # counts [2, 1] over bins [0, 0.5), [0.5, 1]; +1 each -> [3, 2] / 5
    h = smoothed_histogram([0.1, 0.2, 0.9], bins=2, range_=(0.0, 1.0), alpha=1.0)
    np.testing.assert_allclose(h, [0.6, 0.4])
    # Out-of-range values are clipped into the edge bins, not dropped.
    h = smoothed_histogram([-0.5, 0.2, 1.7], bins=2, range_=(0.0, 1.0), alpha=0.0)
    np.testing.assert_allclose(h, [2 / 3, 1 / 3])
    # Smoothing leaves no empty bin.
    h = smoothed_histogram(np.zeros(100), bins=10, range_=(0.0, 1.0))
    assert np.all(h > 0) and h.sum() == pytest.approx(1.0)


def test_row_histograms_sum_to_numpy_histogram_including_bin_edges() -> None:
    # Pixel values k/255 land exactly on many of the 64 bin edges: the per-row counts must bin
    # them as numpy.histogram does, or the bootstrap intervals would describe another histogram.
    x = _rng(3).integers(0, 256, size=(50, 784)) / 255.0
    x[0, :3] = [0.0, 1.0, 0.5]
    for bins in (7, 32, 64):
        rows = row_histograms(x, bins)
        assert rows.shape == (50, bins) and (rows.sum(axis=1) == 784).all()
        counts, _ = np.histogram(x.ravel(), bins=bins, range=(0.0, 1.0))
        assert np.array_equal(rows.sum(axis=0), counts)
    idx = _rng(4).integers(0, 50, size=50)
    direct = smoothed_histogram(x[idx], 64, (0.0, 1.0), alpha=1.0)
    assert np.array_equal(smooth_counts(row_histograms(x, 64)[idx].sum(axis=0), 1.0), direct)


def test_histogram_kl_matches_hand_computation() -> None:
    src = [0.1, 0.1, 0.1, 0.9]  # counts [3, 1] -> smoothed [4, 2] / 6
    tgt = [0.1, 0.9, 0.9, 0.9]  # counts [1, 3] -> smoothed [2, 4] / 6
    expected = (4 / 6) * math.log(2.0) + (2 / 6) * math.log(0.5)
    assert histogram_kl(src, tgt, bins=2) == pytest.approx(expected, rel=1e-12)


def test_js_symmetric_and_bounded() -> None:
    rng = _rng(3)
    for _ in range(100):
        p = rng.dirichlet(np.full(12, 0.3))
        q = rng.dirichlet(np.full(12, 0.3))
        js = js_divergence(p, q)
        assert js == pytest.approx(js_divergence(q, p), abs=1e-15)
        assert 0.0 <= js <= LOG2
    # Disjoint supports reach the bound; zeros need no smoothing.
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(LOG2, rel=1e-12)
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0
    a, b = rng.random(1000) * 0.5, 0.5 + rng.random(1000) * 0.5
    assert histogram_js(a, b) == pytest.approx(histogram_js(b, a), abs=1e-15)


# --------------------------------------------------------------------------- tokens


def test_unigram_kl_hand_example() -> None:
    # vocab 3, alpha 1: source counts [2, 1, 0] -> [3, 2, 1] / 6; target [0, 2, 1] -> [1, 3, 2] / 6
    source = [0, 0, 1]
    target = [1, 1, 2]
    np.testing.assert_allclose(unigram_distribution(source, 3), np.array([3, 2, 1]) / 6)
    expected = 3 / 6 * math.log(3.0) + 2 / 6 * math.log(2 / 3) + 1 / 6 * math.log(1 / 2)
    assert unigram_kl(source, target, vocab_size=3) == pytest.approx(expected, rel=1e-12)
    # Same distributions from a counts vector and from a {token: count} mapping.
    assert unigram_kl([2, 1, 0], [0, 2, 1], 3, counts=True) == pytest.approx(expected, rel=1e-12)
    assert unigram_kl({0: 2, 1: 1}, {1: 2, 2: 1}, 3) == pytest.approx(expected, rel=1e-12)
    assert unigram_kl(source, source, 3) == 0.0


def test_unigram_rejects_out_of_vocab_ids() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        unigram_distribution([0, 1, 3], vocab_size=3)


def test_topk_overlap_hand_example() -> None:
    source = [0, 0, 0, 1, 1, 2, 3]  # ranking 0, 1, then 2 and 3 tied
    target = [2, 2, 2, 0, 0, 4, 1]  # ranking 2, 0, then 1 and 4 tied
    assert topk_overlap(source, target, k=1) == 0.0  # {2} vs {0}
    assert topk_overlap(source, target, k=2) == 0.5  # {2, 0} vs {0, 1}
    # k=3: target {2, 0, 1} (tie 1/4 -> smaller id 1), source {0, 1, 2} (tie 2/3 -> 2): all shared
    assert topk_overlap(source, target, k=3) == 1.0
    # Fewer distinct tokens than k: the set is all tokens present.
    assert topk_overlap([7, 7, 8], [8], k=10) == 1.0
    with pytest.raises(ValueError):
        topk_overlap([], [1], k=1)


# --------------------------------------------------------------------------- Gaussian KL


def test_gaussian_closed_form_matches_1d_hand_formula() -> None:
    for mu0, s0, mu1, s1 in [(0.0, 1.0, 1.0, 2.0), (-0.7, 0.3, 2.5, 1.1), (3.0, 2.0, 3.0, 0.5)]:
        hand = math.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5
        got = gaussian_kl_closed_form([mu0], [[s0**2]], [mu1], [[s1**2]])
        assert got == pytest.approx(hand, rel=1e-12)
    # Identical Gaussians: zero; d-dimensional isotropic shift: |Δμ|² / 2.
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert gaussian_kl_closed_form([1, 2], cov, [1, 2], cov) < 1e-12
    shift = np.array([0.6, -0.8])
    assert gaussian_kl_closed_form(np.zeros(2), np.eye(2), shift, np.eye(2)) == pytest.approx(0.5)


def test_gaussian_closed_form_rejects_non_pd() -> None:
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_kl_closed_form([0, 0], [[1, 2], [2, 1]], [0, 0], np.eye(2))


def _four_dim_params() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu0 = np.array([0.0, 0.5, -0.3, 1.0])
    mu1 = np.array([0.4, -0.2, 0.1, 0.6])
    a = np.array([[1.0, 0.3, 0, 0], [0.2, 0.8, 0.1, 0], [0, 0.4, 1.2, 0.2], [0.1, 0, 0.3, 0.9]])
    b = np.array([[1.3, 0, 0.2, 0], [0.5, 1.0, 0, 0.1], [0, 0.2, 0.7, 0], [0.3, 0, 0.4, 1.1]])
    return mu0, a @ a.T, mu1, b @ b.T  # two different non-diagonal SPD covariances


def test_gaussian_kl_on_samples_within_5_percent_of_analytic() -> None:
    # Analytic value ≈ 1.620 nats. Over 20 seeds the relative error at n = 5000 had mean +0.5 %
    # and standard deviation ≈ 2 % (largest 4.8 %); seed 0 gives ≈ −2.7 %.
    mu0, cov0, mu1, cov1 = _four_dim_params()
    analytic = gaussian_kl_closed_form(mu0, cov0, mu1, cov1)
    rng = _rng(0)
    xs = rng.multivariate_normal(mu0, cov0, size=5000)
    xt = rng.multivariate_normal(mu1, cov1, size=5000)
    estimate = gaussian_kl(xs, xt)
    assert estimate == pytest.approx(analytic, rel=0.05)


def test_gaussian_kl_identical_samples_is_zero() -> None:
    x = _rng(4).normal(size=(300, 6))
    assert gaussian_kl(x, x.copy()) < 1e-12
    # Constant features (singular covariance) stay finite thanks to the ridge.
    x[:, 0] = 0.5
    assert math.isfinite(gaussian_kl(x, x[::-1].copy()))


# --------------------------------------------------------------------------- kNN KL


def test_knn_kl_2d_within_15_percent_of_analytic() -> None:
    # Analytic value ≈ 0.426 nats. Over 50 seeds at n = m = 5000, k = 5 the relative error had
    # mean +0.3 % and standard deviation ≈ 4.5 % (largest 10.9 %), so 15 % is > 3 sigma.
    mu0, cov0 = np.zeros(2), np.array([[1.0, 0.4], [0.4, 1.0]])
    mu1, cov1 = np.array([1.0, 0.0]), np.array([[1.5, 0.3], [0.3, 1.2]])
    analytic = gaussian_kl_closed_form(mu0, cov0, mu1, cov1)
    rng = _rng(0)
    xs = rng.multivariate_normal(mu0, cov0, size=5000)
    xt = rng.multivariate_normal(mu1, cov1, size=5000)
    assert knn_kl(xs, xt, k=5) == pytest.approx(analytic, rel=0.15)


def test_knn_kl_1d_within_15_percent_of_analytic() -> None:
    # KL(N(0, 1) || N(1, 2²)) = ln 2 + 2/8 − ½ ≈ 0.443; 1-D input is n scalar samples.
    rng = _rng(0)
    analytic = math.log(2.0) + (1 + 1) / 8 - 0.5
    estimate = knn_kl(rng.normal(0.0, 1.0, 5000), rng.normal(1.0, 2.0, 5000), k=5)
    assert estimate == pytest.approx(analytic, rel=0.15)


def test_knn_kl_same_distribution_near_zero_and_handles_duplicates() -> None:
    rng = _rng(5)
    xs = rng.normal(size=(2000, 2))
    xt = rng.normal(size=(2000, 2))
    assert abs(knn_kl(xs, xt)) < 0.05
    # Duplicated rows (within the source and shared with the target) would give zero distances;
    # the estimator skips coinciding neighbours, so the value stays finite and close.
    dup_s = np.vstack([xs, xs[:200]])
    dup_t = np.vstack([xt, xs[:100]])
    value = knn_kl(dup_s, dup_t)
    assert math.isfinite(value) and abs(value) < 0.1
    # -0.0 and 0.0 are the same point.
    value = knn_kl(np.array([[0.0], [-0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [1.5]]), k=1)
    assert math.isfinite(value)
    with pytest.raises(ValueError, match="distinct neighbours"):
        knn_kl(np.ones((10, 2)), xt, k=3)


# --------------------------------------------------------------------------- MMD


def test_mmd_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    rng = _rng(6)
    x = rng.normal(size=(800, 3))
    y = rng.normal(size=(800, 3))
    shifted = rng.normal(size=(800, 3)) + np.array([1.0, 0.0, 0.0])
    same = mmd_rbf(x, y)
    moved = mmd_rbf(x, shifted)
    assert abs(same) < 0.01
    assert moved > 0.05
    assert moved > 10 * abs(same)
    # Fixed bandwidth and symmetry of the statistic.
    assert mmd_rbf(x, shifted, bandwidth=1.0) == pytest.approx(mmd_rbf(shifted, x, bandwidth=1.0))


def test_mmd_subsampling_is_seeded() -> None:
    rng = _rng(7)
    x = rng.normal(size=(600, 2))
    y = rng.normal(size=(600, 2)) + 0.5
    assert mmd_rbf(x, y, max_n=200, seed=3) == mmd_rbf(x, y, max_n=200, seed=3)
    assert mmd_rbf(x, y, max_n=200, seed=3) != mmd_rbf(x, y, max_n=200, seed=4)
    assert mmd_rbf(np.zeros((5, 2)), np.zeros((5, 2))) == 0.0


# --------------------------------------------------------------------------- proxy A-distance


def test_proxy_a_distance_same_vs_separated() -> None:
    rng = _rng(8)
    x = rng.normal(size=(400, 10))
    y = rng.normal(size=(400, 10))
    far = rng.normal(size=(300, 10)) + 3.0  # also exercises balancing (400 vs 300)
    assert proxy_a_distance(x, y) < 0.3
    assert proxy_a_distance(x, far) > 1.8
    # Image-shaped input is flattened per row.
    imgs_a = rng.random((200, 1, 4, 4))
    imgs_b = rng.random((200, 1, 4, 4)) * 0.5 + 0.5
    assert proxy_a_distance(imgs_a, imgs_b) > 1.0
    assert 0.0 <= proxy_a_distance(imgs_a, imgs_a[::-1].copy()) <= 2.0


# --------------------------------------------------------------------------- bootstrap / correlations


def test_bootstrap_ci_contains_point_estimate() -> None:
    rng = _rng(9)
    xs = rng.beta(2.0, 5.0, size=20000)
    xt = rng.beta(2.5, 4.0, size=20000)
    point = histogram_kl(xs, xt)
    lo, hi = bootstrap_ci(histogram_kl, xs, xt, n_boot=200, seed=0)
    assert lo <= point <= hi
    assert lo < hi
    assert bootstrap_ci(histogram_kl, xs, xt, n_boot=50, seed=1) == bootstrap_ci(
        histogram_kl, xs, xt, n_boot=50, seed=1
    )
    # Row resampling for (n, d) samples with a feature-space statistic and capped resample size.
    fs = rng.normal(size=(500, 3))
    ft = rng.normal(size=(400, 3)) + 0.5
    lo, hi = bootstrap_ci(gaussian_kl, fs, ft, n_boot=100, max_n=300)
    assert lo <= gaussian_kl(fs, ft) <= hi


def test_correlations_monotone_and_degenerate() -> None:
    x = np.arange(1.0, 9.0)
    out = correlations(x, np.exp(x))  # monotone but not linear
    assert set(out) == {"spearman", "spearman_p", "pearson", "pearson_p"}
    assert out["spearman"] == pytest.approx(1.0)
    assert 0.0 < out["pearson"] < 1.0
    assert out["spearman_p"] < 0.01
    assert correlations(x, -x)["pearson"] == pytest.approx(-1.0)
    for bad in (correlations([1.0, 2.0], [3.0, 4.0]), correlations(x, np.ones_like(x))):
        assert all(math.isnan(v) for v in bad.values())
    # Non-finite pairs are dropped, not propagated.
    y = np.exp(x)
    y[2] = np.nan
    assert correlations(x, y)["spearman"] == pytest.approx(1.0)
