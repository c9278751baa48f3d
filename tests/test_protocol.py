"""The comparison protocol: intervals over seeds, paired gains, learning-rate selection, failed
fits, and the linear probe (a logistic regression on frozen features)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transferlab.finetune.probe import fit_probe
from transferlab.stats import failed, mean_ci, paired_gain, resolved, select_lr, underfit


def test_mean_ci_is_scipy_t_interval_on_a_hand_case() -> None:
    x = [0.71, 0.74, 0.69, 0.80]
    ci = mean_ci(x, 0.95)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert ci["mean"] == pytest.approx(0.735)
    assert (ci["lo"], ci["hi"]) == pytest.approx((lo, hi), abs=1e-12)
    # by hand: sd = 0.04796, t_{0.975,3} = 3.1824 -> half-width 0.07632
    assert ci["hi"] - ci["mean"] == pytest.approx(3.182446 * 0.0479583 / 2, abs=1e-5)


def test_mean_ci_edges() -> None:
    assert mean_ci([0.5])["lo"] is None  # one seed: no interval
    same = mean_ci([0.5, 0.5, 0.5])
    assert same["lo"] == same["hi"] == 0.5
    clipped = mean_ci([0.99, 1.0, 0.9], bounds=(0.0, 1.0))
    assert clipped["hi"] == 1.0 and clipped["lo"] < clipped["mean"]


def test_paired_gain_uses_per_seed_differences() -> None:
    # Constructed: the arms differ a lot between seeds (the seed's few-shot draw is hard or easy)
    # but b beats a by 0.02 +- 0.005 on every seed: the paired gain is resolved, while the
    # unpaired intervals of the two arms overlap.
    base = np.array([0.60, 0.80, 0.70, 0.90])
    a = base + np.array([0.02, 0.025, 0.015, 0.02])
    g = paired_gain(a, base)
    d = a - base
    lo, hi = st.t.interval(0.95, 3, loc=d.mean(), scale=st.sem(d))
    assert g["mean"] == pytest.approx(0.02)
    assert (g["lo"], g["hi"]) == pytest.approx((lo, hi))
    assert g["resolved"] is True
    ca, cb = mean_ci(a), mean_ci(base)
    assert ca["lo"] < cb["hi"]  # unpaired intervals overlap: only the paired test resolves it


def test_gain_whose_interval_contains_zero_is_unresolved() -> None:
    g = paired_gain([0.71, 0.69, 0.72], [0.70, 0.70, 0.70])
    assert g["lo"] < 0 < g["hi"] and g["resolved"] is False
    assert resolved({"lo": None, "hi": None}) is False
    with pytest.raises(ValueError, match="same seeds"):
        paired_gain([0.1, 0.2], [0.1])


def test_select_lr_is_argmax_of_seed_mean_val_accuracy() -> None:
    val = {0.001: [0.70, 0.90], 0.003: [0.85, 0.80], 0.01: [0.95, 0.40]}
    # per-seed maxima would pick 0.01 (seed 0) or 0.001 (seed 1); the mean picks 0.003
    assert select_lr(val) == 0.003
    assert select_lr({0.01: [0.8], 0.001: [0.8]}) == 0.001  # tie: the smaller rate
    assert select_lr({0.1: [math.nan], 0.01: [0.2]}) == 0.01  # a diverged rate never wins


def test_underfit_flags_fits_below_the_threshold_only() -> None:
    assert underfit(0.85, 0.9) and not underfit(0.9, 0.9) and not underfit(0.97, 0.9)
    assert not underfit(None, 0.9) and not underfit(math.nan, 0.9)  # those are failed fits


def test_failed_flags_chance_level_and_diverged_fits() -> None:
    assert failed(0.55, 2, 0.1)  # within 0.1 of chance (0.5)
    assert not failed(0.65, 2, 0.1)
    assert failed(0.12, 10, 0.1) and not failed(0.95, 10, 0.1)
    assert failed(None, 3, 0.1) and failed(math.nan, 3, 0.1)


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2
    y = np.arange(n) % k
    return centres[y] + rng.normal(size=(n, d)) * (1 + np.arange(d)), y


@pytest.mark.parametrize("k", [2, 4])
def test_probe_matches_a_scikit_learn_reference_fit(k: int) -> None:
    xtr, ytr = _blobs(60, 5, k, 0)
    xva, yva = _blobs(40, 5, k, 1)
    cs = [0.01, 0.1, 1.0]
    probe = fit_probe(xtr, ytr, xva, yva, cs, k)
    # reference: standardise, fit each C, keep the best val accuracy (first on ties)
    sc = StandardScaler().fit(xtr)
    fits = {c: LogisticRegression(C=c, max_iter=1000).fit(sc.transform(xtr), ytr) for c in cs}
    accs = {c: m.score(sc.transform(xva), yva) for c, m in fits.items()}
    best = max(cs, key=lambda c: (accs[c], -c))
    assert best == probe.C and probe.val_acc == pytest.approx(accs[best])
    ref = fits[best].predict_proba(sc.transform(xva))
    # the folded head on raw features gives the reference's probabilities
    logits = torch.as_tensor(xva, dtype=torch.float32) @ probe.weight.T + probe.bias
    assert logits.softmax(-1).numpy() == pytest.approx(ref, abs=1e-4)


def test_probe_recalibrates_batchnorm_on_the_fits_inputs() -> None:
    from torch import nn

    from transferlab.finetune.probe import recalibrate_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    x = torch.randn(64, 1, 8, 8) * 3 + 2
    seen: list[torch.Tensor] = []
    net[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))

    def forward(m: nn.Module) -> None:  # a route's batched predict: calls eval(), two batches
        m.eval()
        m(x[:32]), m(x[32:])

    assert recalibrate_batchnorm(net, forward) == 1
    h = torch.cat(seen)
    bn = net[1]
    # cumulative average of the two batches' statistics (equal-sized: the mean of all 64)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not bn.training
    assert recalibrate_batchnorm(nn.Linear(3, 2), forward) == 0  # nothing to recalibrate
