"""The study's answers: graded corruptions, correlation intervals, and the generated Findings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from transferlab import findings
from transferlab.data.corruptions import NOISE_SIGMA, contrast, corrupt, gaussian_noise
from transferlab.shift.measures import correlation_ci, correlation_table


# ------------------------------------------------------------------------------ corruptions
def test_gaussian_noise_has_the_imagenet_c_sigma_of_its_severity() -> None:
    x = np.full((200, 1, 28, 28), 128, dtype=np.uint8)  # mid-grey: clipping at < 0.5 % of pixels
    for sev in (1, 2, 3):
        y = gaussian_noise(x, sev, np.random.default_rng(0))
        sd = (y.astype(float) / 255).std()
        assert sd == pytest.approx(NOISE_SIGMA[sev - 1], rel=0.02)


def test_contrast_keeps_each_image_mean_and_scales_deviations() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(60, 200, size=(5, 1, 28, 28)).astype(np.uint8)
    y = contrast(x, 1, rng).astype(float)  # c = 0.4
    xf = x.astype(float)
    m = xf.mean(axis=(-2, -1), keepdims=True)
    assert np.abs(y - ((xf - m) * 0.4 + m)).max() <= 0.5 + 1e-9  # up to uint8 rounding


def test_unknown_corruption_and_severity_are_refused() -> None:
    x = np.zeros((1, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown corruption 'fog'; allowed: gaussian_noise"):
        corrupt(x, "fog", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity 6 is not one of"):
        corrupt(x, "contrast", 6, np.random.default_rng(0))


# ---------------------------------------------------------------------- correlation intervals
def test_correlation_interval_without_seed_noise_of_a_monotone_trend_is_one() -> None:
    values = np.arange(6, dtype=float)
    gains = [[-0.1 * i] * 3 for i in range(6)]  # every seed agrees: a strictly falling gain
    ci = correlation_ci(values, gains, n_boot=300, seed=0)
    assert ci["spearman_ci"] == [-1.0, -1.0]


def test_correlation_interval_covers_the_estimate_and_widens_with_seed_noise() -> None:
    rng = np.random.default_rng(3)
    values = np.linspace(0, 1, 10)
    quiet = [list(-v + rng.normal(0, 0.01, 3)) for v in values]
    noisy = [list(-v + rng.normal(0, 0.8, 3)) for v in values]
    q = correlation_ci(values, quiet, n_boot=500, seed=0)["spearman_ci"]
    n = correlation_ci(values, noisy, n_boot=500, seed=0)["spearman_ci"]
    rho = stats.spearmanr(values, [np.mean(g) for g in noisy]).statistic
    assert n[0] <= rho <= n[1]
    assert n[1] - n[0] > q[1] - q[0]
    assert q[1] < 0  # a clear trend stays resolved


def test_correlation_table_gives_no_interval_with_too_few_targets() -> None:
    rows = {t: {"m": float(i), "gain": -i, "gain_per_seed": [-i, -i]} for i, t in enumerate("abc")}
    c = correlation_table(rows, ["m"], n_boot=200, seed=0)["m"]
    assert c["spearman"] == pytest.approx(-1.0)
    assert c["spearman_ci"] == [None, None]  # 3 targets: most resamples repeat one


# ---------------------------------------------------------------------------- the Findings
def _row(per_seed: list[float]) -> dict[str, Any]:
    m = float(np.mean(per_seed))
    half = 0.05
    return {
        "test/acc": m,
        "ci": {"test/acc": [m - half, m + half]},
        "per_seed": {"test/acc": per_seed},
    }


def _report(a: list[float], b: list[float]) -> dict[str, Any]:
    """One labelled target whose two probes score ``a`` and ``b`` per seed."""
    entry = {
        "pretrained": _row([0.6, 0.62, 0.61]),
        "scratch": _row([0.5, 0.52, 0.5]),
        "mae/linear_probe": _row(a),
        "contrastive/linear_probe": _row(b),
        "gain": 0.1,
        "gain_ci": [0.08, 0.12],
        "gain_resolved": True,
        "gains": {},
        "gain_intervals": {},
    }
    ev = {"primary_objective": "mae", "targets": {"fmnist": entry}}
    return {"image": {"evaluate": ev}}


def test_overlapping_probes_are_not_resolved() -> None:
    found = findings.build(_report([0.70, 0.60, 0.66], [0.65, 0.66, 0.64]))
    best = next(f for f in found if f.question == "best objective")
    assert not best.resolved
    assert "not resolved at this budget" in best.text
    assert "`mae/linear_probe` (0.653" in best.text  # the leader is still named, with numbers
    d = best.numbers["comparison"]["diff"]
    assert d["lo"] < 0 < d["hi"]


def test_a_clear_winner_is_named_with_its_paired_interval() -> None:
    found = findings.build(_report([0.60, 0.62, 0.61], [0.70, 0.73, 0.71]))
    best = next(f for f in found if f.question == "best objective")
    assert best.resolved and "not resolved" not in best.text.split(" Its probe")[0]
    assert best.text.startswith("Best objective on **fmnist** (linear probe): `contrastive")
    diff = best.numbers["comparison"]["diff"]
    expect = stats.ttest_rel([0.70, 0.73, 0.71], [0.60, 0.62, 0.61]).confidence_interval(0.95)
    assert [diff["lo"], diff["hi"]] == pytest.approx([expect.low, expect.high])
    md = "\n".join(findings.markdown(found))
    assert md.startswith("## Findings") and "**image: best objective**" in md


def test_remedy_and_shift_family_sentences_follow_the_numbers() -> None:
    rep = _report([0.6, 0.61, 0.62], [0.5, 0.5, 0.5])
    ev = rep["image"]["evaluate"]["targets"]["fmnist"]
    ev["mae/lp_ft"] = _row([0.70, 0.71, 0.72])  # +0.10 on every seed: helps
    rep["image"]["shift"] = {
        "families": {
            "fmnist_gaussian_noise": {
                "targets": ["fmnist", "fmnist_gaussian_noise1"],
                "severities": [0, 1],
                "gains": {"fmnist": 0.1, "fmnist_gaussian_noise1": 0.05},
                "gain_intervals": {"fmnist": [0.0, 0.2], "fmnist_gaussian_noise1": [-0.1, 0.2]},
                "severity_gain": {"spearman": -1.0, "spearman_ci": [-1.0, 0.4]},
            }
        }
    }
    found = findings.build(rep)
    remedy = next(f for f in found if f.question == "remedy")
    assert remedy.text.startswith("`mae/lp_ft` vs full fine-tuning of `mae`: helps on fmnist")
    family = next(f for f in found if f.question == "gain along the shift axis")
    assert not family.resolved and "with severity: not resolved at this budget" in family.text


def test_the_primarys_verdict_is_its_own_not_its_probes() -> None:
    rep = _report([0.70, 0.71, 0.72], [0.6, 0.6, 0.6])
    e = rep["image"]["evaluate"]["targets"]["fmnist"]
    e.update(gain=-0.02, gain_ci=[-0.13, 0.08], gain_resolved=False)  # primary: unresolved
    e["gains"] = {"mae/linear_probe": 0.2}  # its probe: resolved, above its floor
    e["gain_intervals"] = {"mae/linear_probe": {"lo": 0.1, "hi": 0.3, "resolved": True}}
    e["controls"] = {"mae/linear_probe": "floor/random_init"}
    (f,) = [f for f in findings.build(rep) if f.question == "does pre-training help"]
    assert "vs scratch -0.020 [-0.130, +0.080]: not resolved at this budget." in f.text
    assert "`mae/linear_probe` vs `floor/random_init` +0.200 [+0.100, +0.300]: above" in f.text
